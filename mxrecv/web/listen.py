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

import ipaddress
from typing import Any

from twisted.internet.abstract import isIPv6Address
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
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


def isLoopbackListen(description: str) -> bool:
    """
    Whether a valid C{listen} string can only be reached from this machine:
    TCP on a loopback address, or a UNIX socket.  A wildcard interface (the
    default of C{tcp:PORT}) is not; nor is an endpoint whose address cannot
    be known before it listens (C{systemd:}, ...).
    """
    listen = parseListen(description)
    if isinstance(listen, TLSListen):
        interface = listen.interface
    else:
        endpoint = serverFromString(None, description)
        if isinstance(endpoint, UNIXServerEndpoint):
            return True
        if not isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint):
            return False
        # Twisted keeps the parsed address private; it is "" for all addresses.
        interface = endpoint._interface
    try:
        return ipaddress.ip_address(interface.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


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

