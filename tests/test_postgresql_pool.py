"""
The connection pool, on a real PostgreSQL: calls in its own threads,
connections kept and bounded, a connection lost while idle replaced without
a failed attempt, a server down then up, every connection closed at stop.
"""

from __future__ import annotations

import threading

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from mxrecv.deliver.postgresql.connect import Settings
from mxrecv.deliver.postgresql.pool import ConnectionPool
from mxrecv.deliver.postgresql.schema import SchemaError
from mxrecv.deliver.postgresql.target import checked

from .postgresql import database


def backend(connection) -> int:
    return connection.execute("SELECT pg_backend_pid()").fetchone()[0]


class PoolTests(TestCase):
    def setUp(self) -> None:
        self.db = database(self)
        self.settings = Settings(self.db.conninfo, password=self.db.password, timeout=10, node="p")

    def pool(self, size: int = 2, connect=None) -> ConnectionPool:
        pool = ConnectionPool(connect or self.settings.connect, size=size, reactor=reactor)
        pool.start()
        self.addCleanup(pool.stop)
        return pool

    def connections(self) -> int:
        return self.db.query(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mxrecv p'"
        )[0][0]

    @inlineCallbacks
    def test_threadAndReuse(self):
        """
        Calls run outside the reactor's thread; one after the other, they
        use the same connection.
        """
        pool = self.pool()
        seen = []

        def call(connection, n):
            seen.append(threading.current_thread() is not threading.main_thread())
            return backend(connection), n

        first, one = yield pool.run(call, 1)
        second, two = yield pool.run(call, 2)
        self.assertEqual((one, two, seen), (1, 2, [True, True]))
        self.assertEqual(first, second)
        self.assertEqual(pool.idle, 1)

    @inlineCallbacks
    def test_bounded(self):
        """
        Calls at once beyond the pool's size wait: never more connections
        than its size.
        """
        pool = self.pool(size=2)
        gate = threading.Event()
        self.addCleanup(gate.set)
        started = []

        def call(connection):
            started.append(backend(connection))
            gate.wait()
            return backend(connection)

        calls = [pool.run(call) for _ in range(5)]
        gate.set()
        backends = yield gatherResults(calls)
        self.assertEqual(len(set(backends)), len(set(started)))
        self.assertLessEqual(len(set(backends)), 2)
        self.assertEqual(pool.idle, len(set(backends)))

    @inlineCallbacks
    def test_lostWhileIdle(self):
        """
        A connection the server closed while it was idle is replaced, and
        the call made on the new one: no failure is seen.
        """
        pool = self.pool()
        first = yield pool.run(backend)
        self.db.query("SELECT pg_terminate_backend(%s)", first)
        second = yield pool.run(backend)
        self.assertNotEqual(first, second)
        self.assertEqual(pool.idle, 1)

    @inlineCallbacks
    def test_serverDownThenUp(self):
        """
        While the server is down each call fails; once it is back they work.
        """
        import psycopg

        pool = self.pool()
        yield pool.run(backend)
        cluster = self.db.cluster
        cluster.stop()
        self.addCleanup(lambda: None if cluster.running else cluster.start())
        yield self.assertFailure(pool.run(backend), psycopg.OperationalError)
        self.assertEqual(pool.idle, 0)
        cluster.start()
        yield pool.run(backend)

    @inlineCallbacks
    def test_failedCallKeepsConnection(self):
        """
        A call that fails for its own reason (a refused statement) leaves
        a usable connection, which is kept.
        """
        import psycopg

        pool = self.pool()
        first = yield pool.run(backend)

        def refused(connection):
            with connection.transaction():
                connection.execute("SELECT 1 / 0")

        yield self.assertFailure(pool.run(refused), psycopg.errors.DivisionByZero)
        second = yield pool.run(backend)
        self.assertEqual(first, second)

    @inlineCallbacks
    def test_stopCloses(self):
        """
        Stopping the pool closes every connection.
        """
        pool = ConnectionPool(self.settings.connect, size=3, reactor=reactor)
        pool.start()
        gate = threading.Event()
        self.addCleanup(gate.set)
        calls = [pool.run(lambda c: gate.wait()) for _ in range(3)]
        gate.set()
        yield gatherResults(calls)
        self.assertEqual(self.connections(), pool.idle)
        pool.stop()
        self.assertEqual((self.connections(), pool.idle), (0, 0))

    @inlineCallbacks
    def test_schemaChecked(self):
        """
        With L{checked}, a connection to a database without mxrecv's tables
        is refused (and closed) with the schema's error.
        """
        empty = database(self, initialise=False)
        settings = Settings(empty.conninfo, password=empty.password, node="p")
        pool = self.pool(connect=lambda: checked(settings.connect()))
        failure = yield self.assertFailure(pool.run(backend), SchemaError)
        self.assertIn("mxrecv db-init", str(failure))
        self.assertEqual(self.connections(), 0)
