"""
L{mxrecv.web.listen.Listener}: a service that listens while it runs, with
its port in public view, in memory.
"""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.testing import EventLoggingObserver, MemoryReactor
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mxrecv.web.listen import Listener


@implementer(IStreamServerEndpoint)
class Endpoint:
    """
    An endpoint whose C{listen} returns what the test chose.
    """

    def __init__(self, result: Deferred) -> None:
        self.result = result

    def listen(self, factory):
        return self.result


class StoppablePort:
    def __init__(self) -> None:
        self.stopped = 0
        self.stopping: Deferred[None] = Deferred()

    def stopListening(self):
        self.stopped += 1
        return self.stopping


class ListenerTests(SynchronousTestCase):
    def test_listensWhileRunning(self) -> None:
        """
        A listener listens once started (its port then in view) and stops
        listening when stopped, its stop done once the port's is.
        """
        reactor = MemoryReactor()
        listener = Listener(serverFromString(reactor, "tcp:0:interface=127.0.0.1"), Factory())
        self.assertIsNone(listener.port)
        listener.startService()
        [(port, factory, backlog, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (0, "127.0.0.1"))
        self.assertIs(factory, listener.factory)
        self.assertEqual(listener.port.getHost().port, 0)

        stoppable = StoppablePort()
        listener = Listener(Endpoint(succeed(stoppable)), Factory())
        listener.startService()
        stopped = listener.stopService()
        self.assertEqual(stoppable.stopped, 1)
        self.assertNoResult(stopped)
        stoppable.stopping.callback(None)
        self.successResultOf(stopped)
        self.assertIsNone(listener.port)
        self.assertFalse(listener.running)

    def test_failureKnownAtOnceRaised(self) -> None:
        """
        A failure to listen that is known at once is raised by
        C{startService}, so that twistd does not start.
        """
        listener = Listener(Endpoint(fail(CannotListenError("", 80, OSError("in use")))), Factory())
        self.assertRaises(CannotListenError, listener.startService)
        self.assertIsNone(listener.port)

    def test_laterFailureLogged(self) -> None:
        """
        A failure to listen that comes later is logged.
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        waiting: Deferred = Deferred()
        listener = Listener(Endpoint(waiting), Factory())
        listener.startService()
        waiting.errback(CannotListenError("", 80, OSError("in use")))
        self.assertEqual(len(self.flushLoggedErrors(CannotListenError)), 1)
        self.assertIn("Cannot listen", logged[0]["log_format"])
        self.assertIsNone(listener.port)
        self.assertIsNone(listener.stopService())

    def test_stopWhileWaiting(self) -> None:
        """
        Stopped before it listens, a listener cancels the attempt, and
        nothing is logged.
        """
        cancelled = []
        waiting: Deferred = Deferred(cancelled.append)
        listener = Listener(Endpoint(waiting), Factory())
        listener.startService()
        self.assertIsNone(listener.stopService())
        self.assertEqual(cancelled, [waiting])
        self.assertEqual(self.flushLoggedErrors(), [])
