# -*- test-case-name: tests.test_workers -*-
"""
When to start a worker process again after it died (pure).

A worker that ran for a while and died (killed, out of memory, a bug) is
started again at once: the others carried its share of the load meanwhile.
One that dies soon after it started would most likely die again the same
way (a spool it cannot write, a port it cannot adopt), so each such death in
a row doubles the wait before the next start, up to a bound, rather than
spinning.
"""

from __future__ import annotations

from attrs import frozen

from mxrecv.backoff import backoff


@frozen
class RestartPolicy:
    """
    @ivar stable: seconds a worker must have run for its death not to count
        as dying at once.
    @ivar initial: seconds before starting again after the first death at
        once in a row; doubled for each further one.
    @ivar maximum: the longest wait.
    """

    stable: float = 30.0
    initial: float = 1.0
    maximum: float = 60.0

    def after(self, history: Restarts, ranFor: float) -> tuple[float, Restarts]:
        """
        A worker with this C{history} died after running C{ranFor} seconds.

        @return: seconds to wait before starting it again, and its history
            from then on.
        """
        if ranFor >= self.stable:
            return 0.0, Restarts(total=history.total + 1, quick=0)
        quick = history.quick + 1
        delay = backoff(quick, self.initial, self.maximum)
        return delay, Restarts(total=history.total + 1, quick=quick)


@frozen
class Restarts:
    """
    The restarts of one worker's slot.

    @ivar total: how many times it was started again.
    @ivar quick: how many of the last deaths in a row came soon after a start.
    """

    total: int = 0
    quick: int = 0
