# -*- test-case-name: tests.test_deliver_policy -*-
"""
What one attempt to deliver a message came to: the value every target
(L{mxrecv.deliver.interfaces.ITarget}) returns, and all the queue needs to
decide what happens next.

A target says what happened; it does not decide what to do about it: the
queue (L{mxrecv.deliver.queue}) retries a L{TemporaryFailure} in order, for as
long as it takes, and gives up on a message whose L{PermanentFailure}s reach
C{[deliver] max_attempts}.
"""

from __future__ import annotations

from attrs import frozen


@frozen
class Delivered:
    """
    The application has the message.
    """


@frozen
class TemporaryFailure:
    """
    The application (or the way to it) cannot take messages now; the next
    one would fail the same way, so everything waits.

    @ivar why: a sentence for the log and the attempts' record.
    @ivar retryAfter: seconds the application asked us to wait (an HTTP
        C{Retry-After}), if it did.
    """

    why: str
    retryAfter: float | None = None


@frozen
class PermanentFailure:
    """
    The application refused this message; others may well go through.

    @ivar why: a sentence for the log and the attempts' record.
    """

    why: str


Outcome = Delivered | TemporaryFailure | PermanentFailure
