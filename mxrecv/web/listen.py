# -*- test-case-name: tests.test_tls -*-
"""
Listening endpoints from the C{[server] listen} strings.

The strings are Twisted endpoint descriptions, so HTTP (and UNIX sockets
behind a proxy) share one code path, as in C{twisted.web.tap}.  C{ssl:}
descriptions keep Twisted's syntax but are built here (L{mxrecv.tls.certificate}): a TCP
port, a filter that drops clients outside C{allow} before any TLS work, and
TLS with our policy and a certificate that can be reloaded.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import isIPv6Address
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols.tls import TLSMemoryBIOFactory

from mxrecv.tls.certificate import ReloadableCertificate, TLSListen, isTLS, parseTLS
from mxrecv.web.access import AllowList, PeerFilter


def parseListen(description: str) -> str | TLSListen:
    """
    Check a C{listen} string without reading files or listening.

    @return: the L{TLSListen} for an C{ssl:} description, else the string.
    @raise ValueError: naming what is wrong with it.
    """
    try:
        if isTLS(description):
            return parseTLS(description)
        # Building an endpoint does not listen, so no reactor is needed yet.
        serverFromString(None, description)
    except Exception as e:
        raise ValueError(f"bad endpoint {description!r}: {e}") from None
    return description


def tlsEndpoint(reactor: Any, listen: TLSListen) -> IStreamServerEndpoint:
    endpoint = TCP6ServerEndpoint if isIPv6Address(listen.interface) else TCP4ServerEndpoint
    return endpoint(reactor, listen.port, backlog=listen.backlog, interface=listen.interface)


def tlsFactory(
    site: Factory, allow: AllowList, certificate: ReloadableCertificate
) -> Factory:
    """
    C{site} behind TLS, behind the allow list: a client outside C{allow} is
    dropped on connection, before its handshake costs us anything.
    """
    return PeerFilter(allow, TLSMemoryBIOFactory(certificate, False, site))

