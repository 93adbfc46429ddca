"""
Tests for L{mxrecv.mms.schedule}: the retrieval queue's decisions, without I/O.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mxrecv.mms.schedule import Completed, GaveUp, Policy, Schedule, Start
from mxrecv.spool.layout import Attempt, Attempts


def schedule(random: float = 0.0, **policy) -> Schedule:
    return Schedule(Policy(**policy), lambda: random)


class PolicyTests(SynchronousTestCase):
    def test_doubling(self) -> None:
        """
        The nominal wait starts at backoffInitial, doubles after each
        failure, and stops at backoffMax.
        """
        policy = Policy(backoffInitial=5.0, backoffMax=60.0)
        self.assertEqual(
            [policy.delay(n, 0.0) for n in range(1, 7)], [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
        )

    def test_jitter(self) -> None:
        """
        Jitter takes up to a quarter off the nominal wait, never adds to it.
        """
        policy = Policy(backoffInitial=8.0, backoffMax=600.0)
        self.assertEqual(policy.delay(1, 0.5), 7.0)
        self.assertAlmostEqual(policy.delay(1, 0.999999), 6.0, places=4)
        self.assertEqual(policy.delay(100, 0.0), 600.0)


class AttemptsTests(SynchronousTestCase):
    @given(st.integers(0, 60))
    def test_bounded(self, n: int) -> None:
        """
        However many attempts are added, the record counts them all and
        keeps the last ten, in order.
        """
        attempts = Attempts()
        for i in range(n):
            attempts = attempts.add(Attempt(str(i), f"HTTP {i}"))
        self.assertEqual(attempts.count, n)
        self.assertEqual([a.at for a in attempts], [str(i) for i in range(max(0, n - 10), n)])
        self.assertEqual(Attempts.fromJSON(attempts.toJSON()), attempts)

    def test_olderRecord(self) -> None:
        """
        A record written before attempts were counted (every attempt
        listed) is read as their count and the last ten.
        """
        listed = [{"at": str(i), "outcome": "HTTP 404"} for i in range(25)]
        attempts = Attempts.fromJSON({"attempts": listed})
        self.assertEqual(attempts.count, 25)
        self.assertEqual([a.at for a in attempts], [str(i) for i in range(15, 25)])
        self.assertRaises(ValueError, Attempts.fromJSON, {"attempts": [{"at": "x"}]})
        self.assertRaises(ValueError, Attempts.fromJSON, {"attempts": [{"at": 1, "outcome": 2}]})
        self.assertRaises(ValueError, Attempts.fromJSON, {})

    def test_scheduleKeepsItBounded(self) -> None:
        """
        The queue's record of a message tried many times stays bounded; the
        backoff and the sentence of a message given up count every attempt.
        """
        s = schedule(timeout=1.0, backoffInitial=1.0, backoffMax=1.0)
        s.add("a", 1000.0)
        now = 0.0
        for i in range(30):
            [start] = s.poll(now)
            self.assertIsNone(s.failed("a", now + 0.5, "HTTP 404"))
            now += 1.5
        self.assertEqual(s.attempts("a").count, 30)
        self.assertEqual(len(s.attempts("a").recent), 10)
        s.poll(now)
        gaveUp = s.failed("a", 1000.0 - 0.1, "HTTP 404")
        self.assertIn("after 31 attempts; the last one: HTTP 404", gaveUp.error)
        self.assertEqual(gaveUp.attempts.count, 31)


class ScheduleTests(SynchronousTestCase):
    def test_earliestExpiryFirst(self) -> None:
        """
        With one slot, ready messages start in order of expiry, whatever the
        order they were added in.
        """
        s = schedule(concurrency=1, timeout=10.0)
        s.add("late", 300.0)
        s.add("early", 100.0)
        s.add("middle", 200.0)
        self.assertEqual(s.poll(0.0), [Start("early", 10.0)])
        self.assertEqual(s.poll(1.0), [])
        self.assertIsInstance(s.succeeded("early", 2.0), Completed)
        self.assertEqual(s.poll(2.0), [Start("middle", 12.0)])

    def test_deadlineNotPastExpiry(self) -> None:
        """
        An attempt's deadline is the timeout, or the expiry if sooner.
        """
        s = schedule(timeout=30.0)
        s.add("a", 20.0)
        self.assertEqual(s.poll(5.0), [Start("a", 20.0)])

    def test_retryAfterBackoff(self) -> None:
        """
        A failed message waits for its backoff, then starts again; the
        attempts are kept, with their outcomes.
        """
        s = schedule(backoffInitial=5.0, backoffMax=100.0)
        s.add("a", 1000.0)
        s.poll(0.0)
        self.assertIsNone(s.failed("a", 1.0, "HTTP 500"))
        self.assertEqual(s.wakeAt(), 6.0)
        self.assertEqual(s.poll(5.9), [])
        self.assertEqual(s.poll(6.0), [Start("a", 36.0)])
        self.assertIsNone(s.failed("a", 7.0, "connection refused"))
        self.assertEqual(s.wakeAt(), 17.0)
        self.assertEqual(
            [a.outcome for a in s.attempts("a")], ["HTTP 500", "connection refused"]
        )

    def test_lastChanceBeforeExpiry(self) -> None:
        """
        A failure whose next retry would come at or after the expiry is
        followed by one last attempt, timed so that a whole attempt ends by
        the expiry, rather than an early give-up.
        """
        s = schedule(timeout=30.0, backoffInitial=5.0, backoffMax=600.0)
        s.add("a", 1000.0, [Attempt("2026-01-01T00:00:00.000Z", "HTTP 503")] * 7)
        s.poll(0.0)
        self.assertIsNone(s.failed("a", 500.0, "HTTP 503"))
        self.assertEqual(s.wakeAt(), 970.0)
        self.assertEqual(s.poll(969.0), [])
        self.assertEqual(s.poll(970.0), [Start("a", 1000.0)])

    def test_lastChanceNotTooSoon(self) -> None:
        """
        The last attempt never follows a failure sooner than the shortest
        first retry, even when that leaves it less than a whole timeout.
        """
        s = schedule(timeout=30.0, backoffInitial=8.0, backoffMax=600.0)
        s.add("a", 1000.0)
        s.poll(0.0)
        self.assertIsNone(s.failed("a", 993.0, "HTTP 503"))
        self.assertEqual(s.wakeAt(), 999.0)
        self.assertEqual(s.poll(999.0), [Start("a", 1000.0)])

    def test_giveUpAfterLastChance(self) -> None:
        """
        When the last attempt fails too, the message ends, with every attempt
        and the last outcome in the error.
        """
        s = schedule(timeout=30.0, backoffInitial=50.0, backoffMax=100.0)
        s.add("a", 100.0, [Attempt("2026-01-01T00:00:00.000Z", "HTTP 503")])
        s.poll(0.0)
        self.assertIsNone(s.failed("a", 1.0, "HTTP 500"))
        [start] = s.poll(s.wakeAt())
        self.assertEqual(start, Start("a", 100.0))
        gaveUp = s.failed("a", 71.0, "connection refused")
        self.assertIsInstance(gaveUp, GaveUp)
        self.assertEqual(
            [a.outcome for a in gaveUp.attempts], ["HTTP 503", "HTTP 500", "connection refused"]
        )
        self.assertIn("3 attempts", gaveUp.error)
        self.assertIn("connection refused", gaveUp.error)
        self.assertNotIn("a", s)

    def test_giveUpWhenNoAttemptFits(self) -> None:
        """
        A failure so close to the expiry that not even the shortest retry
        could start before it ends the message at once.
        """
        s = schedule(backoffInitial=50.0, backoffMax=100.0)
        s.add("a", 40.0)
        s.poll(0.0)
        gaveUp = s.failed("a", 3.0, "HTTP 500")
        self.assertIsInstance(gaveUp, GaveUp)
        self.assertIn("1 attempt;", gaveUp.error)
        self.assertNotIn("a", s)

    def test_expiresWhileWaitingForSlot(self) -> None:
        """
        A message that waits for a slot past its expiry is given up, never
        started; poll is due again at that expiry.
        """
        s = schedule(concurrency=1, timeout=100.0)
        s.add("blocker", 1000.0)
        self.assertEqual(s.poll(0.0), [Start("blocker", 100.0)])
        s.add("waiter", 50.0)
        self.assertEqual(s.poll(1.0), [])
        self.assertEqual(s.wakeAt(), 50.0)
        [decision] = s.poll(50.0)
        self.assertIsInstance(decision, GaveUp)
        self.assertEqual(decision.name, "waiter")
        self.assertEqual(decision.attempts, Attempts())
        self.assertIn("0 attempts", decision.error)
        self.assertIsNone(s.wakeAt())
        self.assertEqual(s.inFlight, 1)

    def test_alreadyExpired(self) -> None:
        """
        A message added after its expiry is given up at once.
        """
        s = schedule()
        s.add("a", 10.0)
        [decision] = s.poll(10.0)
        self.assertIsInstance(decision, GaveUp)

    def test_addTwice(self) -> None:
        s = schedule()
        s.add("a", 10.0)
        s.add("a", 10.0)
        self.assertEqual(len(s.poll(0.0)), 1)

    def test_reportWithoutAttempt(self) -> None:
        s = schedule()
        s.add("a", 10.0)
        self.assertRaises(ValueError, s.failed, "a", 0.0, "x")


policies = st.builds(
    Policy,
    concurrency=st.integers(1, 4),
    timeout=st.floats(1.0, 60.0),
    backoffInitial=st.floats(0.5, 30.0),
    backoffMax=st.floats(30.0, 300.0),
)
jobs = st.lists(
    st.tuples(st.floats(0.0, 500.0), st.floats(0.0, 3000.0)), min_size=1, max_size=12
)


class SchedulePropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(policy=policies, jobs=jobs, random=st.floats(0.0, 0.999), data=st.data())
    def test_everyMessageEndsOnce(self, policy, jobs, random, data) -> None:
        """
        Whatever the arrivals and the sequence of attempt outcomes: each
        message has exactly one terminal outcome; no attempt starts at or
        after its message's expiry or runs past it; never more than
        C{concurrency} attempts are in flight; a retry comes sooner than its
        backoff at most once (the last chance); a message is given up only
        when its expiry has passed, or its next retry would be too late and
        it had its last chance or none could start in time.
        """
        s = Schedule(policy, lambda: random)
        arrivals = sorted(
            (arrival, f"m{i}", arrival + lifetime) for i, (arrival, lifetime) in enumerate(jobs)
        )
        expiries = {name: expiry for _, name, expiry in arrivals}
        inFlight: dict[str, tuple[float, bool, float]] = {}
        ended: dict[str, Completed | GaveUp] = {}
        failures: dict[str, int] = {}
        failedAt: dict[str, tuple[float, int]] = {}
        lastChances: set[str] = set()
        now = 0.0
        for _ in range(100_000):
            while arrivals and arrivals[0][0] <= now:
                _, name, expiry = arrivals.pop(0)
                s.add(name, expiry)
            for name, (endsAt, success, deadline) in sorted(inFlight.items()):
                if min(endsAt, deadline) > now:
                    continue
                del inFlight[name]
                if success and endsAt <= deadline:
                    outcome = s.succeeded(name, now)
                else:
                    failures[name] = failures.get(name, 0) + 1
                    failedAt[name] = (now, failures[name])
                    outcome = s.failed(name, now, "HTTP 500")
                    if outcome is not None:
                        self.assertGreaterEqual(
                            now + policy.delay(failures[name], random), expiries[name]
                        )
                        self.assertTrue(
                            name in lastChances or policy.lastChance(now, expiries[name]) is None
                        )
                if outcome is not None:
                    self.assertNotIn(name, ended)
                    ended[name] = outcome
            for decision in s.poll(now):
                name = decision.name
                if isinstance(decision, Start):
                    self.assertLess(now, expiries[name])
                    self.assertLessEqual(decision.deadline, expiries[name])
                    self.assertNotIn(name, inFlight)
                    self.assertNotIn(name, ended)
                    if name in failedAt and now < failedAt[name][0] + policy.delay(
                        failedAt[name][1], random
                    ):
                        self.assertNotIn(name, lastChances)
                        lastChances.add(name)
                    success = data.draw(st.booleans())
                    duration = data.draw(st.floats(0.0, policy.timeout * 1.5))
                    inFlight[name] = (now + duration, success, decision.deadline)
                else:
                    self.assertGreaterEqual(now, expiries[name])
                    self.assertNotIn(name, ended)
                    ended[name] = decision
                self.assertLessEqual(len(inFlight), policy.concurrency)
            self.assertEqual(s.inFlight, len(inFlight))
            upcoming = [min(e, d) for e, _, d in inFlight.values()]
            if arrivals:
                upcoming.append(arrivals[0][0])
            wake = s.wakeAt()
            if wake is not None:
                upcoming.append(wake)
            if not upcoming:
                break
            nextTime = min(upcoming)
            self.assertGreaterEqual(nextTime, now)
            now = nextTime
        self.assertEqual(sorted(ended), sorted(expiries))
        self.assertEqual(len(s), 0)
        for name, outcome in ended.items():
            if isinstance(outcome, GaveUp):
                self.assertEqual(outcome.attempts.count, failures.get(name, 0))
