# -*- test-case-name: tests.test_deliver -*-
"""
The queue of one target: the messages of C{new/} not yet delivered to it,
taken in order of arrival (C{received}, then name).  A message is tried
until it succeeds, with exponential backoff, and only then is the next one
tried.  Success is recorded durably (L{mxrecv.deliver.records}) before the
next message starts.  A message the application has already moved out of
C{new/} is skipped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from mxrecv.deliver.interfaces import ITarget
from mxrecv.deliver.outcome import Delivered, Outcome, TemporaryFailure
from mxrecv.deliver.policy import retryDelay
from mxrecv.deliver.records import Records
from mxrecv.spool.layout import NEW
from mxrecv.spool.store import Spool

log = Logger()


class Deliverer:
    """
    The queue of one target: one message at a time, in order, each retried
    until it succeeds.

    @param onAttempt: called with the target's name and whether it worked,
        after each attempt (metrics).
    @param clock: times the retries.
    @param reactor: runs the records' writes in C{pool}.
    """

    def __init__(
        self,
        target: ITarget,
        *,
        spool: Spool,
        records: Records,
        reactor: IReactorTime,
        pool: ThreadPool,
        backoffInitial: float,
        backoffMax: float,
        onAttempt: Callable[[str, bool], None] = lambda target, ok: None,
        clock: IReactorTime | None = None,
    ) -> None:
        self.target = target
        self._spool = spool
        self._records = records
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._pool = pool
        self._initial = backoffInitial
        self._max = backoffMax
        self._onAttempt = onAttempt
        self._queue: deque[str] = deque()
        self._known: set[str] = set()
        self._current: str | None = None
        self._attempt: Deferred[None] | None = None
        self._failures = 0
        self._retry: IDelayedCall | None = None
        self._ready = False
        self._stopped = False

    def __len__(self) -> int:
        return len(self._queue) + (self._current is not None)

    def add(self, name: str) -> None:
        """
        Deliver C{new/NAME} after the messages already queued.
        """
        if name not in self._known:
            self._known.add(name)
            self._queue.append(name)
            self._next()

    def start(self, earlier: Sequence[str]) -> None:
        """
        Begin delivering: C{earlier} (found undelivered in C{new/} at
        start-up) go before anything added since.
        """
        for name in reversed(earlier):
            if name not in self._known:
                self._known.add(name)
                self._queue.appendleft(name)
        self._ready = True
        self._next()

    def stop(self) -> Deferred[None]:
        """
        Deliver nothing more; fires once the attempt under way has ended.
        """
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._attempt is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._attempt.addBoth(lambda _: None if done.called else done.callback(None))
        return done

    def _next(self) -> None:
        if not self._ready or self._stopped or self._current is not None or not self._queue:
            return
        self._current = self._queue.popleft()
        self._try()

    def _try(self) -> None:
        self._retry = None
        name = self._current
        assert name is not None
        directory = self._spool.dir(NEW) / name
        if not directory.is_dir():
            log.info(
                "new/{name} was taken by the application before its delivery to the {target}",
                name=name,
                target=self.target.name,
            )
            self._done(name)
            return
        if self._records.isDelivered(self.target.name, name):
            self._done(name)
            return
        d = maybeDeferred(self.target.deliver, directory)
        d.addErrback(_unexpected, name, self.target.name)
        self._attempt = d.addCallback(self._attempted, name)
        self._attempt.addErrback(lambda f: log.failure("Delivering new/{name}", f, name=name))

    def _attempted(self, outcome: Outcome, name: str) -> Deferred[None] | None:
        if isinstance(outcome, Delivered):
            return self._delivered(name)
        self._failed(name, outcome.why, getattr(outcome, "retryAfter", None))
        return None

    def _delivered(self, name: str) -> Deferred[None]:
        self._onAttempt(self.target.name, True)
        log.info("Delivered new/{name} to the {target}", name=name, target=self.target.name)
        d = deferToThreadPool(self._reactor, self._pool, self._records.mark, self.target.name, name)

        def recorded(_: object) -> None:
            self._failures = 0
            self._done(name)

        def notRecorded(f: Failure) -> None:
            log.failure("Recording the delivery of new/{name}", f, name=name)
            self._failed(name, f"not recorded: {f.getErrorMessage()}", None, counted=False)

        return d.addCallbacks(recorded, notRecorded)

    def _failed(self, name: str, why: str, retryAfter: float | None, counted: bool = True) -> None:
        self._failures += 1
        delay = retryDelay(self._failures, self._initial, self._max, retryAfter)
        log.warn(
            "Delivery of new/{name} to the {target} failed ({failures} in a row): "
            "{why}; next try in {delay:g}s",
            name=name,
            target=self.target.name,
            failures=self._failures,
            why=why,
            delay=delay,
        )
        if not self._stopped:
            self._retry = self._clock.callLater(delay, self._try)
        if counted:
            self._onAttempt(self.target.name, False)

    def _done(self, name: str) -> None:
        self._known.discard(name)
        self._current = None
        self._next()


def _unexpected(reason: Failure, name: str, target: str) -> Outcome:
    """
    A target's bug: logged, and taken as a temporary failure so that
    nothing is skipped.
    """
    log.failure("Delivering new/{name} to the {target}", reason, name=name, target=target)
    return TemporaryFailure(f"internal error: {reason.type.__name__}: {reason.getErrorMessage()}")
