# -*- test-case-name: tests.test_deliver_policy -*-
"""
The decisions of delivery, without any I/O: what an HTTP answer or a
command's end means (L{httpOutcome}, L{commandOutcome}), and how long to wait
before the next attempt (L{retryDelay}, honouring C{Retry-After}).

The lines between temporary and permanent are those of the webhook senders
and mail servers people rely on: for a URL, 2xx is delivered; no answer,
408, 429 and 5xx are temporary (the application is down or busy, and would
refuse the next message too); any other 4xx is the application refusing
this message.  For a command, 0 is delivered; exit status 75 (EX_TEMPFAIL,
as sendmail and Postfix use it) and death by a signal or the timeout are
temporary; any other status is a refusal of this message.
"""

from __future__ import annotations

import calendar
import email.utils
import signal as _signal

from mxrecv.backoff import backoff
from mxrecv.deliver.outcome import Delivered, Outcome, PermanentFailure, TemporaryFailure

#: EX_TEMPFAIL from sysexits.h: "try again later".
TEMPFAIL = 75
#: Bytes of an answer's body kept in its outcome.
ANSWER_HEAD = 200
#: Bytes of the end of a command's stderr kept in its outcome.
STDERR_TAIL = 1024
#: The longest C{Retry-After} honoured, in seconds: a date a year ahead is
#: a mistake, and must not stop delivery for a year.
RETRY_AFTER_MAX = 3600.0
# Where a delay-seconds stops being a number we care about (and before a
# float overflows).
_FOREVER = 10**9


def httpOutcome(code: int, body: bytes, retryAfter: float | None = None) -> Outcome:
    """
    What an HTTP answer to a delivery means.

    @param body: the first bytes of the answer's body (L{ANSWER_HEAD} are kept).
    @param retryAfter: seconds from its C{Retry-After} header (L{parseRetryAfter}).
    """
    if 200 <= code < 300:
        return Delivered()
    text = _text(body[:ANSWER_HEAD])
    why = f"HTTP {code}: {text}" if text else f"HTTP {code}"
    if 400 <= code < 500 and code not in (408, 429):
        return PermanentFailure(why)
    if 300 <= code < 400:
        why += " (redirects are not followed)"
    return TemporaryFailure(why, retryAfter)


def commandOutcome(
    status: int | None, signal: int | None, stderr: bytes = b"", timeout: float | None = None
) -> Outcome:
    """
    What the end of a delivery command means.

    @param status: its exit status, if it exited.
    @param signal: the signal that killed it, if one did.
    @param stderr: the end of what it wrote to stderr (L{STDERR_TAIL} bytes kept).
    @param timeout: set (to the timeout, in seconds) if mxrecv killed it
        because it ran that long.
    """
    if timeout is not None:
        why = f"killed after {timeout:g}s (the timeout)"
    elif signal is not None:
        why = f"killed by signal {_signalName(signal)}"
    elif status == 0:
        return Delivered()
    elif status == TEMPFAIL:
        why = f"exit status {status} (EX_TEMPFAIL)"
    else:
        why = f"exit status {status}"
    tail = _text(stderr[-STDERR_TAIL:])
    if tail:
        why += f"; stderr: {tail}"
    if timeout is None and signal is None and status != TEMPFAIL:
        return PermanentFailure(why)
    return TemporaryFailure(why)


def parseRetryAfter(value: bytes | None, now: float) -> float | None:
    """
    Seconds to wait from a C{Retry-After} header's value: delay-seconds or an
    HTTP-date (RFC 9110, 10.2.3), taken from C{now} (POSIX seconds); L{None}
    if absent or not understood.  A date in the past means now (0).
    """
    if value is None:
        return None
    text = value.decode("latin-1").strip()
    if text.isascii() and text.isdigit():
        return float(min(int(text), _FOREVER))
    parsed = email.utils.parsedate_tz(text)
    if parsed is None or parsed[9] is None:
        return None
    try:
        when = calendar.timegm(parsed[:9]) - parsed[9]
    except (OverflowError, ValueError):
        return None
    return max(0.0, when - now)


def retryDelay(
    failures: int, initial: float, maximum: float, retryAfter: float | None = None
) -> float:
    """
    Seconds to wait after the C{failures}th failure in a row: the backoff, or
    longer if the application asked for it with C{Retry-After} (honoured up
    to L{RETRY_AFTER_MAX}).
    """
    delay = backoff(failures, initial, maximum)
    if retryAfter is not None:
        delay = max(delay, min(retryAfter, RETRY_AFTER_MAX))
    return delay


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").strip()


def _signalName(number: int) -> str:
    try:
        return _signal.Signals(number).name
    except ValueError:
        return str(number)
