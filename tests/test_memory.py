"""
The in-memory reactor and thread pool (L{mxrecv.testing.memory}), and the
callback site over them.
"""

from urllib.parse import urlencode

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.trial.unittest import SynchronousTestCase

from mxrecv.spool.layout import NEW
from mxrecv.testing.memory import DrivenThreadPool, MemoryReactor, exchange, settle

from .support import SMS, Answer, MemoryServer


class DrivenThreadPoolTests(SynchronousTestCase):
    def test_jobsRunWhenTold(self) -> None:
        """
        A job runs only when the test says, in order; its result or its
        failure reaches the Deferred of C{deferToThreadPool}.
        """
        reactor, pool = MemoryReactor(), DrivenThreadPool()
        first: Deferred = deferToThreadPool(reactor, pool, lambda: 1)
        second: Deferred = deferToThreadPool(reactor, pool, lambda: 1 / 0)
        self.assertNoResult(first)
        self.assertEqual(len(pool.pending), 2)
        pool.runNext()
        self.assertEqual(self.successResultOf(first), 1)
        self.assertNoResult(second)
        self.assertEqual(pool.runAll(), 1)
        self.failureResultOf(second, ZeroDivisionError)
        self.assertEqual(pool.ran, 2)

    def test_runAllRunsWhatJobsQueue(self) -> None:
        reactor, pool = MemoryReactor(), DrivenThreadPool()
        done = []

        def chain(n: int) -> None:
            done.append(n)
            if n < 3:
                deferToThreadPool(reactor, pool, chain, n + 1)

        deferToThreadPool(reactor, pool, chain, 1)
        self.assertEqual(pool.runAll(), 3)
        self.assertEqual(done, [1, 2, 3])


class MemoryServerTests(SynchronousTestCase):
    def test_smsStoredThen200(self) -> None:
        """
        A GET callback over an in-memory connection is answered 200 once
        its message is in new/, and not before: the answer waits for the
        spool's jobs, which the test runs.
        """
        server = MemoryServer(self)
        query = urlencode(SMS).encode()
        request = b"GET /?%s HTTP/1.1\r\nHost: x\r\n\r\n" % query
        transport = exchange(server.site, request, reactor=server.reactor)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(list(server.spool.dir(NEW).iterdir()), [])
        settle(server.reactor, [server.pool])
        answer = Answer.parse(transport)
        self.assertEqual((answer.code, answer.body), (200, b"OK\n"))
        self.assertEqual([p.name for p in server.spool.dir(NEW).iterdir()], ["mx-1"])
