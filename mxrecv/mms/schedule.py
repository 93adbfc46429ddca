# -*- test-case-name: tests.test_schedule -*-
"""
When to try downloading each pending MMS: the decisions of RetrieveMMS
retrieval, without any I/O, so that they can be property-tested.

Every message waiting for its download is in one of three states: ready (it
may start as soon as a slot is free), backing off (after a failure, until its
retry time) or in flight.  Ready messages start earliest expiry first, at
most C{concurrency} at a time.  A failure is retried after an exponentially
growing, jittered delay.  When that delay would run past the expiry, the
message gets one last attempt instead, timed to end by the expiry (a
message notified with a day to live should not be given up hours early
because its backoff reached C{backoffMax}); if that one fails too, or the
expiry passes while the message waits, it is given up with its attempts.
No attempt ever starts at or after a message's expiry, and each message has
exactly one terminal outcome: L{Completed} or L{GaveUp}.

Times are POSIX seconds from the caller's clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

from attrs import frozen

from mxrecv.backoff import backoff
from mxrecv.message.dates import isoFromTimestamp
from mxrecv.spool.layout import Attempt, Attempts


@frozen
class Policy:
    """
    How hard to try.

    @ivar concurrency: most attempts in flight at once.
    @ivar timeout: longest an attempt may take, in seconds, whole body included.
    @ivar backoffInitial: nominal wait before the first retry, in seconds.
    @ivar backoffMax: nominal wait is doubled after each failure up to this.
    @ivar jitter: the fraction of the nominal wait taken off at random, so
        that retries after a common outage do not all start together.
    """

    concurrency: int = 8
    timeout: float = 30.0
    backoffInitial: float = 5.0
    backoffMax: float = 600.0
    jitter: float = 0.25

    def delay(self, failures: int, random: float) -> float:
        """
        The wait after the C{failures}th failure (1 for the first), given a
        random number in [0, 1).
        """
        nominal = backoff(failures, self.backoffInitial, self.backoffMax)
        return nominal * (1.0 - self.jitter * random)

    def lastChance(self, now: float, expiry: float) -> float | None:
        """
        When to make the last attempt on a message whose next retry would come
        too late: so that a whole attempt fits before the expiry, but never
        sooner after the failure at C{now} than the shortest first retry;
        L{None} if no attempt can start before the expiry.
        """
        at = max(expiry - self.timeout, now + self.backoffInitial * (1.0 - self.jitter))
        return at if at < expiry else None


@frozen
class Start:
    """
    Start an attempt now, abandoning it at C{deadline} (the attempt timeout
    or the expiry, whichever comes first).
    """

    name: str
    deadline: float


@frozen
class Completed:
    name: str
    attempts: Attempts


@frozen
class GaveUp:
    """
    The message expired before it could be downloaded.

    @ivar error: a sentence for C{failed/NAME/message.json}.
    """

    name: str
    error: str
    attempts: Attempts


Decision = Start | GaveUp


class _Job:
    __slots__ = ("name", "expiry", "window", "attempts", "retryAt", "state", "lastChance")

    def __init__(self, name: str, expiry: float, window: str, attempts: Attempts) -> None:
        self.name = name
        self.expiry = expiry
        self.window = window
        self.attempts = attempts
        self.retryAt = 0.0
        self.state = "ready"
        self.lastChance = False


class Schedule:
    """
    The retrieval queue.  The caller asks L{poll} what to do now, reports
    each attempt's end with L{succeeded} or L{failed}, and calls L{poll}
    again at L{wakeAt} or after any report.

    @param random: returns a float in [0, 1); the jitter's source.
    """

    def __init__(self, policy: Policy, random: Callable[[], float]) -> None:
        self.policy = policy
        self._random = random
        self._jobs: dict[str, _Job] = {}
        self._ready: list[tuple[float, int, str]] = []
        self._waiting: list[tuple[float, int, str]] = []
        self._order = 0
        self.inFlight = 0

    def __contains__(self, name: str) -> bool:
        return name in self._jobs

    def __len__(self) -> int:
        return len(self._jobs)

    def add(
        self,
        name: str,
        expiry: float,
        attempts: Attempts | Iterable[Attempt] = Attempts(),
        window: str = "its expiry",
    ) -> None:
        """
        Queue C{name} (ready at once), with the C{attempts} a previous run
        made.  A name already queued is ignored.

        @param expiry: when the message can no longer be had (or is no
            longer tried): the end of its retrieval window.
        @param window: what C{expiry} is, for the sentence of a message
            given up: C{"its expiry"}, or another end of its window.
        """
        if name in self._jobs:
            return
        if not isinstance(attempts, Attempts):
            attempts = Attempts.of(attempts)
        job = _Job(name, expiry, window, attempts)
        self._jobs[name] = job
        self._push(self._ready, expiry, name)

    def poll(self, now: float) -> list[Decision]:
        """
        What to do at C{now}: attempts to start, in order, and messages to give
        up.  Each L{Start} counts as in flight until reported.
        """
        decisions: list[Decision] = []
        while self._waiting and self._waiting[0][0] <= now:
            _, _, name = heapq.heappop(self._waiting)
            job = self._jobs[name]
            job.state = "ready"
            self._push(self._ready, job.expiry, name)
        while self._ready:
            expiry, _, name = self._ready[0]
            job = self._jobs[name]
            if expiry <= now:
                heapq.heappop(self._ready)
                decisions.append(self._giveUp(job, now))
            elif self.inFlight < self.policy.concurrency:
                heapq.heappop(self._ready)
                job.state = "inFlight"
                self.inFlight += 1
                decisions.append(Start(name, min(now + self.policy.timeout, expiry)))
            else:
                break
        return decisions

    def wakeAt(self) -> float | None:
        """
        The next time L{poll} may have something to do, unless an attempt
        ends first; L{None} if only the end of an attempt can change anything.
        """
        times = []
        if self._waiting:
            times.append(self._waiting[0][0])
        if self._ready:
            # Either a slot is free (then poll now) or the earliest expiry
            # among the ready ones is the next thing to happen.
            times.append(self._ready[0][0])
        return min(times) if times else None

    def succeeded(self, name: str, now: float) -> Completed:
        job = self._finish(name)
        del self._jobs[name]
        return Completed(name, job.attempts.add(Attempt(isoFromTimestamp(now), "downloaded")))

    def failed(self, name: str, now: float, outcome: str) -> GaveUp | None:
        """
        Record a failed attempt.

        @return: L{GaveUp} if the message cannot be tried again before its
            expiry, or this was its last chance; else L{None} and the message
            waits for its retry.
        """
        job = self._finish(name)
        job.attempts = job.attempts.add(Attempt(isoFromTimestamp(now), outcome))
        retryAt = now + self.policy.delay(job.attempts.count, self._random())
        if retryAt >= job.expiry:
            lastChance = None if job.lastChance else self.policy.lastChance(now, job.expiry)
            if lastChance is None:
                return self._giveUp(job, now)
            retryAt = lastChance
            job.lastChance = True
        job.retryAt = retryAt
        job.state = "waiting"
        self._push(self._waiting, retryAt, name)
        return None

    def attempts(self, name: str) -> Attempts:
        return self._jobs[name].attempts

    def _finish(self, name: str) -> _Job:
        job = self._jobs[name]
        if job.state != "inFlight":
            raise ValueError(f"{name} has no attempt in flight")
        self.inFlight -= 1
        return job

    def _giveUp(self, job: _Job, now: float) -> GaveUp:
        del self._jobs[job.name]
        count = job.attempts.count
        last = job.attempts.last
        error = (
            f"not downloaded from RetrieveMMS before {job.window} "
            f"({isoFromTimestamp(job.expiry)}) after {count} "
            f"attempt{'' if count == 1 else 's'}"
            + (f"; the last one: {last.outcome}" if last else "")
        )
        return GaveUp(job.name, error, job.attempts)

    def _push(self, heap: list, when: float, name: str) -> None:
        self._order += 1
        heapq.heappush(heap, (when, self._order, name))
