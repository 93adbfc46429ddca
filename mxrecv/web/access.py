# -*- test-case-name: tests.test_access -*-
"""
Which clients may call us: MX Telecom's networks (83.166.68.0/23), or
whatever C{[server] allow} says.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from attrs import frozen
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from mxrecv.config import Network

log = Logger()


@frozen
class AllowList:
    """
    Client networks allowed to call.

    Peers that have no IP address (a UNIX socket behind a local proxy) are
    allowed: only local processes can reach them, and the proxy must do the
    filtering.
    """

    networks: tuple[Network, ...]

    @classmethod
    def of(cls, networks: Iterable[str | Network]) -> AllowList:
        return cls(tuple(ipaddress.ip_network(n) for n in networks))

    def allowsHost(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def allows(self, peer: IAddress) -> bool:
        if isinstance(peer, IPv4Address | IPv6Address):
            return self.allowsHost(peer.host)
        return True


class PeerFilter(Factory):
    """
    Wrap a factory so that connections from clients outside the allow list
    are closed at once, before any protocol (such as a TLS handshake) runs.
    """

    def __init__(self, allow: AllowList, wrapped: Factory) -> None:
        self.allow = allow
        self.wrapped = wrapped

    def logPrefix(self) -> str:
        return self.wrapped.logPrefix()

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def buildProtocol(self, addr: IAddress):
        if not self.allow.allows(addr):
            log.info("Dropped a connection from {client}: address not allowed", client=addr.host)
            return None
        return self.wrapped.buildProtocol(addr)
