# -*- test-case-name: tests.test_deliver -*-
"""
The queue of one target, run: the decisions of
L{mxrecv.deliver.schedule.Schedule} carried out with the target's attempts,
the records (L{mxrecv.deliver.records}) and a timer.

A success is recorded durably before the message counts as delivered (with
C{concurrency} 1, before the next message starts); a dead letter is
recorded with its attempts.  A message the application has already moved
out of C{new/} is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from mxrecv.deliver.interfaces import ITarget
from mxrecv.deliver.outcome import Delivered, Outcome, PermanentFailure, TemporaryFailure
from mxrecv.deliver.records import Records, Scan
from mxrecv.deliver.schedule import Failing, GaveUp, Policy, Schedule
from mxrecv.message.dates import isoFromTimestamp
from mxrecv.spool.layout import undeliverableDocument

log = Logger()


@frozen
class DeliveryState:
    """
    What the metrics show of one queue: messages waiting (or being
    delivered), since when the oldest has waited (POSIX seconds), and dead
    letters.
    """

    target: str
    backlog: int
    oldest: float | None
    undeliverable: int


class Deliverer:
    """
    The queue of one target.

    @param new: the spool's C{new/}.
    @param onAttempt: called after each attempt with the target's name and
        its outcome: C{ok}, C{temporary} or C{permanent} (metrics).
    @param onState: called with the queue's L{DeliveryState} whenever it
        may have changed (metrics).
    @param clock: times the attempts and retries.
    @param reactor: runs in C{pool} the look at each message before its
        attempt and the records' writes.
    """

    def __init__(
        self,
        target: ITarget,
        *,
        policy: Policy,
        new: Path,
        records: Records,
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        clock: IReactorTime,
        onAttempt: Callable[[str, str], None] = lambda target, outcome: None,
        onState: Callable[[DeliveryState], None] = lambda state: None,
    ) -> None:
        self.target = target
        self.policy = policy
        self._new = new
        self._records = records
        self._reactor = reactor
        self._pool = pool
        self._clock = clock
        self._onAttempt = onAttempt
        self._onState = onState
        self._schedule = Schedule(policy)
        #: This target's dead letters: their names, and when their records
        #: were written (L{None} while being written).
        self.undeliverable: dict[str, float | None] = {}
        self._busy: set[Deferred[Any]] = set()
        self._timer: IDelayedCall | None = None
        self._running = False
        self._polling = False
        self._again = False

    def __len__(self) -> int:
        """
        The backlog: messages waiting for delivery or being delivered.
        """
        return len(self._schedule)

    @property
    def failing(self) -> Failing | None:
        """
        Whether and since when the target has been failing temporarily.
        """
        return self._schedule.failing

    def queued(self) -> frozenset[str]:
        """
        The messages waiting for delivery or being delivered.
        """
        return self._schedule.names()

    def waited(self) -> float | None:
        """
        Seconds the message waiting longest has waited; L{None} if none is.
        """
        oldest = self._schedule.oldest()
        return None if oldest is None else max(0.0, self._clock.seconds() - oldest)

    def add(self, name: str) -> None:
        """
        Deliver C{new/NAME} after the messages already queued.  A dead
        letter is taken up again only if its record has been removed
        (L{mxrecv.deliver.deadletters}).
        """
        if name in self.undeliverable:
            if self.undeliverable[name] is None or self._records.isUndeliverable(
                self.target.name, name
            ):
                return
            del self.undeliverable[name]
            log.info(
                "new/{name} is no longer undeliverable to the {target}: delivering it again",
                name=name,
                target=self.target.name,
            )
        self._schedule.add(name, self._clock.seconds())
        self._poll()

    def start(self, scan: Scan, scannedAt: float) -> None:
        """
        Begin delivering: what the scan of C{new/} (begun at C{scannedAt})
        found undelivered goes before anything added since.
        """
        self.undeliverable = dict.fromkeys(scan.undeliverable, scannedAt)
        self._schedule.addFirst(self._since(scan, scannedAt))
        self._running = True
        self._poll()

    def sweep(self, scan: Scan, scannedAt: float) -> None:
        """
        Catch up with the records as another scan (begun at C{scannedAt})
        found them: a dead letter whose record was removed (C{mxrecv
        redeliver} without C{--admin}) is queued again; a message in C{new/}
        that no queue knows of (one that another process accepted) is
        queued after the others.
        """
        found = set(scan.undeliverable)
        waiting = {name for name, _ in scan.undelivered}
        for name, recordedAt in list(self.undeliverable.items()):
            if recordedAt is None or recordedAt >= scannedAt or name in found:
                continue
            del self.undeliverable[name]
            if name in waiting:
                log.info(
                    "new/{name} is no longer undeliverable to the {target}: delivering it again",
                    name=name,
                    target=self.target.name,
                )
        for name in found:
            if name not in self._schedule:
                self.undeliverable.setdefault(name, scannedAt)
        for name, since in self._since(scan, scannedAt):
            if name not in self.undeliverable:
                self._schedule.add(name, since)
        self._poll()

    def _since(self, scan: Scan, now: float) -> list[tuple[str, float]]:
        return [
            (name, now if received is None else min(received, now))
            for name, received in scan.undelivered
        ]

    def stop(self) -> Deferred[None]:
        """
        Start nothing more; fires once the attempts and records under way
        have ended.  Started again (L{start}), the queue is rebuilt from a
        new scan.
        """
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._report()

        def forget(_: object) -> None:
            self._schedule = Schedule(self.policy)

        return DeferredList(list(self._busy)).addCallback(forget)

    def _poll(self) -> None:
        """
        Start what the schedule says, then wake at its next time.  Outcomes
        that come at once (a request that cannot be made) report back into
        this loop rather than recursing.
        """
        if not self._running:
            return
        if self._polling:
            self._again = True
            return
        self._polling = True
        try:
            self._again = True
            while self._again:
                self._again = False
                for name in self._schedule.poll(self._clock.seconds()):
                    self._attempt(name)
        finally:
            self._polling = False
        self._arm()
        self._report()

    def _report(self) -> None:
        running = self._running
        self._onState(
            DeliveryState(
                self.target.name,
                backlog=len(self._schedule) if running else 0,
                oldest=self._schedule.oldest() if running else None,
                undeliverable=len(self.undeliverable) if running else 0,
            )
        )

    def _arm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        wake = self._schedule.wakeAt()
        if wake is not None:
            delay = max(0.0, wake - self._clock.seconds())
            self._timer = self._clock.callLater(delay, self._poll)

    def _attempt(self, name: str) -> None:
        """
        Look at C{new/NAME} in the pool (is it still there, was it
        delivered already), then make the attempt.
        """
        d = self._inThread(self._look, name)
        d.addCallbacks(self._looked, self._notLooked, (name,), None, (name,))
        d.addErrback(lambda f: log.failure("Delivering new/{name}", f, name=name))
        self._track(d)

    def _look(self, name: str) -> tuple[bool, bool]:
        """
        Whether C{new/NAME} is there, and whether it was delivered to this
        target (blocking).
        """
        present = (self._new / name).is_dir()
        return present, present and self._records.isDelivered(self.target.name, name)

    def _looked(self, look: tuple[bool, bool], name: str) -> Deferred[None] | None:
        if not self._running:
            return None
        present, delivered = look
        if not present:
            log.info(
                "new/{name} was taken by the application before its delivery to the {target}",
                name=name,
                target=self.target.name,
            )
        if not present or delivered:
            self._schedule.skipped(name)
            self._poll()
            return None
        d = maybeDeferred(self.target.deliver, self._new / name)
        d.addErrback(self._unexpected, name)
        return d.addCallback(self._attempted, name)

    def _notLooked(self, reason: Failure, name: str) -> None:
        reason.trap(OSError)
        if not self._running:
            return
        # The disk's trouble, not the message's: everything waits.
        why = f"cannot look at new/{name}: {reason.value.strerror}"
        self._failed(name, TemporaryFailure(why))

    def _attempted(self, outcome: Outcome, name: str) -> Deferred[None] | None:
        if isinstance(outcome, Delivered):
            d = self._inThread(self._records.mark, self.target.name, name)
            return d.addCallbacks(self._delivered, self._notRecorded, (name,), None, (name,))
        self._failed(name, outcome)
        return None

    def _delivered(self, _: object, name: str) -> None:
        log.info("Delivered new/{name} to the {target}", name=name, target=self.target.name)
        self._schedule.delivered(name)
        self._poll()
        self._onAttempt(self.target.name, "ok")

    def _notRecorded(self, reason: Failure, name: str) -> None:
        log.failure("Recording the delivery of new/{name}", reason, name=name)
        why = f"delivered, but not recorded: {reason.getErrorMessage()}"
        self._failed(name, TemporaryFailure(why), counted=False)

    def _failed(
        self, name: str, outcome: TemporaryFailure | PermanentFailure, counted: bool = True
    ) -> None:
        now = self._clock.seconds()
        decision = self._schedule.failed(name, outcome, now)
        if isinstance(decision, GaveUp):
            self._giveUp(decision, now)
        elif isinstance(outcome, TemporaryFailure):
            failing = self._schedule.failing
            assert failing is not None
            log.warn(
                "Delivery of new/{name} to the {target} failed ({failures} in a row): "
                "{why}; next try in {delay:g}s",
                name=name,
                target=self.target.name,
                failures=failing.failures,
                why=outcome.why,
                delay=round(decision.at - now, 3),
            )
        else:
            log.warn(
                "The {target} refused new/{name} ({refusals} of {most}): {why}; "
                "next try in {delay:g}s, the messages behind it go on",
                name=name,
                target=self.target.name,
                refusals=decision.refusals,
                most=self.policy.maxAttempts,
                why=outcome.why,
                delay=round(decision.at - now, 3),
            )
        self._poll()
        if counted:
            kind = "temporary" if isinstance(outcome, TemporaryFailure) else "permanent"
            self._onAttempt(self.target.name, kind)

    def _giveUp(self, gaveUp: GaveUp, now: float) -> None:
        name = gaveUp.name
        self.undeliverable[name] = None
        log.error(
            "new/{name} is undeliverable to the {target}: {error}; "
            "`mxrecv redeliver {name}` tries again",
            name=name,
            target=self.target.name,
            error=gaveUp.error,
        )
        record = undeliverableDocument(
            name=name,
            target=self.target.name,
            error=gaveUp.error,
            at=isoFromTimestamp(now),
            attempts=gaveUp.attempts,
        )
        d = self._inThread(self._records.markUndeliverable, self.target.name, name, record)

        def recorded(_: object) -> None:
            if name in self.undeliverable:
                self.undeliverable[name] = self._clock.seconds()

        def notRecorded(reason: Failure) -> None:
            log.failure(
                "Recording new/{name} as undeliverable to the {target}; "
                "the next sweep of new/ takes it up again",
                reason,
                name=name,
                target=self.target.name,
            )
            # Without its record it is no dead letter: neither listed nor
            # redeliverable, so it must not be kept out of the queue.
            self.undeliverable.pop(name, None)

        d.addCallbacks(recorded, notRecorded)
        self._track(d)

    def _unexpected(self, reason: Failure, name: str) -> Outcome:
        """
        A target's bug: logged, and taken as a temporary failure so that
        nothing is skipped.
        """
        log.failure(
            "Delivering new/{name} to the {target}", reason, name=name, target=self.target.name
        )
        return TemporaryFailure(
            f"internal error: {reason.type.__name__}: {reason.getErrorMessage()}"
        )

    def _inThread(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def _track(self, d: Deferred[Any]) -> None:
        # Not "if d.called": a Deferred waiting on another it was given is
        # called, and not done.
        self._busy.add(d)

        def untrack(result: object) -> object:
            self._busy.discard(d)
            return result

        d.addBoth(untrack)
