# -*- test-case-name: tests.test_deliver -*-
"""
Dead letters as operators meet them: named in C{/health}, and put back in
their queues (C{POST /deliver/NAME} on the admin listener, which C{mxrecv
redeliver --admin} sends).

Putting one back is two steps that work the same in a server of one
process and in one of several (C{[server] workers}, where the admin
listener is the parent's and delivery the leader's): its record under
C{state/undeliverable/} is removed, then its name is announced as landed;
the queue that knew it as a dead letter finds the record gone and takes it
up again (L{mxrecv.deliver.queue.Deliverer.add}).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from mxrecv.config import DeliverConfig
from mxrecv.deliver.records import Records
from mxrecv.deliver.schedule import Failing
from mxrecv.message.dates import isoFromTimestamp

#: Dead letters named in a health check's detail.
NAMED = 5


def targetNames(config: DeliverConfig) -> list[str]:
    """
    The names of the targets C{[deliver]} configures, in the order their
    queues are built.
    """
    return [
        name
        for name, configured in (
            ("command", bool(config.command)),
            ("url", config.url is not None),
            ("postgresql", config.postgresql is not None),
        )
        if configured
    ]


@frozen
class TargetHealth:
    """
    The health of one target (the admin listener's check C{delivery.TARGET},
    L{mxrecv.ops.admin.deliveryCheck}): failing while it has dead letters or
    fails temporarily, but not critical: a target's trouble does not stop
    mxrecv from taking callbacks, and keeping them.
    """

    target: str
    ok: bool
    detail: str


def targetHealth(
    target: str,
    dead: Sequence[str],
    *,
    now: float,
    backlog: int | None = None,
    waited: float | None = None,
    failing: Failing | None = None,
) -> TargetHealth:
    """
    The health of one target, from what is known of it.

    @param backlog: messages waiting (unknown where delivery runs in
        another process).
    @param waited: how long the oldest has waited, in seconds.
    """
    parts = []
    if backlog is not None:
        parts.append(
            f"{backlog} waiting, the oldest for {waited:.0f}s" if waited is not None else "0 waiting"
        )
    if failing is not None:
        parts.append(
            f"failing since {isoFromTimestamp(failing.since)} ({failing.failures} in a row, "
            f"next try in {max(0.0, failing.retryAt - now):.0f}s): {failing.why}"
        )
    if dead:
        names = sorted(dead)
        named = ", ".join(names[:NAMED])
        if len(names) > NAMED:
            named += f" and {len(names) - NAMED} more"
        parts.append(f"{len(names)} undeliverable: {named}")
    return TargetHealth(target, failing is None and not dead, "; ".join(parts) or "no dead letters")


class DeadLetters:
    """
    The dead letters of the spool whose records are C{records}, for the
    targets named C{targets}.

    @param announce: says that a message landed in C{new/} (the delivery
        service's L{mxrecv.deliver.service.DeliveryService.landed}, or a
        message to the leader process).
    """

    def __init__(
        self,
        records: Records,
        targets: Sequence[str],
        *,
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        now: Callable[[], float],
        announce: Callable[[str], None],
    ) -> None:
        self._records = records
        self._targets = list(targets)
        self._reactor = reactor
        self._pool = pool
        self._now = now
        self._announce = announce

    def redeliver(self, name: str, target: str | None = None) -> Deferred[list[str]]:
        """
        Put the dead letter C{new/NAME} of C{target} (or of every target)
        back in its queue.

        @return: fires with the targets it was a dead letter of.
        """
        chosen = [t for t in self._targets if target in (None, t)]

        def remove() -> list[str]:
            return [t for t in chosen if self._records.redeliver(t, name)]

        d = deferToThreadPool(self._reactor, self._pool, remove)

        def removed(targets: list[str]) -> list[str]:
            if targets:
                self._announce(name)
            return targets

        return d.addCallback(removed)

    def checks(self) -> list[Callable[[], Deferred[TargetHealth]]]:
        """
        A health check per target, from the records on disk (where delivery
        runs in another process, these are all there is to know here).
        """
        return [partial(self._check, t) for t in self._targets]

    def _check(self, target: str) -> Deferred[TargetHealth]:
        d = deferToThreadPool(
            self._reactor, self._pool, self._records.undeliverableNames, target
        )
        return d.addCallback(lambda dead: targetHealth(target, dead, now=self._now()))
