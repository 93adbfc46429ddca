# -*- test-case-name: tests.test_postgresql_pool -*-
"""
psycopg's blocking connections, used from Twisted: each call runs in a
thread of a pool of its own, with a connection taken from those idle (or a
new one), and given back after.

Why not C{twisted.enterprise.adbapi}: it keeps one connection per thread
and finds a dead one only by running C{cp_good_sql} after each failure,
where psycopg already says so (C{connection.broken}); its
C{runInteraction} hands over a DB-API cursor, where streaming parts needs
psycopg's own C{cursor.copy()} and C{connection.transaction()}; and it logs
through the legacy API.  What is needed here fits in this module: a thread
pool of C{size} threads (so at most C{size} connections), apart from the
spool's threads so that a database that does not answer never delays a
callback's fsync; connections kept between calls; a broken one dropped;
every connection closed when the pool stops.

A call whose connection had been idle and turns out broken (the server
restarted since, or an idle timeout closed it) is made once more on a new
connection: the operations run here are idempotent (an insert that
does nothing if the row is there), so a retry is safe even when the commit
got through before the connection broke.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

log = Logger()

T = TypeVar("T")


class ConnectionPool:
    """
    At most C{size} connections made by C{connect}, each used by one call at
    a time.

    @param connect: makes a new connection (blocking); called in the pool's
        threads.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        size: int,
        reactor: IReactorFromThreads,
        name: str = "mxrecv-postgresql",
    ) -> None:
        self._connect = connect
        self._reactor = reactor
        self._threads = ThreadPool(minthreads=0, maxthreads=size, name=name)
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._closed = False

    def start(self) -> None:
        self._threads.start()

    def run(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        """
        Call C{f(connection, *args)} in a thread; fires with its result.
        """
        return deferToThreadPool(self._reactor, self._threads, self._call, f, *args)

    def stop(self) -> None:
        """
        Wait for the calls under way to end, then close every connection
        (blocking, briefly: call it once nothing is being delivered).
        """
        self._threads.stop()
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    @property
    def idle(self) -> int:
        """
        Connections open and not in use.
        """
        with self._lock:
            return len(self._idle)

    def _call(self, f: Callable[..., T], *args: Any) -> T:
        connection, reused = self._take()
        try:
            return self._once(connection, f, args)
        except Exception:
            if not (reused and connection.broken):
                raise
        log.info("A PostgreSQL connection was lost while idle; trying again on a new one")
        return self._once(self._connect(), f, args)

    def _once(self, connection: Any, f: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            return f(connection, *args)
        finally:
            self._give(connection)

    def _take(self) -> tuple[Any, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def _give(self, connection: Any) -> None:
        """
        Keep C{connection} for the next call if it is usable: open, and
        not left in a transaction.
        """
        if _reusable(connection):
            with self._lock:
                if not self._closed:
                    self._idle.append(connection)
                    return
        connection.close()


def _reusable(connection: Any) -> bool:
    from psycopg.pq import TransactionStatus

    return not connection.closed and connection.info.transaction_status == TransactionStatus.IDLE
