"""
What the tests need to run mxrecv for real: a started thread pool (or one
whose threads a test holds), a spool in a temporary directory, and the
callback site listening on 127.0.0.1.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from attrs import evolve, frozen
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from mxrecv.config import Config, ServerConfig
from mxrecv.message.model import Message, Part
from mxrecv.spool.store import Spool
from mxrecv.spool.writer import FileWriters
from mxrecv.testing.memory import PEER, DrivenThreadPool, MemoryReactor, exchange
from mxrecv.testing.zips import zipOf
from mxrecv.web.access import AllowList, Gate
from mxrecv.web.service import buildSite

LOOPBACK_ONLY = ("127.0.0.0/8", "::1/128")


def startedPool(case: TestCase) -> ThreadPool:
    pool = ThreadPool(minthreads=1, maxthreads=8, name=case.id())
    pool.start()
    case.addCleanup(pool.stop)
    return pool


def fileWriters(case: TestCase, **limits: Any) -> FileWriters:
    """
    Upload writers on a started pool of their own, with the default
    limits unless C{limits} are given.
    """
    return FileWriters(reactor=reactor, pool=startedPool(case), **limits)


class GatedPool:
    """
    A real thread pool whose threads can be held busy, so that the writer
    of an upload or a download falls behind for as long as a test wants.
    """

    def __init__(self, case, threads=2):
        self.pool = ThreadPool(minthreads=threads, maxthreads=threads, name=case.id())
        self.pool.start()
        self.gate = threading.Event()
        self.threads = threads
        case.addCleanup(self.pool.stop)
        case.addCleanup(self.gate.set)

    def hold(self):
        self.gate.clear()
        for _ in range(self.threads):
            self.pool.callInThread(self.gate.wait)

    def release(self):
        self.gate.set()


@inlineCallbacks
def runJobs(pool: DrivenThreadPool, *names: str) -> Any:
    """
    Run the jobs named (the names of the functions queued in C{pool}), in
    this order, each once it is queued (letting the reactor turn
    meanwhile): the test can stop a sequence of blocking steps between any
    two of them (and "crash" there).
    """
    for name in names:
        yield turnsUntil(lambda: pool.pending)
        if pool.pending[0] != name:
            raise AssertionError(f"the next job is {pool.pending[0]}, not {name}")
        pool.runNext()


def serveLoopback(
    case: TestCase, site: Any, tls: Any = None, names: tuple[str, ...] = ("127.0.0.1",)
) -> str:
    """
    Serve C{site} on a fresh port of 127.0.0.1, stopped at the end of the
    test: over TLS if C{tls} (a L{tests.retrievemms.TestCA}) is given, with
    a certificate for C{names}.

    @return: the URL of its root, without the final slash.
    """
    if tls is None:
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        scheme = "http"
    else:
        port = reactor.listenSSL(0, site, tls.serverOptions(*names), interface="127.0.0.1")
        scheme = "https"
    case.addCleanup(port.stopListening)
    return f"{scheme}://127.0.0.1:{port.getHost().port}"


def openFiles(directory: Path):
    """
    The files under C{directory} (an absolute path) this process has open.
    """
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


@inlineCallbacks
def turnsUntil(predicate: Any, limit: int = 100_000) -> Any:
    """
    Let the reactor go round (its I/O included, with no wait on time) until
    C{predicate()} is true; fail after C{limit} turns.
    """
    for _ in range(limit):
        if predicate():
            return
        yield deferLater(reactor, 0, lambda: None)
    raise AssertionError(f"{predicate} still false after {limit} turns of the reactor")


@inlineCallbacks
def reactorTurns(count: int) -> Any:
    """
    Let the reactor go round C{count} times (its I/O included, with no wait
    on time).
    """
    for _ in range(count):
        yield deferLater(reactor, 0, lambda: None)


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
    onPending: Any = None,
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
    site = buildSite(config, spool, siteReactor, onPending, writers=fileWriters(case))
    port = listenGated(case, site, config)
    return Server(f"http://127.0.0.1:{port.getHost().port}{config.server.path}", spool, port, site)


class MemoryServer:
    """
    The callback site in memory: its spool (real files under the test's
    directory) and its upload writers on pools the test drives, its clock
    a L{MemoryReactor}; requests go over a StringTransport
    (L{mxrecv.testing.memory.exchange}).  No port, no thread, no waiting.
    """

    def __init__(
        self, case: TestCase, config: Config | None = None, onPending: Any = None, **server: Any
    ) -> None:
        self.reactor = MemoryReactor()
        self.pool = DrivenThreadPool()
        self.uploads = DrivenThreadPool()
        self.spool = Spool(Path(case.mktemp()), reactor=self.reactor, pool=self.pool)
        self.spool.open()
        case.addCleanup(self.spool.close)
        self.config = serverConfig(**server) if config is None else config
        self.site = buildSite(
            self.config,
            self.spool,
            self.reactor,
            onPending,
            writers=FileWriters(reactor=self.reactor, pool=self.uploads),
        )

    def exchange(self, data: bytes | list[bytes], peer: Any = PEER) -> StringTransport:
        """
        Send C{data} on a new connection and settle: the transport holds the
        answer.
        """
        return exchange(
            self.site, data, reactor=self.reactor, pools=[self.pool, self.uploads], peer=peer
        )

    def get(self, params: dict[str, str], path: str = "/") -> Answer:
        """
        A GET callback with C{params} in its query string, answered.
        """
        query = urlencode(params).encode()
        return Answer.parse(
            self.exchange(b"GET %s?%s HTTP/1.1\r\nHost: x\r\n\r\n" % (path.encode(), query))
        )


@frozen
class Answer:
    """
    An HTTP answer as written to a transport.
    """

    code: int
    headers: dict[bytes, bytes]
    body: bytes
    closed: bool

    @classmethod
    def parse(cls, transport: StringTransport) -> Answer:
        head, _, body = transport.value().partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = dict(line.split(b": ", 1) for line in lines[1:] if b": " in line)
        return cls(int(lines[0].split()[1]), headers, body, bool(transport.disconnecting))
def listenGated(case: TestCase, site: Any, config: Config) -> Any:
    """
    Listen on a fresh port of 127.0.0.1 with C{site} behind the allow list
    of C{config}, as the server listens (without its connection caps);
    stop at the end of the test.
    """
    gate = Gate(AllowList(config.server.allow))
    port = reactor.listenTCP(0, gate.wrap(site), interface="127.0.0.1")
    case.addCleanup(port.stopListening)
    return port


SMS = {
    "id": "mx-1",
    "from": "447700900123",
    "to": "80000",
    "date": "2026-11-25 10:30:00",
    "type": "6",
    "network": "vodafone",
    "message": "Hello",
}


class _RawClient(Protocol):
    """
    Sends bytes and collects the answer until one whole HTTP response (with
    a Content-Length) has arrived or the server closes the connection.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        head, sep, body = self.received.partition(b"\r\n\r\n")
        if sep and not head.startswith(b"HTTP/1.1 100 "):
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length" and len(body) >= int(value):
                    self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.received)


def rawExchange(port: Any, data: bytes) -> Deferred[bytes]:
    """
    Connect to C{port} on 127.0.0.1, send C{data} as it is, and fire with
    everything the server answered.
    """
    client = _RawClient(data)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    return connectProtocol(endpoint, client).addCallback(lambda _: client.done)


class Peer(Protocol):
    """
    A client that writes what the test gives it, when it gives it, and
    collects what the server answers.
    """

    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred[None] = Deferred()
        self._waiting: list[tuple[bytes, int, Deferred[bytes]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for marker, count, d in list(self._waiting):
            if self.received.count(marker) >= count:
                self._waiting.remove((marker, count, d))
                d.callback(self.received)

    def waitFor(self, marker: bytes, count: int = 1) -> Deferred[bytes]:
        """
        Fire with all that was received once C{marker} is in it C{count}
        times (or the connection is lost).
        """
        d: Deferred[bytes] = Deferred()
        self._waiting.append((marker, count, d))
        self.dataReceived(b"")
        return d

    def connectionLost(self, reason: Any = None) -> None:
        for _, _, d in self._waiting:
            d.callback(self.received)
        self._waiting = []
        self.lost.callback(None)


def connectPeer(port: Any) -> Deferred[Peer]:
    """
    A L{Peer} connected to C{port} on 127.0.0.1.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    return connectProtocol(endpoint, Peer())


class ChannelWatch:
    """
    What a site's connections have had from their clients, so that a test
    that drives the site's clock moves it only once the server has had what
    the client sent.  It replaces the site's C{protocol} by a subclass that
    counts; the site must not have a connection yet.

    @ivar channels: the site's channels, as they are made.
    @ivar received: bytes handed to them, in all.
    """

    def __init__(self, site: Any) -> None:
        self.channels: list[Any] = []
        self.received = 0
        self._waiting: list[tuple[Callable[[], bool], Deferred[None]]] = []
        watch = self

        class Watched(site.protocol):  # type: ignore[name-defined, misc]
            def connectionMade(self) -> None:
                super().connectionMade()
                watch.channels.append(self)
                watch._check()

            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                watch.received += len(data)
                watch._check()

        site.protocol = Watched

    def connected(self, count: int = 1) -> Deferred[None]:
        """
        Fire once C{count} connections are made.
        """
        return self._when(lambda: len(self.channels) >= count)

    def hasReceived(self, count: int) -> Deferred[None]:
        """
        Fire once C{count} bytes in all have been handed to the channels.
        """
        return self._when(lambda: self.received >= count)

    def _when(self, condition: Callable[[], bool]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append((condition, d))
        self._check()
        return d

    def _check(self) -> None:
        for condition, d in list(self._waiting):
            if condition():
                self._waiting.remove((condition, d))
                d.callback(None)


class DeadlineClock(Clock):
    """
    A Clock that says when something is scheduled C{delay} seconds ahead: the
    request deadline, which a test then makes pass.
    """

    def __init__(self, delay: float) -> None:
        super().__init__()
        self._delay = delay
        self.scheduled: Deferred[None] = Deferred()

    def callLater(self, delay: float, f: Any, *args: Any, **kw: Any) -> Any:
        call = super().callLater(delay, f, *args, **kw)
        if delay == self._delay and not self.scheduled.called:
            self.scheduled.callback(None)
        return call


def httpClient(case: TestCase) -> HTTPClient:
    """
    A treq client with its own connection pool, closed at the end of the test
    so that no connection outlives it.
    """
    pool = HTTPConnectionPool(reactor)
    case.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(reactor, pool=pool))


def exampleMessage(**changes: Any) -> Message:
    """
    A valid message as the callback would build it: an SMS unless
    C{changes} say otherwise.
    """
    fields: dict[str, Any] = {
        "id": "mx-1",
        "type": "sms",
        "sender": "447700900123",
        "to": ("80000",),
        "date": "2026-11-25 10:30:00",
        "delivery": "get",
        "received": "2026-11-25T10:30:01.000Z",
        "message": "Hello",
        "charset": "utf-8",
    }
    if changes.get("type") == "mms":
        fields.update(message=None, charset=None)
    return Message(**{**fields, **changes})


def acceptMMS(
    spool: Spool, message: Message, parts: Mapping[str, tuple[bytes, str]]
) -> Deferred[Any]:
    """
    Accept C{message} into new/ as an MMS whose C{parts} (by name: data and
    content type) are unpacked.
    """
    staging = spool.stage()
    (staging.path / "parts").mkdir()
    recorded = []
    for name, (data, contentType) in parts.items():
        (staging.path / "parts" / name).write_bytes(data)
        recorded.append(
            Part(name=name, path=f"parts/{name}", size=len(data), content_type=contentType)
        )
    message = message.replace(type="mms", message=None, charset=None, parts=tuple(recorded))
    return spool.accept(message, "new", staging)


def smallFilesystem(case: TestCase, size: str) -> Path:
    """
    A real filesystem of C{size} (a tmpfs, e.g. "256k") to fill up, mounted
    for the test; skips where mounting is not allowed (it needs root).
    """
    import subprocess

    from twisted.trial.unittest import SkipTest

    root = Path(case.mktemp())
    root.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root)]
    if subprocess.run(mount, capture_output=True).returncode:
        raise SkipTest("cannot mount a small tmpfs here (needs root)")
    case.addCleanup(subprocess.run, ["umount", "-l", str(root)])
    return root


def fillUp(root: Path, leave: int = 0) -> Path:
    """
    Fill the filesystem at C{root} with a file, then free C{leave} bytes of
    it (a multiple of the page size); return the file, to unlink for room.
    """
    filler = root / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
    if leave:
        os.truncate(filler, filler.stat().st_size - leave)
    return filler


BOUNDARY = "mxrecv-test-d41d8cd98f00b204e9800998ecf8427e"

#: The zip of a POST-mode MMS: a SMIL, a picture and a text part.
MMS_ZIP = zipOf(
    [
        ("mms.smil", b'<smil><body><par><img src="photo.jpg"/><text src="text.txt"/></par></body></smil>'),
        ("photo.jpg", b"\xff\xd8\xff\xe0jpeg"),
        ("text.txt", b"Hi there"),
    ]
)


def mmsFields(messageId="mms-1"):
    return [
        ("id", messageId.encode()),
        ("from", b"447700900123"),
        ("to", b"80000"),
        ("to", b"80001"),
        ("date", b"2026-11-25 10:30:00 +0000"),
        ("type", b"2"),
        ("subject", b"Photo"),
        ("expiry", b"2026-11-27 10:30:00"),
    ]


def sms(messageId: str, received: str = "2026-11-25T10:30:01.000Z") -> Message:
    return Message(
        id=messageId,
        type="sms",
        sender="447700900123",
        to=("80000",),
        date="2026-11-25 10:30:00",
        delivery="get",
        received=received,
        message="Hello",
        charset="utf-8",
    )


class LogWatch:
    """
    Collects every log event, and fires Deferreds on the ones asked for
    (in a later turn of the reactor, so that the test goes on once the code
    that logged has finished its step).
    """

    def __init__(self) -> None:
        self.events: list[dict] = []
        self._waiting: list[tuple[object, Deferred]] = []

    def __call__(self, event: dict) -> None:
        self.events.append(event)
        for entry in self._waiting:
            if entry[0](event):
                self._waiting.remove(entry)
                reactor.callLater(0, entry[1].callback, event)
                break

    def next(self, predicate) -> Deferred[dict]:
        d: Deferred[dict] = Deferred()
        self._waiting.append((predicate, d))
        return d

    def text(self) -> str:
        """
        Everything logged, formatted, with the tracebacks.
        """
        pieces = []
        for event in self.events:
            pieces.append(formatEvent(event))
            pieces.append(repr(event))
            failure = event.get("log_failure")
            if failure is not None:
                pieces.append(failure.getTraceback())
        return "\n".join(pieces)
