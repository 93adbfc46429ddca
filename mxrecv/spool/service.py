# -*- test-case-name: tests.test_spool -*-
"""
The spool's lifetime in a running mxrecv: opened once at start-up (before
anything listens), pruned of old ids every hour, closed at shutdown once
its commits are done.
"""

from __future__ import annotations

from pathlib import Path

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from mxrecv.interfaces import IReactorTimeAndThreads
from mxrecv.spool.mode import SpoolMode
from mxrecv.spool.store import Spool, SpoolError, SpoolLocked

log = Logger()

# How often ids older than the dedupe window are forgotten.
PRUNE_INTERVAL = 3600.0
# Threads that write and fsync messages; concurrent fsyncs share journal
# commits, so more threads than cores pays off.
IO_THREADS = 16
# Threads that write and hash uploads and RetrieveMMS downloads as they
# stream in (L{mxrecv.spool.writer}): that is CPU work (SHA-256, copying
# into the page cache), so about as many as cores, in a pool of their own so
# that they never delay the fsyncs of the messages being acknowledged.
UPLOAD_THREADS = 4


def openSpool(
    root: Path,
    *,
    sync: bool,
    dedupeSeconds: float,
    reactor: IReactorTimeAndThreads,
    pool: ThreadPool,
    worker: int | None = None,
    lock: int | None = None,
    mode: SpoolMode = SpoolMode(),
) -> Spool:
    """
    Open the spool at C{root} (C{[spool] dir}): the one place a running
    mxrecv opens it.

    @param sync: fsync (C{[spool] fsync}).
    @param dedupeSeconds: how long accepted ids are remembered.
    @param pool: the thread pool of its writes and fsyncs.
    @param worker: this process's number, in a server of several worker
        processes (L{Spool}'s C{worker}).
    @param lock: the spool's lock the worker inherited (L{Spool.open}'s).
    @param mode: the permissions of what it writes (C{[spool] mode}, C{group}).
    @raise SystemExit: if it cannot be opened (unwritable, or in use by
        another process), saying why.
    """
    spool = Spool(
        root,
        reactor=reactor,
        pool=pool,
        sync=sync,
        dedupeSeconds=dedupeSeconds,
        worker=worker,
        mode=mode,
    )
    try:
        spool.open(lock=lock)
    except (OSError, SpoolError, SpoolLocked) as e:
        raise SystemExit(f"mxrecv: cannot open the spool {spool.root}: {e}") from None
    if not sync:
        log.warn("spool.fsync is false: callbacks are acknowledged before they are durable")
    return spool


class SpoolService(Service):
    """
    Keeps the spool open while running (it is opened again if it was
    closed), and closes it at shutdown once the commits in flight are done.
    """

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def startService(self) -> None:
        super().startService()
        if not self.spool.isOpen:
            self.spool.open()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.spool.whenIdle().addBoth(lambda _: self.spool.close())


class PruneService(Service):
    """
    Prunes the spool's seen-id index every C{interval} seconds from the
    start: in one process of the server (its leader, when it runs several).
    """

    def __init__(
        self, spool: Spool, clock: IReactorTime, interval: float = PRUNE_INTERVAL
    ) -> None:
        self.spool = spool
        self._prunes = LoopingCall(self._prune)
        self._prunes.clock = clock
        self._interval = interval

    def startService(self) -> None:
        super().startService()
        self._prunes.start(self._interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._prunes.running:
            self._prunes.stop()

    def _prune(self) -> None:
        """
        Forget old ids; an error is logged and the timer keeps running.
        """
        clock = self._prunes.clock
        started = clock.seconds()
        log.info("Forgetting ids older than the dedupe window")
        self.spool.prune().addCallbacks(
            lambda n: log.info(
                "Forgot {count} ids older than the dedupe window in {seconds:.1f} s",
                count=n,
                seconds=clock.seconds() - started,
            ),
            lambda f: log.failure("Pruning the seen-id index failed", f),
        )
