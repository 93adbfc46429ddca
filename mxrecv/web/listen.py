# -*- test-case-name: tests.test_tls -*-
"""
Listening endpoints from the C{[server] listen} strings.

The strings are Twisted endpoint descriptions, so HTTP (and UNIX sockets
behind a proxy) share one code path, as in C{twisted.web.tap}.  C{ssl:}
descriptions keep Twisted's syntax but are built here (L{mxrecv.tls.certificate}): a TCP
port (behind the site's L{mxrecv.web.access.Gate}, which drops clients outside
C{allow} before any TLS work), and TLS with our policy and a certificate that
can be reloaded.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.application.service import Service
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorTCP,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from mxrecv.config import parseListen
from mxrecv.tls.certificate import ReloadableCertificate
from mxrecv.tls.description import TLSFiles, TLSListen
from mxrecv.web.access import Gate

log = Logger()


def gatedListener(
    reactor: IReactorTCP,
    description: str,
    factory: IProtocolFactory,
    *,
    gate: Gate,
    certificates: Mapping[TLSFiles, ReloadableCertificate],
    endpoint: IStreamServerEndpoint | None = None,
) -> Listener:
    """
    A listener for C{factory} on the listen string C{description}, behind
    C{gate}: an C{ssl:} one with its certificate among C{certificates}, its
    TLS inside the gate, so that a client the gate drops costs no
    handshake.  The callback and admin listeners are all made here.

    @param endpoint: where to listen, when not where C{description} says
        (in a worker process, the socket its parent made for it).
    """
    listen = parseListen(description)
    if isinstance(listen, TLSListen):
        factory = tlsFactory(factory, certificates[listen.files])
        if endpoint is None:
            endpoint = tlsEndpoint(reactor, listen)
    elif endpoint is None:
        endpoint = serverFromString(reactor, description)
    return Listener(endpoint, gate.wrap(factory))


def tlsEndpoint(reactor: IReactorTCP, listen: TLSListen) -> IStreamServerEndpoint:
    endpoint = TCP6ServerEndpoint if isIPv6Address(listen.interface) else TCP4ServerEndpoint
    return endpoint(reactor, listen.port, backlog=listen.backlog, interface=listen.interface)


def tlsFactory(site: IProtocolFactory, certificate: ReloadableCertificate) -> IProtocolFactory:
    """
    C{site} behind TLS, with our policy and the reloadable C{certificate};
    to be put behind the site's L{mxrecv.web.access.Gate}, so that a client
    it drops costs no handshake.
    """
    return TLSMemoryBIOFactory(certificate, False, site)


class Listener(Service):
    """
    Listens on an endpoint while running, as Twisted's
    L{StreamServerEndpointService} made by C{strports.service} does (a
    failure to listen that is known at once, as a TCP port's is, is raised
    from C{startService}, so that twistd does not start), with the port it
    listens on in public view.

    @ivar port: the listening port once listening, else L{None}.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None

    def startService(self) -> None:
        super().startService()
        failed: list[Failure] = []
        synchronous = True

        def refused(reason: Failure) -> None:
            self._listening = None
            if synchronous:
                failed.append(reason)
            elif not reason.check(CancelledError):
                log.failure("Cannot listen on {endpoint}", reason, endpoint=self.endpoint)

        self._listening = self.endpoint.listen(self.factory)
        self._listening.addCallbacks(self._listened, refused)
        synchronous = False
        if failed:
            failed[0].raiseException()

    def _listened(self, port: IListeningPort) -> None:
        self.port = port
        self._listening = None

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._listening is not None:
            self._listening.cancel()
            self._listening = None
        port, self.port = self.port, None
        if port is None:
            return None
        return port.stopListening()
