"""
The pure decisions of delivery: what an HTTP answer or a command's end
means, Retry-After, and the wait before the next attempt.
"""

import email.utils

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mxrecv.backoff import backoff
from mxrecv.deliver.identity import deliveryId
from mxrecv.deliver.outcome import Delivered, PermanentFailure, TemporaryFailure
from mxrecv.deliver.policy import (
    ANSWER_HEAD,
    RETRY_AFTER_MAX,
    STDERR_TAIL,
    TEMPFAIL,
    commandOutcome,
    httpOutcome,
    parseRetryAfter,
    retryDelay,
)

statuses = st.integers(min_value=100, max_value=999)
bodies = st.binary(max_size=ANSWER_HEAD * 2)
seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False)


class HttpOutcomeTests(SynchronousTestCase):
    @settings(deadline=None)
    @given(statuses, bodies, st.none() | seconds)
    def test_classes(self, code, body, retryAfter):
        """
        2xx is delivered; 408, 429, 5xx (and anything that is neither a
        success nor a 4xx) are temporary, with the Retry-After; any other
        4xx is permanent.  A failure names the status.
        """
        outcome = httpOutcome(code, body, retryAfter)
        if 200 <= code < 300:
            self.assertEqual(outcome, Delivered())
            return
        self.assertTrue(outcome.why.startswith(f"HTTP {code}"))
        if 400 <= code < 500 and code not in (408, 429):
            self.assertIsInstance(outcome, PermanentFailure)
        else:
            self.assertEqual(outcome.retryAfter, retryAfter)

    @settings(deadline=None)
    @given(st.binary(min_size=ANSWER_HEAD + 1, max_size=ANSWER_HEAD * 3))
    def test_answerHead(self, body):
        """
        The outcome keeps at most the first ANSWER_HEAD bytes of the answer.
        """
        text = body[:ANSWER_HEAD].decode("utf-8", "replace").strip()
        why = httpOutcome(400, body).why
        self.assertEqual(why, f"HTTP 400: {text}" if text else "HTTP 400")

    def test_examples(self):
        self.assertEqual(
            httpOutcome(400, b"cannot parse it\n"), PermanentFailure("HTTP 400: cannot parse it")
        )
        self.assertEqual(httpOutcome(503, b""), TemporaryFailure("HTTP 503"))
        self.assertEqual(
            httpOutcome(429, b"slow down", 2.0), TemporaryFailure("HTTP 429: slow down", 2.0)
        )
        self.assertEqual(
            httpOutcome(302, b""), TemporaryFailure("HTTP 302 (redirects are not followed)")
        )


class CommandOutcomeTests(SynchronousTestCase):
    @settings(deadline=None)
    @given(st.integers(min_value=0, max_value=255), st.binary(max_size=3 * STDERR_TAIL))
    def test_exitStatus(self, status, stderr):
        """
        0 is delivered, 75 (EX_TEMPFAIL) temporary, anything else permanent;
        a failure keeps the end of stderr.
        """
        outcome = commandOutcome(status, None, stderr)
        if status == 0:
            self.assertEqual(outcome, Delivered())
            return
        self.assertIsInstance(outcome, TemporaryFailure if status == TEMPFAIL else PermanentFailure)
        self.assertTrue(outcome.why.startswith(f"exit status {status}"))
        tail = stderr[-STDERR_TAIL:].decode("utf-8", "replace").strip()
        if tail:
            self.assertTrue(outcome.why.endswith(f"; stderr: {tail}"))
        else:
            self.assertNotIn("stderr", outcome.why)

    @settings(deadline=None)
    @given(st.integers(min_value=1, max_value=64))
    def test_signal(self, signal):
        """
        Death by a signal is temporary, whatever the signal.
        """
        self.assertIsInstance(commandOutcome(None, signal), TemporaryFailure)

    def test_timeout(self):
        """
        A command killed for its timeout is temporary, and says so.
        """
        self.assertEqual(
            commandOutcome(None, 9, b"working...\n", timeout=60.0),
            TemporaryFailure("killed after 60s (the timeout); stderr: working..."),
        )
        self.assertEqual(commandOutcome(None, 15).why, "killed by signal SIGTERM")


class RetryAfterTests(SynchronousTestCase):
    @settings(deadline=None)
    @given(st.integers(min_value=0, max_value=10**6), seconds)
    def test_seconds(self, delay, now):
        self.assertEqual(parseRetryAfter(str(delay).encode(), now), delay)

    @settings(deadline=None)
    @given(st.integers(min_value=0, max_value=2**40), st.integers(min_value=0, max_value=2**33))
    def test_date(self, now, when):
        """
        An HTTP-date is the seconds from now to it, or 0 if it is past.
        """
        value = email.utils.formatdate(when, usegmt=True).encode()
        self.assertEqual(parseRetryAfter(value, float(now)), max(0.0, when - now))

    @settings(deadline=None)
    @given(st.binary(max_size=40).filter(lambda b: not b.strip().isdigit()))
    def test_garbage(self, value):
        """
        Anything else is a number of seconds or None, never an exception.
        """
        result = parseRetryAfter(value, 0.0)
        self.assertTrue(result is None or result >= 0)

    def test_absent(self):
        self.assertIsNone(parseRetryAfter(None, 0.0))
        self.assertIsNone(parseRetryAfter(b"soon", 0.0))
        self.assertIsNone(parseRetryAfter(b"-5", 0.0))
        self.assertEqual(parseRetryAfter(b"9" * 400, 0.0), 10**9)


class BackoffTests(SynchronousTestCase):
    @settings(deadline=None)
    @given(
        st.integers(min_value=1, max_value=10_000),
        st.floats(min_value=0.01, max_value=100),
        st.floats(min_value=100, max_value=10_000),
        st.none() | seconds,
    )
    def test_retryDelay(self, failures, initial, maximum, retryAfter):
        """
        The wait is never shorter than the backoff, nor than what the
        application asked (up to RETRY_AFTER_MAX), and never longer than
        both allow; it does not shrink as failures go on.
        """
        delay = retryDelay(failures, initial, maximum, retryAfter)
        self.assertGreaterEqual(delay, backoff(failures, initial, maximum))
        if retryAfter is not None:
            self.assertGreaterEqual(delay, min(retryAfter, RETRY_AFTER_MAX))
        self.assertLessEqual(delay, max(maximum, RETRY_AFTER_MAX))
        self.assertLessEqual(delay, retryDelay(failures + 1, initial, maximum, retryAfter))


class DeliveryIdTests(SynchronousTestCase):
    @settings(deadline=None)
    @given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E)))
    def test_visibleAscii(self, messageId):
        """
        An id of visible ASCII is given as it is, unless it holds "%".
        """
        if "%" not in messageId:
            self.assertEqual(deliveryId(messageId), messageId)

    @settings(deadline=None)
    @given(st.text(), st.text())
    def test_injective(self, a, b):
        """
        Different ids give different values, each visible ASCII.
        """
        self.assertEqual(deliveryId(a) == deliveryId(b), a == b)
        self.assertTrue(all(0x21 <= ord(c) <= 0x7E for c in deliveryId(a)))

    def test_examples(self):
        self.assertEqual(deliveryId("abc-123"), "abc-123")
        self.assertEqual(deliveryId("50%"), "50%25")
        self.assertEqual(deliveryId("a b\x00é\udce9"), "a%20b%00%C3%A9%ED%B3%A9")
