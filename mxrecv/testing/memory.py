# -*- test-case-name: tests.test_memory -*-
"""
A reactor and thread pools that run in memory, in the test's own thread,
when the test says: for testing mxrecv's parts (the spool, the HTTP edge,
the MMS work) without real ports, real threads or waiting.

L{MemoryReactor} is Twisted's L{MemoryReactorClock} (time moves when the
test advances it; listening and connecting are recorded, not done) that
also takes the results of worker threads (C{callFromThread}).  A
L{DrivenThreadPool} holds the blocking jobs given to it
(C{deferToThreadPool}) until the test runs them, one at a time or all, so
that a test can stop between any two steps, see what each step does, and
count them.  The jobs are real: they write, fsync and rename real files.

L{exchange} sends an HTTP request to a site over a L{StringTransport} and
settles everything it set going: what twisted.web's own tests do, with the
thread pools and the clock of mxrecv in the loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IAddress, IProtocolFactory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from mxrecv.interfaces import IReactorTimeAndThreads

#: Where an in-memory request comes from unless a test says otherwise.
PEER = IPv4Address("TCP", "127.0.0.1", 40000)


@implementer(IReactorTimeAndThreads)
class MemoryReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} that takes calls from the jobs of a
    L{DrivenThreadPool}: they run in the test's thread, which is this
    reactor's, so C{callFromThread} calls at once.  It is what the parts
    that use a thread pool take (L{IReactorTimeAndThreads}).
    """

    def callFromThread(
        self, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> None:
        callable(*args, **kwargs)


class DrivenThreadPool:
    """
    A stand-in for L{twisted.python.threadpool.ThreadPool} whose jobs run
    only when the test says, in the test's thread, in the order they were
    given.

    @ivar ran: how many jobs have run.
    """

    def __init__(self) -> None:
        self._jobs: deque[tuple[Any, Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = (
            deque()
        )
        self.ran = 0
        self.started = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], None] | None, f: Callable[..., Any], *args: Any,
        **kwargs: Any,
    ) -> None:
        self._jobs.append((onResult, f, args, kwargs))

    def callInThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.callInThreadWithCallback(None, f, *args, **kwargs)

    @property
    def pending(self) -> list[str]:
        """
        The names of the functions of the jobs waiting, in order.
        """
        return [getattr(f, "__name__", repr(f)) for _, f, _, _ in self._jobs]

    def runNext(self) -> str:
        """
        Run the next job; its result goes to whoever waits for it (through
        the reactor's C{callFromThread}).

        @return: the name of its function.
        @raise IndexError: if there is none.
        """
        onResult, f, args, kwargs = self._jobs.popleft()
        self.ran += 1
        try:
            result, ok = f(*args, **kwargs), True
        except BaseException:
            result, ok = Failure(), False
        if onResult is not None:
            onResult(ok, result)
        return getattr(f, "__name__", repr(f))

    def runAll(self, limit: int = 100_000) -> int:
        """
        Run jobs until none waits, those queued meanwhile included.

        @return: how many ran.
        @raise RuntimeError: after C{limit} jobs, if more keep coming.
        """
        count = 0
        while self._jobs:
            if count == limit:
                raise RuntimeError(f"still jobs after {limit}: {self.pending[:5]}")
            self.runNext()
            count += 1
        return count


def settle(reactor: MemoryReactorClock, pools: Iterable[DrivenThreadPool], limit: int = 10_000) -> None:
    """
    Run every job of C{pools} and every call due on C{reactor} (without
    moving its time), until none is left: what a real reactor and real
    threads would do, soon, with nothing more arriving.
    """
    pools = list(pools)
    for _ in range(limit):
        ran = sum(pool.runAll() for pool in pools)
        due = [c for c in reactor.getDelayedCalls() if c.getTime() <= reactor.seconds()]
        if due:
            reactor.advance(0)
        elif not ran:
            return
    raise RuntimeError(f"still busy after {limit} rounds")


def exchange(
    factory: IProtocolFactory,
    data: bytes | Iterable[bytes],
    *,
    reactor: MemoryReactorClock,
    pools: Iterable[DrivenThreadPool] = (),
    peer: IAddress = PEER,
) -> StringTransport:
    """
    Connect to C{factory} (a site) from C{peer} over a L{StringTransport},
    send C{data} (in the pieces given, settling after each), and settle.

    @return: the transport: C{value()} is what the server wrote,
        C{disconnecting} whether it closed the connection.
    """
    pools = list(pools)
    transport = StringTransport(peerAddress=peer)
    protocol = factory.buildProtocol(peer)
    if protocol is None:
        transport.loseConnection()
        return transport
    protocol.makeConnection(transport)
    for piece in [data] if isinstance(data, bytes) else data:
        protocol.dataReceived(piece)
        settle(reactor, pools)
    return transport
