"""
What the tests need to run mxrecv for real: a started thread pool, a spool
in a temporary directory, and the callback site listening on 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attrs import evolve, frozen
from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from mxrecv.config import Config, ServerConfig
from mxrecv.spool import Spool
from mxrecv.tap import buildSite

LOOPBACK_ONLY = ("127.0.0.0/8", "::1/128")


def startedPool(case: TestCase) -> ThreadPool:
    pool = ThreadPool(minthreads=1, maxthreads=8, name=case.id())
    pool.start()
    case.addCleanup(pool.stop)
    return pool


def openSpool(case: TestCase, root: Path | None = None, **kwargs: Any) -> Spool:
    """
    An open spool under the test's temporary directory (or C{root}), closed
    at the end of the test.
    """
    if root is None:
        root = Path(case.mktemp())
    spool = Spool(root, reactor=reactor, pool=startedPool(case), **kwargs)
    spool.open()
    case.addCleanup(spool.close)
    return spool


@frozen
class Server:
    url: str
    spool: Spool
    port: Any
    site: Any


def serverConfig(**server: Any) -> Config:
    """
    The default configuration with C{server} keys changed; loopback is
    allowed unless C{allow} is given.
    """
    import ipaddress

    server.setdefault("allow", tuple(ipaddress.ip_network(n) for n in LOOPBACK_ONLY))
    return Config(server=evolve(ServerConfig(), **server))


def startServer(
    case: TestCase,
    spool: Spool | None = None,
    config: Config | None = None,
    siteReactor: Any = reactor,
    **server: Any,
) -> Server:
    """
    Listen on a fresh port of 127.0.0.1 with the callback site; stop at the
    end of the test.
    """
    if spool is None:
        spool = openSpool(case)
    if config is None:
        config = serverConfig(**server)
    site = buildSite(config, spool, siteReactor)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    case.addCleanup(port.stopListening)
    return Server(f"http://127.0.0.1:{port.getHost().port}{config.server.path}", spool, port, site)


SMS = {
    "id": "mx-1",
    "from": "447700900123",
    "to": "80000",
    "date": "2026-11-25 10:30:00",
    "type": "6",
    "network": "vodafone",
    "message": "Hello",
}
