# -*- test-case-name: tests.test_workers -*-
"""
Which worker process leads: the one that runs the work that must run once
per server, not once per process (the sweep of C{pending/}, RetrieveMMS
downloads, completion, delivery, the prune of the seen-id index).

Leadership is an exclusive C{flock} on C{state/leader}, which the kernel
releases when its holder dies, however it dies: no lease to renew, no
clock to trust, and never two leaders.  Every other worker tries to take it
every L{CAMPAIGN_INTERVAL} seconds, so that one takes over within about
that long after the leader dies.  The new leader builds the work and starts
it; starting it takes up whatever is in C{pending/} and C{new/}, which is
where the dead leader's work in flight is (each of its steps is journaled
in the spool and restartable).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from twisted.application.service import IServiceCollection
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mxrecv.ops.service import OrderedService

log = Logger()

# Seconds between a follower's tries at the lock: how soon it takes over.
CAMPAIGN_INTERVAL = 1.0


class LeaderLock(Protocol):
    """
    The lock that makes its holder the leader.
    """

    def acquire(self) -> bool:
        """
        Take the lock if it is free, without waiting.

        @return: whether this process now holds it.
        """

    def release(self) -> None:
        """
        Let go of it (a dead process lets go of it too).
        """


class FileLeaderLock:
    """
    An exclusive C{flock} on a file; while held, the file says who holds
    it (C{describe}), for operators.
    """

    def __init__(self, path: Path, describe: str) -> None:
        self.path = path
        self._describe = describe
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is None:
            # Its own open file, closed on exec: not shared with any other
            # process, nor with the programs this one runs.
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{self._describe}\n".encode(), 0)
        except OSError as e:
            log.warn("Cannot write {path}: {error}", path=str(self.path), error=e.strerror)
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class Leadership(OrderedService):
    """
    Campaigns for leadership while running; once leader, builds the
    leader's work into itself (C{build} adds its services to the
    collection it is given) and starts it.  At shutdown the work stops,
    last added first, and then the lock is let go.

    @param build: builds the leader's work; called once, when elected.  An
        exception from it is logged, the lock let go and C{fatal} called
        (the worker should exit, to be started again by its parent).
    @param elected: called once the work has started.
    """

    def __init__(
        self,
        lock: LeaderLock,
        build: Callable[[IServiceCollection], object],
        *,
        clock: IReactorTime,
        elected: Callable[[], None] = lambda: None,
        fatal: Callable[[], None] = lambda: None,
        interval: float = CAMPAIGN_INTERVAL,
    ) -> None:
        super().__init__()
        self._lock = lock
        self._build = build
        self._elected = elected
        self._fatal = fatal
        self._campaign = LoopingCall(self._try)
        self._campaign.clock = clock
        self._interval = interval
        self.isLeader = False
        self.work: object = None

    def startService(self) -> None:
        super().startService()
        self._campaign.start(self._interval, now=True)

    def _try(self) -> None:
        try:
            acquired = self._lock.acquire()
        except OSError as e:
            log.error("Cannot try for leadership: {error}", error=e.strerror)
            return
        if not acquired:
            return
        self._campaign.stop()
        self.isLeader = True
        try:
            # Each service built here starts as it is added: this runs.
            self.work = self._build(self)
        except BaseException:
            log.failure("Building the leader's work failed; giving up leadership")
            self.isLeader = False
            self._lock.release()
            self._fatal()
            return
        log.info("Leading: the sweep of pending/, retrieval, completion, delivery and the prune")
        self._elected()

    def stopService(self):  # type: ignore[no-untyped-def]
        if self._campaign.running:
            self._campaign.stop()
        d = super().stopService()

        def release(result: object) -> object:
            if self.isLeader:
                self.isLeader = False
                self._lock.release()
            return result

        return d.addBoth(release)
