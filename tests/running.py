"""
A whole mxrecv, as twistd runs it (L{mxrecv.tap.makeService}), on fresh
ports of 127.0.0.1 with its spool in the test's temporary directory.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from attrs import evolve, frozen
from prometheus_client.parser import text_string_to_metric_families
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from mxrecv.config import AdminConfig, Config, ServerConfig, SpoolConfig
from mxrecv.ops.service import MxrecvService
from mxrecv.tap import Options, makeService

ANY_PORT = ("tcp:0:interface=127.0.0.1",)


@frozen
class Running:
    service: MxrecvService
    url: str
    admin: str
    port: int
    spool: Path

    def stop(self) -> Deferred[None]:
        return self.service.stopService()


def runningConfig(case: TestCase, **tables: Any) -> Config:
    """
    A configuration on fresh ports, loopback allowed, the spool under the
    test's directory; C{tables} override whole tables (C{deliver=...}) or,
    as C{server_KEY=...}, keys of C{[server]}.
    """
    server = {k[len("server_") :]: tables.pop(k) for k in list(tables) if k.startswith("server_")}
    server.setdefault("allow", (ipaddress.ip_network("127.0.0.0/8"),))
    server.setdefault("listen", ANY_PORT)
    tables.setdefault("admin", AdminConfig(listen=ANY_PORT))
    return Config(
        server=evolve(ServerConfig(), **server),
        spool=SpoolConfig(dir=Path(case.mktemp())),
        **tables,
    )


def run(case: TestCase, config: Config) -> Running:
    """
    Make and start the service; stopped at the end of the test unless the
    test stopped it.
    """
    options = Options()
    options["settings"] = config
    service = makeService(options, reactor)
    service.startService()
    case.addCleanup(lambda: service.stopService() if service.running else None)
    port = service.listeners[0].port.getHost().port
    admin = service.adminListeners[0].port.getHost().port if service.adminListeners else 0
    return Running(
        service=service,
        url=f"http://127.0.0.1:{port}{config.server.path}",
        admin=f"http://127.0.0.1:{admin}",
        port=port,
        spool=config.spool.dir,
    )


def client() -> HTTPClient:
    """
    A treq client that closes each connection after its response, so that
    none is left open at the end of a test.
    """
    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


@inlineCallbacks
def scrape(running: Running):
    """
    The admin listener's metrics, as C{{(name, labels): value}}.
    """
    response = yield client().get(running.admin + "/metrics")
    text = yield response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


SMS = {
    "id": "mx-1",
    "from": "447700900123",
    "to": "80000",
    "date": "2026-11-25 10:30:00",
    "type": "6",
    "message": "Hello",
}

MMS = {
    "id": "mms-1",
    "from": "447700900123",
    "to": "80000",
    "date": "2026-11-25 10:30:00",
    "type": "2",
    "subject": "Hi",
}


class _Raw(Protocol):
    """
    Sends bytes as they are given and fires C{headers} with what the server
    answered, once the answer's headers are in.
    """

    def __init__(self) -> None:
        self.received = b""
        self.headers: Deferred[bytes] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"\r\n\r\n" in self.received and not self.headers.called:
            self.headers.callback(self.received)

    def connectionLost(self, reason: Any) -> None:
        if not self.headers.called:
            self.headers.callback(self.received)
        self.lost.callback(None)


def rawConnection(port: int, source: str | None = None) -> Deferred[_Raw]:
    """
    A TCP connection to 127.0.0.1:C{port} for writing requests by hand,
    from the loopback address C{source} if given (127.0.0.2, ... are this
    machine too, but other clients to an allow list).
    """
    bind = (source, 0) if source else None
    return connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=bind), _Raw()
    )
