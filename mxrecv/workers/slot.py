# -*- test-case-name: tests.test_workers -*-
"""
A worker process as its parent sees it: which process runs as the worker
now, whether it is up, how often it was started again.
"""

from __future__ import annotations

from typing import Any

from mxrecv.workers.control import PARENT_FD
from mxrecv.workers.restart import Restarts

# A worker whose last "alive" is older than this is not up (its reactor is
# stuck, or it is not started yet).
ALIVE_WITHIN = 5.0


class Slot:
    """
    Worker number C{number}: the process running as it now, if any.

    @ivar process: its process transport, while it runs.
    @ivar started: when it was last started (the parent's clock).
    @ivar lastAlive: when it last said it was alive.
    @ivar listening: on how many sockets it said it listens.
    @ivar ready: whether it has said it listens on them all since it
        started (its reactor runs).
    @ivar restart: the delayed call that will start it again, if any.
    """

    def __init__(self, number: int) -> None:
        self.number = number
        self.process: Any = None
        self.pid: int | None = None
        self.started = 0.0
        self.lastAlive: float | None = None
        self.listening = 0
        self.ready = False
        self.restarts = Restarts()
        self.restart: Any = None

    def reset(self) -> None:
        """
        Forget what its last process said (it is starting, or it ended).
        """
        self.lastAlive = None
        self.listening = 0
        self.ready = False

    def isUp(self, now: float, expected: int) -> bool:
        return (
            self.process is not None
            and self.lastAlive is not None
            and now - self.lastAlive <= ALIVE_WITHIN
            and self.listening >= expected
        )

    def send(self, data: bytes) -> None:
        """
        Write to its process's file descriptor 0, if it runs.
        """
        if self.process is not None:
            try:
                self.process.writeToChild(PARENT_FD, data)
            except (OSError, KeyError):
                pass
