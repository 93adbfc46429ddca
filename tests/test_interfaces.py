"""
The reactor interfaces mxrecv's parts are typed with (L{mxrecv.interfaces}):
what they promise of the reactors that the server and the tests give them.
"""

from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface
from zope.interface.verify import verifyObject

from mxrecv.interfaces import IReactorTimeAndThreads, IServerReactor, installedReactor
from mxrecv.testing.memory import MemoryReactor


def _twistedInterfaces(interface: type[Interface]) -> set[type[Interface]]:
    """
    The interfaces of Twisted's that C{interface} extends, through those of
    mxrecv's.
    """
    found = set()
    for base in interface.__bases__:
        if base.__module__.startswith("mxrecv."):
            found |= _twistedInterfaces(base)
        elif base is not Interface:
            found.add(base)
    return found


class InstalledReactorTests(SynchronousTestCase):
    def test_theGlobalReactor(self) -> None:
        """
        L{installedReactor} is the reactor twistd (here, trial) installed.
        """
        from twisted.internet import reactor

        self.assertIs(installedReactor(), reactor)

    def test_providesEveryInterface(self) -> None:
        """
        The installed reactor provides each of Twisted's interfaces that
        L{IServerReactor} names: the one assertion of the type, in
        L{installedReactor}, holds.
        """
        reactor = installedReactor()
        interfaces = _twistedInterfaces(IServerReactor)
        self.assertIn(IReactorTime, interfaces)
        self.assertIn(IReactorFromThreads, interfaces)
        missing = [i.__name__ for i in interfaces if not i.providedBy(reactor)]
        self.assertEqual(missing, [])


class MemoryReactorTests(SynchronousTestCase):
    def test_timeAndThreads(self) -> None:
        """
        The in-memory reactor of the tests is what the parts that use a
        thread pool take.
        """
        verifyObject(IReactorTimeAndThreads, MemoryReactor())
        self.assertEqual(
            _twistedInterfaces(IReactorTimeAndThreads), {IReactorTime, IReactorFromThreads}
        )
