# -*- test-case-name: tests.test_connections -*-
"""
Which clients may call us: MX Telecom's networks (83.166.68.0/23), or
whatever C{[server] allow} says; and how many connections they may hold
(L{Gate}, which decides both at accept).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Protocol

from attrs import frozen
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IProtocol, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

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


class ConnectionEvents(Protocol):
    """
    What a L{Gate} reports (the metrics).
    """

    def connectionOpened(self) -> None: ...

    def connectionClosed(self) -> None: ...

    def connectionDropped(self, reason: str) -> None: ...


# Why a connection was dropped at accept: the label values of the metric.
NOT_ALLOWED = "not_allowed"
CLIENT_LIMIT = "client_limit"
TOTAL_LIMIT = "total_limit"
_SAYS = {
    NOT_ALLOWED: "address not allowed",
    CLIENT_LIMIT: "{limit} connections from this client already",
    TOTAL_LIMIT: "{limit} connections open already",
}
# A flood of drops is logged once per this many seconds and reason.
DROP_LOG_INTERVAL = 60.0


class Gate:
    """
    Decides at accept, before the listener's factory builds anything (an
    HTTP channel, a TLS handshake) and before a byte is read, whether a
    connection may go on: its client is in C{allow}, and neither it nor all
    clients together would go over their caps.  Otherwise the connection is
    closed at once, costing a descriptor for a moment only.

    One gate serves all the listeners of a site (L{wrap} each factory), so
    that its caps count their connections together; it works on any stream
    port, adopted ones included.  A client is counted by its IP address (an
    IPv6 one by its /64, which one host usually has); peers without one (a
    UNIX socket behind a local proxy) count towards C{total} only.

    @param perClient: most connections open at once from one client.
    @param total: most connections open at once in all.
    """

    def __init__(
        self,
        allow: AllowList,
        *,
        perClient: int | None = None,
        total: int | None = None,
        events: ConnectionEvents | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self.allow = allow
        self.perClient = perClient
        self.total = total
        self.open = 0
        self._byClient: dict[str, int] = {}
        self._events = events
        self._clock = clock
        # Per reason: when last logged, and drops since.
        self._logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def wrap(self, factory: Factory) -> Factory:
        """
        C{factory} behind this gate, to listen with.
        """
        return _Gated(self, factory)

    def clientsOpen(self, host: str) -> int:
        """
        How many connections from the client at C{host} are open.
        """
        return self._byClient.get(_clientKey(host), 0)

    def _admit(self, addr: IAddress) -> str | None:
        """
        Count a connection from C{addr} in, unless it may not go on.

        @return: the key it is counted under (C{""} for a peer without an
            IP address), or L{None} if it was dropped.
        """
        if not self.allow.allows(addr):
            self._dropped(NOT_ALLOWED, addr, None)
            return None
        key = _clientKey(addr.host) if isinstance(addr, IPv4Address | IPv6Address) else ""
        if self.total is not None and self.open >= self.total:
            self._dropped(TOTAL_LIMIT, addr, self.total)
            return None
        if key and self.perClient is not None and self._byClient.get(key, 0) >= self.perClient:
            self._dropped(CLIENT_LIMIT, addr, self.perClient)
            return None
        self.open += 1
        if key:
            self._byClient[key] = self._byClient.get(key, 0) + 1
        if self._events is not None:
            self._events.connectionOpened()
        return key

    def _release(self, key: str) -> None:
        self.open -= 1
        if key:
            left = self._byClient[key] - 1
            if left:
                self._byClient[key] = left
            else:
                del self._byClient[key]
        if self._events is not None:
            self._events.connectionClosed()

    def _dropped(self, reason: str, addr: IAddress, limit: int | None) -> None:
        if self._events is not None:
            self._events.connectionDropped(reason)
        now = self._clock.seconds() if self._clock is not None else None
        last = self._logged.get(reason)
        if now is not None and last is not None and now - last < DROP_LOG_INTERVAL:
            self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
            return
        if now is not None:
            self._logged[reason] = now
        log.info(
            "Dropped a connection from {client}: {reason}{more}",
            client=getattr(addr, "host", None),
            reason=_SAYS[reason].format(limit=limit),
            drop=reason,
            more=_more(self._unlogged.pop(reason, 0)),
        )


def _more(count: int) -> str:
    if not count:
        return ""
    return f" (and {count} more for the same reason since the last such line)"


def _clientKey(host: str) -> str:
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


class _Gated(Factory):
    """
    A listener's factory behind a L{Gate}.

    @ivar wrapped: the factory that builds the connections let through.
    """

    def __init__(self, gate: Gate, wrapped: Factory) -> None:
        self.gate = gate
        self.wrapped = wrapped

    def logPrefix(self) -> str:
        return self.wrapped.logPrefix()

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:
        gate = self.gate
        key = gate._admit(addr)
        if key is None:
            return None
        try:
            protocol = self.wrapped.buildProtocol(addr)
        except BaseException:
            gate._release(key)
            raise
        if protocol is None:
            gate._release(key)
            return None
        lost = protocol.connectionLost

        def connectionLost(reason: Failure) -> None:
            # Counted out however the connection ends, before its protocol
            # hears of it.
            gate._release(key)
            lost(reason)

        # On the instance: no wrapper protocol between the transport and
        # the channel on every read (the channel sets its transport's read
        # size, pauses it, aborts it, as its own).
        protocol.connectionLost = connectionLost
        return protocol
