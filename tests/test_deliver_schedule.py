"""
The queue of one delivery target, as decisions: order, concurrency,
everything waiting while the target fails temporarily, refused messages
set aside and given up without holding up the others.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mxrecv.deliver.outcome import Delivered, PermanentFailure, TemporaryFailure
from mxrecv.deliver.policy import RETRY_AFTER_MAX
from mxrecv.deliver.schedule import GaveUp, Policy, Retry, Schedule
from mxrecv.spool.layout import RECENT_ATTEMPTS

OK = Delivered()
BUSY = TemporaryFailure("HTTP 503")
NO = PermanentFailure("HTTP 400: cannot parse it")


def schedule(**policy) -> Schedule:
    return Schedule(Policy(**policy))


class ExampleTests(SynchronousTestCase):
    def test_inOrder(self):
        """
        With concurrency 1, one message at a time, in the order queued;
        messages found at start-up (addFirst) go first.
        """
        s = schedule()
        s.add("c", 0)
        s.addFirst([("a", 0), ("b", 0)])
        started = []
        for _ in range(3):
            [name] = s.poll(0)
            self.assertEqual(s.poll(0), [])
            started.append(name)
            s.delivered(name)
        self.assertEqual(started, ["a", "b", "c"])
        self.assertEqual(len(s), 0)

    def test_temporaryWaitsInOrder(self):
        """
        A temporary failure puts the message back first and stops everything
        for the backoff, doubling while the failures go on.
        """
        s = schedule(backoffInitial=1.0, backoffMax=8.0)
        s.add("a", 0)
        s.add("b", 0)
        now = 0.0
        for delay in (1, 2, 4, 8, 8):
            self.assertEqual(s.poll(now), ["a"])
            self.assertEqual(s.failed("a", BUSY, now), Retry("a", now + delay, 0))
            self.assertEqual(s.poll(now + delay - 0.001), [])
            self.assertEqual(s.wakeAt(), now + delay)
            now += delay
        self.assertEqual(s.failing.failures, 5)
        self.assertEqual(s.failing.since, 0.0)
        self.assertEqual(s.poll(now), ["a"])
        s.delivered("a")
        self.assertIsNone(s.failing)
        self.assertEqual(s.poll(now), ["b"])

    def test_retryAfter(self):
        """
        Retry-After makes the wait longer than the backoff, never shorter.
        """
        s = schedule(backoffInitial=1.0)
        s.add("a", 0)
        s.poll(0)
        self.assertEqual(s.failed("a", TemporaryFailure("HTTP 429", 2.0), 0).at, 2.0)
        self.assertEqual(s.poll(1.999), [])
        self.assertEqual(s.poll(2.0), ["a"])
        self.assertEqual(s.failed("a", TemporaryFailure("HTTP 429", 0.5), 2.0).at, 4.0)

    def test_refusedSetAside(self):
        """
        A refused message is set aside while the next ones go on, tried
        again after its backoff, and given up at its max_attempts-th refusal
        with every attempt.
        """
        s = schedule(maxAttempts=3, backoffInitial=1.0)
        for name in "abc":
            s.add(name, 0)
        self.assertEqual(s.poll(0), ["a"])
        self.assertEqual(s.failed("a", NO, 0), Retry("a", 1.0, 1))
        self.assertEqual(s.poll(0), ["b"])
        s.delivered("b")
        self.assertEqual(s.poll(0.5), ["c"])
        s.delivered("c")
        self.assertEqual(s.poll(0.6), [])
        self.assertEqual(s.wakeAt(), 1.0)
        self.assertEqual(s.poll(1.0), ["a"])
        self.assertEqual(s.failed("a", BUSY, 1.0), Retry("a", 2.0, 1))
        self.assertEqual(s.poll(2.0), ["a"])
        self.assertEqual(s.failed("a", NO, 2.0), Retry("a", 4.0, 2))
        self.assertEqual(s.poll(4.0), ["a"])
        gaveUp = s.failed("a", NO, 4.0)
        self.assertIsInstance(gaveUp, GaveUp)
        self.assertEqual(gaveUp.attempts.count, 4)
        self.assertEqual(
            [a.outcome for a in gaveUp.attempts], [NO.why, BUSY.why, NO.why, NO.why]
        )
        self.assertEqual(gaveUp.error, f"refused 3 times; the last time: {NO.why}")
        self.assertNotIn("a", s)
        self.assertEqual(len(s), 0)

    def test_attemptsKept(self):
        """
        Only the last RECENT_ATTEMPTS attempts are kept, but all are counted.
        """
        s = schedule(maxAttempts=1)
        s.add("a", 0)
        for t in range(RECENT_ATTEMPTS + 5):
            self.assertEqual(s.poll(float(t * 1000)), ["a"])
            s.failed("a", BUSY, float(t * 1000))
        s.poll(1e9)
        gaveUp = s.failed("a", NO, 1e9)
        self.assertEqual(gaveUp.attempts.count, RECENT_ATTEMPTS + 6)
        self.assertEqual(len(gaveUp.attempts.recent), RECENT_ATTEMPTS)
        self.assertEqual(gaveUp.attempts.last.outcome, NO.why)

    def test_concurrentFailuresCountOnce(self):
        """
        Attempts in flight together that fail together grow the backoff once.
        """
        s = schedule(concurrency=3, backoffInitial=1.0)
        for name in "abcd":
            s.add(name, 0)
        self.assertEqual(s.poll(0), ["a", "b", "c"])
        for name in "abc":
            s.failed(name, BUSY, 0.1)
        self.assertEqual(s.failing.failures, 1)
        self.assertEqual(s.poll(1.1), ["a", "b", "c"])

    def test_notInFlight(self):
        s = schedule()
        s.add("a", 0)
        self.assertRaises(ValueError, s.delivered, "a")
        self.assertRaises(KeyError, s.failed, "b", NO, 0)

    @given(st.lists(st.tuples(st.sampled_from("abcdef"), st.floats(0, 100)), max_size=30))
    def test_oldest(self, steps):
        """
        oldest() is the earliest "since" of the messages queued, whatever
        was queued, delivered and queued again before.
        """
        s = schedule(concurrency=6)
        waiting = {}
        for name, since in steps:
            if name in waiting:
                s.poll(0.0)  # everything queued is in flight
                s.delivered(name)
                del waiting[name]
            else:
                s.add(name, since)
                waiting[name] = since
            self.assertEqual(s.oldest(), min(waiting.values(), default=None))
        self.assertEqual(s.names(), frozenset(waiting))


outcomes = st.sampled_from([OK, BUSY, NO, TemporaryFailure("HTTP 429", 30.0)])


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        st.integers(min_value=1, max_value=8),
        st.integers(min_value=1, max_value=4),
        st.integers(min_value=1, max_value=4),
        st.data(),
    )
    def test_run(self, count, concurrency, maxAttempts, data):
        """
        Run a queue to its end with scripted outcomes, ending attempts in any
        order: every message ends delivered or given up (at its
        maxAttempts-th refusal); never more than concurrency in flight; no
        attempt starts while the target waits after a temporary failure
        (nor before its Retry-After); with concurrency 1, the messages never
        refused are delivered in the order queued.
        """
        s = schedule(concurrency=concurrency, maxAttempts=maxAttempts, backoffInitial=1.0)
        names = [f"m{i}" for i in range(count)]
        for name in names:
            s.add(name, 0.0)
        # Each message's outcomes, then success.
        scripts = {n: data.draw(st.lists(outcomes, max_size=6)) for n in names}
        refusals = {n: 0 for n in names}
        delivered, gaveUp, inFlight = [], [], []
        now, notBefore = 0.0, 0.0
        for _ in range(1000):
            started = s.poll(now)
            if started:
                self.assertGreaterEqual(now, notBefore)
            for name in started:
                self.assertNotIn(name, inFlight)
                inFlight.append(name)
            self.assertLessEqual(len(inFlight), concurrency)
            self.assertEqual(s.inFlight, len(inFlight))
            if inFlight:
                name = inFlight.pop(data.draw(st.integers(0, len(inFlight) - 1)))
                outcome = scripts[name].pop(0) if scripts[name] else OK
                now += data.draw(st.sampled_from([0.0, 0.5]))
                if outcome == OK:
                    s.delivered(name)
                    delivered.append(name)
                    continue
                decision = s.failed(name, outcome, now)
                if isinstance(outcome, PermanentFailure):
                    refusals[name] += 1
                if isinstance(decision, GaveUp):
                    self.assertEqual(refusals[name], maxAttempts)
                    gaveUp.append(name)
                else:
                    self.assertLess(refusals[name], maxAttempts)
                    self.assertGreaterEqual(decision.at, now)
                    if isinstance(outcome, TemporaryFailure):
                        wait = min(outcome.retryAfter or 0.0, RETRY_AFTER_MAX)
                        notBefore = max(notBefore, now + wait, decision.at)
                continue
            wake = s.wakeAt()
            if wake is None:
                break
            self.assertGreater(wake, now)
            now = wake
        self.assertEqual(len(s), 0)
        self.assertEqual(sorted(delivered + gaveUp), sorted(names))
        if concurrency == 1:
            neverRefused = [n for n in names if refusals[n] == 0]
            self.assertEqual([n for n in delivered if n in neverRefused], neverRefused)
