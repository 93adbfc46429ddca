# -*- test-case-name: tests.test_deliver_schedule -*-
"""
The queue of one delivery target as decisions, without any I/O, so that it
can be property-tested: which messages to attempt now, and what becomes of
each after an attempt.

Messages are attempted in the order they were queued, at most
C{concurrency} at a time (1, the default, is strict order: the next starts
when the one before has ended).

 - A L{TemporaryFailure} says the target cannot take messages now: the
   message goes back to the head of the queue and nothing starts until the
   backoff has passed (doubling with the failures in a row, longer if the
   application asked with C{Retry-After}).  Everything waits, in order, for as
   long as it takes.
 - A L{PermanentFailure} says the target refused this message: it is set
   aside until its own backoff has passed while the queue goes on, and it is
   given up (L{GaveUp}: a dead letter) at its C{maxAttempts}th refusal.  A
   refused message never holds up the messages behind it.

Times are POSIX seconds from the caller's clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from attrs import frozen

from mxrecv.deliver.outcome import Outcome, PermanentFailure, TemporaryFailure
from mxrecv.deliver.policy import RETRY_AFTER_MAX, retryDelay
from mxrecv.message.dates import isoFromTimestamp
from mxrecv.spool.layout import Attempt, Attempts


@frozen
class Policy:
    """
    @ivar concurrency: most attempts in flight at once.
    @ivar maxAttempts: refusals (permanent failures) after which a message
        is given up.
    @ivar backoffInitial: seconds before the first retry, doubling with each
        failure in a row up to C{backoffMax}.
    """

    concurrency: int = 1
    maxAttempts: int = 3
    backoffInitial: float = 1.0
    backoffMax: float = 300.0


@frozen
class GaveUp:
    """
    A message refused C{maxAttempts} times: a dead letter.

    @ivar error: a sentence for its record.
    @ivar attempts: how many attempts there were, and the last ones (a
        target down for a day makes thousands).
    """

    name: str
    error: str
    attempts: Attempts


@frozen
class Retry:
    """
    The message will be tried again, not before C{at}.

    @ivar refusals: its permanent failures so far.
    """

    name: str
    at: float
    refusals: int


@frozen
class Failing:
    """
    The target has been failing temporarily since C{since}: C{failures}
    attempts in a row, the last for C{why}; nothing starts before C{retryAt}.
    """

    since: float
    failures: int
    why: str
    retryAt: float


class _Job:
    __slots__ = ("name", "order", "attempts", "refusals", "state")

    def __init__(self, name: str, order: int) -> None:
        self.name = name
        self.order = order
        self.attempts = Attempts()
        self.refusals = 0
        self.state = "ready"


class Schedule:
    """
    The queue of one target.  The caller queues messages with L{add} (or
    L{addFirst}), asks L{poll} what to start now, reports the end of each
    attempt with L{delivered}, L{failed} or L{skipped}, and calls L{poll}
    again after any report and at L{wakeAt}.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._jobs: dict[str, _Job] = {}
        self._ready: list[tuple[int, str]] = []
        self._aside: list[tuple[float, int, str]] = []
        self._byAge: list[tuple[float, int, str]] = []
        self._first = 0
        self._last = 0
        self._pausedUntil = 0.0
        self.inFlight = 0
        self.failing: Failing | None = None

    def __contains__(self, name: str) -> bool:
        return name in self._jobs

    def names(self) -> frozenset[str]:
        """
        The messages queued, set aside or in flight.
        """
        return frozenset(self._jobs)

    def __len__(self) -> int:
        """
        The backlog: messages queued, set aside or in flight.
        """
        return len(self._jobs)

    def add(self, name: str, since: float) -> None:
        """
        Queue C{name} after everything queued so far; C{since} is when it
        started waiting (for L{oldest}).  A name already queued is ignored.
        """
        if name not in self._jobs:
            self._last += 1
            self._queue(name, self._last, since)

    def addFirst(self, entries: Iterable[tuple[str, float]]) -> None:
        """
        Queue C{(name, since)} entries, in their order, before everything
        queued so far (messages found at start-up go before those that
        landed while the scan ran).
        """
        fresh = [(n, s) for n, s in dict(entries).items() if n not in self._jobs]
        self._first -= len(fresh)
        for i, (name, since) in enumerate(fresh):
            self._queue(name, self._first + i, since)

    def poll(self, now: float) -> list[str]:
        """
        The messages to attempt now, in order; each counts as in flight
        until reported.
        """
        while self._aside and self._aside[0][0] <= now:
            _, order, name = heapq.heappop(self._aside)
            self._jobs[name].state = "ready"
            heapq.heappush(self._ready, (order, name))
        starts: list[str] = []
        if now < self._pausedUntil:
            return starts
        while self._ready and self.inFlight < self.policy.concurrency:
            _, name = heapq.heappop(self._ready)
            self._jobs[name].state = "inFlight"
            self.inFlight += 1
            starts.append(name)
        return starts

    def wakeAt(self) -> float | None:
        """
        The next time L{poll} may have something to do, unless an attempt
        ends first; L{None} if only the end of an attempt can change anything.
        """
        times = []
        if self._aside:
            times.append(self._aside[0][0])
        if self._ready and self.inFlight < self.policy.concurrency:
            times.append(self._pausedUntil)
        return min(times) if times else None

    def delivered(self, name: str) -> None:
        """
        A message delivered: the target is not failing.
        """
        self._finish(name)
        del self._jobs[name]
        self.failing = None

    def skipped(self, name: str) -> None:
        """
        An attempt that was not made: the message left C{new/}, or was
        already delivered.
        """
        self._finish(name)
        del self._jobs[name]

    def failed(self, name: str, outcome: Outcome, now: float) -> Retry | GaveUp:
        """
        Record a failed attempt.

        @return: L{GaveUp} if this was the message's last refusal (it is
            then no longer queued); else L{Retry}.
        """
        job = self._finish(name)
        assert isinstance(outcome, TemporaryFailure | PermanentFailure)
        job.attempts = job.attempts.add(Attempt(isoFromTimestamp(now), outcome.why))
        if isinstance(outcome, TemporaryFailure):
            self._pause(outcome, now)
            job.state = "ready"
            heapq.heappush(self._ready, (job.order, name))
            return Retry(name, self._pausedUntil, job.refusals)
        # The target answered: it is not down, whatever it thought of this one.
        self.failing = None
        job.refusals += 1
        if job.refusals >= self.policy.maxAttempts:
            del self._jobs[name]
            return GaveUp(
                name,
                f"refused {job.refusals} times; the last time: {outcome.why}",
                job.attempts,
            )
        p = self.policy
        retryAt = now + retryDelay(job.refusals, p.backoffInitial, p.backoffMax)
        job.state = "aside"
        heapq.heappush(self._aside, (retryAt, job.order, name))
        return Retry(name, retryAt, job.refusals)

    def attempts(self, name: str) -> Attempts:
        return self._jobs[name].attempts

    def oldest(self) -> float | None:
        """
        Since when the message waiting longest has waited; L{None} if none is.
        """
        # A heap of every job ever queued, the ended ones dropped as they
        # come to the top: each call is cheap however long the backlog.
        while self._byAge:
            since, order, name = self._byAge[0]
            job = self._jobs.get(name)
            if job is not None and job.order == order:
                return since
            heapq.heappop(self._byAge)
        return None

    def _pause(self, outcome: TemporaryFailure, now: float) -> None:
        """
        Nothing starts until the backoff has passed.  Failures of attempts
        that were in flight together count once: the backoff grows with the
        failures in a row of the target, not with its concurrency.
        """
        failing = self.failing
        if failing is None or now >= self._pausedUntil:
            failures = failing.failures + 1 if failing is not None else 1
            p = self.policy
            delay = retryDelay(failures, p.backoffInitial, p.backoffMax, outcome.retryAfter)
            self._pausedUntil = max(self._pausedUntil, now + delay)
        else:
            failures = failing.failures
            if outcome.retryAfter is not None:
                self._pausedUntil = max(
                    self._pausedUntil, now + min(outcome.retryAfter, RETRY_AFTER_MAX)
                )
        self.failing = Failing(
            since=failing.since if failing is not None else now,
            failures=failures,
            why=outcome.why,
            retryAt=self._pausedUntil,
        )

    def _queue(self, name: str, order: int, since: float) -> None:
        self._jobs[name] = _Job(name, order)
        heapq.heappush(self._byAge, (since, order, name))
        heapq.heappush(self._ready, (order, name))

    def _finish(self, name: str) -> _Job:
        job = self._jobs[name]
        if job.state != "inFlight":
            raise ValueError(f"{name} has no attempt in flight")
        self.inFlight -= 1
        return job
