# -*- test-case-name: tests.test_server -*-
"""
The HTTP edge of a running mxrecv: the callback site, and its listeners
with the drain that lets the callbacks in flight be answered at shutdown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from attrs import frozen
from twisted.application.service import IServiceCollection
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.logger import Logger

from mxrecv.config import Config, ServerConfig
from mxrecv.interfaces import IServerReactor
from mxrecv.spool.store import Spool
from mxrecv.spool.writer import FileWriters
from mxrecv.tls.certificate import ReloadableCertificate
from mxrecv.tls.description import TLSFiles
from mxrecv.web.access import AllowList, ConnectionEvents, Gate
from mxrecv.web.body import BodyChooser
from mxrecv.web.drain import DrainService, InFlight
from mxrecv.web.limits import connectionCap, raiseFileLimit
from mxrecv.web.listen import Listener, gatedListener
from mxrecv.web.multipart import MultipartBody
from mxrecv.web.outcome import CallbackOutcome
from mxrecv.web.request import CallbackSite
from mxrecv.web.resource import CallbackResource

log = Logger()

# Largest urlencoded form body: a callback's parameters are small.
FORM_LIMIT = 1024 * 1024


def buildSite(
    config: Config,
    spool: Spool,
    reactor: IReactorTime,
    onPending: Callable[[str], None] | None = None,
    *,
    writers: FileWriters,
    observe: Callable[[CallbackOutcome], None] = lambda outcome: None,
) -> CallbackSite:
    """
    The web site that takes the callbacks; C{writers} write their uploads.

    @param onPending: called with the name of each MMS accepted into
        C{pending/}.
    @param observe: called with the outcome of each callback (metrics).
    """
    server = config.server
    resource = CallbackResource(
        path=server.path,
        spool=spool,
        zone=server.timezone,
        ack=server.ack,
        clock=reactor,
        observe=observe,
        **({"onPending": onPending} if onPending else {}),
    )
    return CallbackSite(
        resource,
        reactor=reactor,
        maxBody=server.max_body,
        requestTimeout=server.request_timeout,
        headerTimeout=server.header_timeout,
        minBodyRate=server.min_body_rate,
        bodyGrace=server.body_grace,
        chooseBody=BodyChooser(
            min(FORM_LIMIT, server.max_body), multipart=MultipartBody.factory(spool, writers)
        ),
        observe=observe,
    )


def connectionGate(
    server: ServerConfig,
    *,
    reactor: IReactorTime,
    events: ConnectionEvents | None = None,
) -> Gate:
    """
    The L{Gate} of the callback listeners: the C{allow} list and the caps of
    C{[server]}, the total lowered if this process's open files limit
    (raised to its hard limit first) could not hold it.
    """
    files = raiseFileLimit()
    total = connectionCap(server.max_connections, files)
    if total < server.max_connections:
        log.warn(
            "server.max_connections = {configured} lowered to {total}: this process may "
            "only open {files} files (raise its hard limit, LimitNOFILE in systemd)",
            configured=server.max_connections,
            total=total,
            files=files,
        )
    return Gate(
        AllowList(server.allow),
        perClient=server.max_connections_per_client,
        total=total,
        events=events,
        clock=reactor,
    )


@frozen
class Edge:
    """
    The callback site being served.

    @ivar listeners: one per C{[server] listen} string.
    @ivar inFlight: the callbacks being answered.
    """

    listeners: list[Listener]
    inFlight: InFlight


def serveCallbacks(
    server: ServerConfig,
    site: CallbackSite,
    *,
    certificates: Mapping[TLSFiles, ReloadableCertificate],
    reactor: IServerReactor,
    parent: IServiceCollection,
    endpoints: Sequence[IStreamServerEndpoint] | None = None,
    events: ConnectionEvents | None = None,
) -> Edge:
    """
    Listen for callbacks on each C{[server] listen} string (an C{ssl:} one
    with its certificate among C{certificates}, behind the allow list), and
    at shutdown stop listening, then let the callbacks in flight be answered
    for up to C{shutdown_timeout}.

    @param endpoints: where each C{listen} string listens, when not where
        it says: in a worker process, the socket its parent made for it
        (L{mxrecv.workers.sockets.AdoptedEndpoint}).
    @param events: told of the connections let in and dropped at accept
        (the metrics).

    Every listener is behind one L{Gate} (L{connectionGate}), which drops a
    client outside C{allow}, or over the connection caps, at accept.

    The services are added to C{parent} in the order they start, the drain
    first, for a parent that stops them last first (an
    L{mxrecv.ops.service.OrderedService}).
    """
    inFlight = InFlight()
    inFlight.track(site)
    DrainService(inFlight, server.shutdown_timeout, reactor).setServiceParent(parent)
    gate = connectionGate(server, reactor=reactor, events=events)
    listeners = []
    for i, description in enumerate(server.listen):
        listener = gatedListener(
            reactor,
            description,
            site,
            gate=gate,
            certificates=certificates,
            endpoint=None if endpoints is None else endpoints[i],
        )
        listener.setServiceParent(parent)
        listeners.append(listener)
    return Edge(listeners, inFlight)
