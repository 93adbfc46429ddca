# -*- test-case-name: tests.test_hosts -*-
"""
The names the admin listener's browser pages (the inbox) answer to, in a
request's C{Host} header: the defence against DNS rebinding.

A page of another site, open in an operator's browser, cannot read the
inbox on 127.0.0.1 (another origin) unless its own name comes to point at
127.0.0.1 after it has loaded: it then asks for C{/inbox} as a page of
its own site, and reads the answer.  The browser still sends that name as
C{Host}, so a name that is not one of the listener's own is refused.

An address literal (C{127.0.0.1:9100}, C{[::1]}, the machine's own) is
always answered: a browser only sends one when its page came from that
very address, so it cannot be rebound.  So is C{localhost}, which browsers
resolve to loopback themselves.  Other names (the listener's interface if
it is given as one, a reverse proxy's, C{[admin] hosts}) only when
configured.  A request without C{Host} is no browser's, and is answered.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from http import HTTPStatus

from attrs import frozen
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from mxrecv.config import isHostName

log = Logger()

LOCALHOST = "localhost"

REFUSED = (
    b"This admin listener's pages do not answer to the name in the Host header.\n"
    b"Reach it by an address (127.0.0.1, [::1], its interface's) or localhost;\n"
    b"for a reverse proxy's name, add it to [admin] hosts.\n"
)


def hostName(header: bytes) -> str | None:
    """
    The host of a C{Host} header, without its port, lowercased, without a
    trailing dot (an IPv6 literal without its brackets); L{None} if the
    header is not a host and an optional port.
    """
    try:
        text = header.decode("ascii")
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            return None
        port = port[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    else:
        host, _, port = text.partition(":")
        if not isHostName(host):
            return None
    if port and not (port.isascii() and port.isdigit() and int(port) <= 65535):
        return None
    return host.lower().removesuffix(".")


def _isAddress(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@frozen
class KnownHosts:
    """
    The names the pages answer to, besides address literals.
    """

    names: frozenset[str]

    @classmethod
    def of(cls, names: Iterable[str]) -> KnownHosts:
        return cls(frozenset({LOCALHOST, *(n.lower().removesuffix(".") for n in names)}))

    def knows(self, headers: Sequence[bytes]) -> bool:
        """
        Whether a request with these C{Host} headers may be answered: none,
        or one whose host is an address or a known name.
        """
        if not headers:
            return True
        if len(headers) > 1:
            return False
        host = hostName(headers[0])
        return host is not None and (host in self.names or _isAddress(host))


class HostRequired(Resource):
    """
    C{wrapped}, answered only under a name in C{hosts}; otherwise 421
    (Misdirected Request) in plain text, whatever the method.
    """

    def __init__(self, wrapped: IResource, hosts: KnownHosts) -> None:
        super().__init__()
        self._wrapped = wrapped
        self._hosts = hosts
        self.isLeaf = getattr(wrapped, "isLeaf", False)

    def _known(self, request: IRequest) -> bool:
        return self._hosts.knows(request.requestHeaders.getRawHeaders(b"host", []))

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        if not self._known(request):
            return self
        return self._wrapped.getChildWithDefault(name, request)

    def render(self, request: IRequest) -> bytes | int:
        if self._known(request):
            return self._wrapped.render(request)
        log.warn(
            "Refused admin {method} {path} for Host {host!r}: not one of its names "
            "([admin] hosts)",
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("ascii", "replace"),
            host=b", ".join(request.requestHeaders.getRawHeaders(b"host", [])),
        )
        request.setResponseCode(HTTPStatus.MISDIRECTED_REQUEST)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Cache-Control", b"no-store")
        return REFUSED
