# -*- test-case-name: tests.test_complete -*-
"""
MMS held up by a local error: a completion, or the set-up of a download
(reading its files in C{pending/}), or its move to C{failed/}, that stopped
on our own disk (full, or failing) rather than on the MMS.

MX Telecom has had its 200 and will not send it again, so nothing else
would take such an MMS up before the next sweep of C{pending/}, minutes
later: each one is taken up again on its own, after a wait that starts at
L{INITIAL} seconds and doubles after each failure up to L{MAXIMUM}, until
it gets past the step that failed.  How many wait is reported to the
metrics (and from there to C{/health}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from mxrecv.backoff import backoff

log = Logger()

# Seconds before the first new try, and the longest wait between two.
INITIAL = 1.0
MAXIMUM = 60.0


class RecoveryMetrics(Protocol):
    """
    Where the count of MMS held up by a local error is reported
    (L{mxrecv.ops.metrics.Metrics}).
    """

    def waitingAfterLocalError(self, count: int) -> None:
        """
        C{count} MMS now wait to be taken up again after a local error.
        """


class _NoMetrics:
    def waitingAfterLocalError(self, count: int) -> None:
        pass


class Recovery:
    """
    Takes up again, each on its own and with backoff, the MMS whose step
    stopped on a local error, until each has got past it.

    @param takeUp: takes up an MMS in C{pending/} by name
        (L{mxrecv.mms.pending.PendingWork}); it reports back with L{failed}
        or L{recovered}.
    """

    def __init__(
        self,
        clock: IReactorTime,
        takeUp: Callable[[str], None],
        *,
        initial: float = INITIAL,
        maximum: float = MAXIMUM,
        metrics: RecoveryMetrics | None = None,
    ) -> None:
        self._clock = clock
        self._takeUp = takeUp
        self._initial = initial
        self._maximum = maximum
        self._metrics = _NoMetrics() if metrics is None else metrics
        # Failures in a row of each MMS held up, and its next try.
        self._failures: dict[str, int] = {}
        self._calls: dict[str, IDelayedCall] = {}
        self._stopped = False

    @property
    def waiting(self) -> int:
        """
        How many MMS have met a local error and not got past it since.
        """
        return len(self._failures)

    def failed(self, name: str) -> float | None:
        """
        C{pending/NAME}'s step stopped on a local error: take it up again
        after the next wait of its backoff.

        @return: the wait, in seconds; L{None} once stopped.
        """
        if self._stopped:
            return None
        failures = self._failures.get(name, 0) + 1
        self._failures[name] = failures
        self._cancel(name)
        delay = backoff(failures, self._initial, self._maximum)
        self._calls[name] = self._clock.callLater(delay, self._again, name)
        self._metrics.waitingAfterLocalError(self.waiting)
        return delay

    def recovered(self, name: str) -> None:
        """
        C{pending/NAME} got past the step that failed (or is gone): forget it.
        """
        self._cancel(name)
        if self._failures.pop(name, None) is not None:
            self._metrics.waitingAfterLocalError(self.waiting)

    def stop(self) -> None:
        """
        Take nothing up any more (at shutdown): what waits is left in
        C{pending/} for the next start.
        """
        self._stopped = True
        for name in list(self._calls):
            self._cancel(name)

    def _again(self, name: str) -> None:
        del self._calls[name]
        self._takeUp(name)

    def _cancel(self, name: str) -> None:
        call = self._calls.pop(name, None)
        if call is not None and call.active():
            call.cancel()
