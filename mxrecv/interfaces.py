# -*- test-case-name: tests.test_interfaces -*-
"""
The reactor interfaces that mxrecv's parts need together.

Each part takes its reactor as a parameter, typed with the narrowest of
Twisted's interfaces that covers what it calls: L{IReactorTime} for a
clock, L{IReactorFromThreads} for a part that only takes results back from
a thread pool, L{IReactorTCP} for a listener.  Python's types have no
intersection, so where a part needs two of them together it names the pair
here, as Twisted names its own (C{twisted.trial._dist.disttrial}'s
C{IDistTrialReactor}, the make-believe C{_IReactorCommon} of
C{twisted.internet.reactor}).

A part that needs more than that pair is a builder that composes several
(C{buildMMS}, C{buildDelivery}, C{buildAdmin}, C{serveCallbacks}, the
worker processes): it takes the whole L{IServerReactor}.

No reactor of Twisted's declares these interfaces (its reactors declare
each of their parents); mxrecv's test reactor
(L{mxrecv.testing.memory.MemoryReactor}) declares L{IReactorTimeAndThreads}.
The global reactor is asserted to be an L{IServerReactor} once, where the
server takes it (L{installedReactor}); tests.test_interfaces checks that it
provides every parent.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFromThreads,
    IReactorProcess,
    IReactorSocket,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
)


class IReactorTimeAndThreads(IReactorTime, IReactorFromThreads):
    """
    The reactor of a part that hands blocking work to a thread pool
    (C{deferToThreadPool}, or C{callInThread} then C{callFromThread}) and
    also keeps time: timeouts, pauses, a call on the next turn.
    """


class IServerReactor(
    IReactorTimeAndThreads, IReactorThreads, IReactorCore, IReactorTCP, IReactorSocket, IReactorProcess
):
    """
    Every reactor interface the server uses as a whole (L{mxrecv.tap}): the
    parts' (time and thread pools, TCP listeners and clients), a worker's
    adopted listening socket, a supervisor's worker processes, start-up and
    shutdown; the simulator (L{mxrecv.testing.sim}) runs on it too.  The
    reactors twistd installs on Linux (epoll, poll, select) provide them
    all.
    """


def installedReactor() -> IServerReactor:
    """
    The global reactor (installed by twistd, or by this import), as the
    server uses it.

    Twisted types it as the make-believe C{_IReactorCommon}, which leaves
    out the thread interfaces that every reactor has; no reactor declares
    L{IServerReactor}, so it is asserted here, once, as Twisted's own
    C{twisted.trial._dist.disttrial._defaultReactor} does for its pair.
    """
    from twisted.internet import reactor

    return cast(IServerReactor, reactor)
