"""
Connections at accept: clients outside C{allow} dropped before anything is
read, caps per client and in total, the open files limit, and a callback
served while thousands of idle connections from outside C{allow} are held.
"""

import ipaddress
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mxrecv.ops.metrics import Metrics
from mxrecv.tls.certificate import ReloadableCertificate, clockTime
from mxrecv.web.access import AllowList, Gate
from mxrecv.web.limits import connectionCap
from mxrecv.web.listen import tlsFactory
from mxrecv.web.service import buildSite

from .certificates import OTHER_CA, connect, issue, trusting, writeFiles
from .running import SMS, client, rawConnection, run, runningConfig, scrape, value
from .support import ChannelWatch, Peer, fileWriters, openSpool, serverConfig, turnsUntil
from .twistd import runTwistd

ROOT = Path(__file__).parent.parent


def connectFrom(port: int, source: str) -> Deferred[Peer]:
    """
    A L{Peer} connected to 127.0.0.1:C{port} from the loopback address
    C{source}: another client, to the server.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
    return connectProtocol(endpoint, Peer())


def dropped(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value(
        "mxrecv_connections_dropped_total", {"reason": reason}
    ) or 0.0


class GateTests(TestCase):
    """
    The gate in front of a real listener: what it lets through is served,
    what it drops is closed at once, before the site makes a channel.
    """

    timeout = 30

    def serve(self, allow=("127.0.0.0/8",), tls=False, **limits):
        config = serverConfig(allow=tuple(ipaddress.ip_network(a) for a in allow))
        self.site = buildSite(config, openSpool(self), reactor, writers=fileWriters(self))
        self.watch = ChannelWatch(self.site)
        self.metrics = Metrics()
        self.clock = Clock()
        self.gate = Gate(AllowList(config.server.allow), events=self.metrics, clock=self.clock, **limits)
        factory = self.site
        if tls:
            files = writeFiles(Path(self.mktemp()), *issue("server"))
            factory = tlsFactory(factory, ReloadableCertificate(files, now=clockTime(reactor)))
        port = reactor.listenTCP(0, self.gate.wrap(factory), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    @inlineCallbacks
    def connect(self, source):
        peer = yield connectFrom(self.port, source)
        self.addCleanup(lambda: None if peer.lost.called else self.close(peer))
        return peer

    def close(self, peer):
        peer.transport.loseConnection()
        return peer.lost

    def gauge(self) -> float:
        return self.metrics.registry.get_sample_value("mxrecv_connections")

    @inlineCallbacks
    def assertDropped(self, source):
        peer = yield self.connect(source)
        yield peer.lost
        self.assertEqual(peer.received, b"")

    @inlineCallbacks
    def assertServed(self, peer):
        peer.transport.write(b"GET /?id=%s&from=1&to=2&date=2026-11-25+10:30:00&type=6 HTTP/1.1\r\nHost: x\r\n\r\n" % os.urandom(4).hex().encode())
        answer = yield peer.waitFor(b"OK\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)

    @inlineCallbacks
    def test_perClient(self):
        """
        A client at its cap has its next connection dropped at accept;
        another client still gets in and is served, and once the first
        closes one, it may connect again.
        """
        self.serve(perClient=2, total=10)
        first = yield self.connect("127.0.0.1")
        yield self.connect("127.0.0.1")
        yield self.watch.connected(2)
        yield self.assertDropped("127.0.0.1")
        other = yield self.connect("127.0.0.3")
        yield self.watch.connected(3)
        yield self.assertServed(other)
        self.assertEqual((self.gate.open, self.gate.clientsOpen("127.0.0.1")), (3, 2))
        self.assertEqual((dropped(self.metrics, "client_limit"), self.gauge()), (1, 3))
        yield self.close(first)
        yield turnsUntil(lambda: self.gate.open == 2)
        again = yield self.connect("127.0.0.1")
        yield self.watch.connected(4)
        yield self.assertServed(again)
        self.assertEqual(len(self.watch.channels), 4)

    @inlineCallbacks
    def test_total(self):
        """
        At the total cap every new connection is dropped at accept, whoever
        it comes from; the ones open are served.
        """
        self.serve(perClient=10, total=2)
        first = yield self.connect("127.0.0.1")
        yield self.connect("127.0.0.3")
        yield self.watch.connected(2)
        yield self.assertDropped("127.0.0.4")
        yield self.assertDropped("127.0.0.1")
        yield self.assertServed(first)
        self.assertEqual((dropped(self.metrics, "total_limit"), self.gauge()), (2, 2))
        self.assertEqual(len(self.watch.channels), 2)

    @inlineCallbacks
    def test_countedOutWhenClosed(self):
        """
        However a connection ends (the client closing it, the server after
        a refusal), it is counted out: nothing leaks.
        """
        self.serve(perClient=5, total=5)
        peers = []
        for source in ("127.0.0.1", "127.0.0.1", "127.0.0.3"):
            peers.append((yield self.connect(source)))
        yield self.watch.connected(3)
        peers[1].transport.write(b"GARBAGE\r\n\r\n")
        yield peers[1].lost
        yield self.close(peers[0])
        yield self.close(peers[2])
        yield turnsUntil(lambda: self.gate.open == 0)
        self.assertEqual((self.gate.clientsOpen("127.0.0.1"), self.gauge()), (0, 0))

    @inlineCallbacks
    def test_countedOutAfterTLSFailures(self):
        """
        Behind an C{ssl:} listener too, a connection is counted out however
        it ends: a client that does not speak TLS, one that refuses the
        server's certificate, one that resets the connection in its
        handshake.
        """
        self.serve(perClient=5, total=5, tls=True)
        plain = yield self.connect("127.0.0.1")
        plain.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        refusing = yield connect(self.port, trusting(OTHER_CA))
        reset = yield self.connect("127.0.0.3")
        yield self.watch.connected(3)
        self.assertEqual(self.gate.open, 3)
        reset.transport.abortConnection()
        yield self.assertFailure(refusing.handshake, SSL.Error)
        yield plain.lost
        yield turnsUntil(lambda: self.gate.open == 0)
        self.assertEqual((self.gate.clientsOpen("127.0.0.1"), self.gauge()), (0, 0))

    @inlineCallbacks
    def test_notAllowedLoggedOncePerMinute(self):
        """
        Clients outside allow are dropped before a channel is made; a flood
        of them is one log line a minute (with how many there were), every
        one of them counted.
        """
        self.serve(allow=("127.0.0.1/32",))
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        for _ in range(3):
            yield self.assertDropped("127.0.0.2")
        self.clock.advance(60)
        yield self.assertDropped("127.0.0.5")
        self.assertEqual(self.watch.channels, [])
        self.assertEqual(dropped(self.metrics, "not_allowed"), 4)
        lines = [e for e in events if e.get("drop") == "not_allowed"]
        self.assertEqual([e["client"] for e in lines], ["127.0.0.2", "127.0.0.5"])
        self.assertEqual(lines[1]["more"], " (and 2 more for the same reason since the last such line)")


class ServiceTests(TestCase):
    """
    The caps of [server], with their metrics, in a whole mxrecv.
    """

    @inlineCallbacks
    def test_capsAndMetrics(self):
        running = run(
            self,
            runningConfig(self, server_max_connections_per_client=1, server_max_connections=5),
        )
        held = yield connectFrom(running.port, "127.0.0.1")
        self.addCleanup(lambda: None if held.lost.called else held.transport.loseConnection())
        refused = yield connectFrom(running.port, "127.0.0.1")
        yield refused.lost
        other = yield rawConnection(running.port, source="127.0.0.3")
        other.transport.write(
            b"GET /?%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % urlencode(SMS).encode()
        )
        yield other.lost
        self.assertTrue(other.received.startswith(b"HTTP/1.1 200 OK\r\n"), other.received)
        samples = yield scrape(running)
        self.assertEqual(
            value(samples, "mxrecv_connections_dropped_total", reason="client_limit"), 1
        )
        self.assertEqual(value(samples, "mxrecv_connections"), 1)


class FileLimitTests(SynchronousTestCase):
    def test_raised(self):
        """
        raiseFileLimit raises the soft limit on open files to the hard one.
        """
        script = (
            "import resource; hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)); "
            "from mxrecv.web.limits import raiseFileLimit; "
            "print(raiseFileLimit(), *resource.getrlimit(resource.RLIMIT_NOFILE), hard)"
        )
        output = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(map(os.path.abspath, sys.path))},
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout.split()
        returned, soft, hard, original = map(int, output)
        self.assertEqual((returned, soft, hard), (original, original, original))

    def test_cap(self):
        """
        The total cap leaves 256 descriptors for the rest and counts two per
        connection (its socket, an upload's file).
        """
        self.assertEqual(connectionCap(4096, 65536), 4096)
        self.assertEqual(connectionCap(4096, 1024), 384)
        self.assertEqual(connectionCap(4096, 100), 1)

    def test_systemdUnit(self):
        """
        The systemd unit gives enough descriptors for the default caps.
        """
        unit = (ROOT / "etc" / "mxrecv.service").read_text()
        [limit] = re.findall(r"^LimitNOFILE=(\d+)$", unit, re.M)
        self.assertEqual(connectionCap(4096, int(limit)), 4096)


class _Holder(ProcessProtocol):
    """
    L{mxrecv.testing.idle} in a process of its own: its JSON lines.
    """

    def __init__(self):
        self.lines = []
        self.waiting = []
        self.buffer = b""
        self.ended = Deferred()

    def outReceived(self, data):
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.lines.append(json.loads(line))
            if self.waiting:
                self.waiting.pop(0).callback(self.lines[-1])

    def errReceived(self, data):
        sys.stderr.write(data.decode(errors="replace"))

    def next(self):
        d = Deferred()
        self.waiting.append(d)
        return d

    def ask(self):
        d = self.next()
        self.transport.write(b"status\n")
        return d

    def processEnded(self, reason):
        self.ended.callback(None)


class IdleFloodTests(TestCase):
    """
    twistd started with the 1024 open files most systems give, allowing
    only 127.0.0.1, while 5,000 connections are opened from other loopback
    addresses and held idle (a client that would have filled its
    descriptors): they are dropped at accept, and a callback is served.
    """

    timeout = 120

    @inlineCallbacks
    def test_servedWhileHeld(self):
        base = Path(self.mktemp()).absolute()
        base.mkdir()
        config = base / "mxrecv.toml"
        config.write_text(
            # A backlog that takes a burst of connections: with Twisted's 50
            # the kernel drops SYNs, and the client takes seconds (of SYN
            # retries) to make them all (bench/bench_idle.py measures both).
            '[server]\nlisten = ["tcp:0:interface=127.0.0.1:backlog=1024"]\n'
            'allow = ["127.0.0.1/32"]\n'
            # Long enough that idle connections would never time out here.
            "header_timeout = 600.0\n"
            f'[spool]\ndir = "{base / "spool"}"\n'
        )
        twistd = runTwistd(self, "--config", str(config), openFiles=1024)
        port = yield twistd.listening
        holder = _Holder()
        settled = holder.next()
        process = reactor.spawnProcess(
            holder,
            sys.executable,
            [sys.executable, "-m", "mxrecv.testing.idle", "--port", str(port), "--count", "5000"],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(map(os.path.abspath, sys.path))},
        )
        self.addCleanup(lambda: holder.ended)
        self.addCleanup(lambda: process.closeStdin() if process.pid else None)
        counts = yield settled
        self.assertEqual(counts["connected"] + counts["failed"], 5000)
        self.assertGreater(counts["connected"], 4900)
        response = yield client().get(f"http://127.0.0.1:{port}/", params=SMS)
        self.assertEqual(response.code, 200)
        self.assertTrue((base / "spool" / "new" / "mx-1" / "message.json").is_file())
        # The server keeps none of them: it closed each one it accepted,
        # and holds few descriptors. (The others were dropped by the kernel
        # when the listen backlog overflowed: their client believes them
        # open, but the server has nothing of them.)
        counts = yield holder.ask()
        self.assertGreater(counts["closedByServer"], 1000)
        self.assertLess(len(os.listdir(f"/proc/{twistd.process.pid}/fd")), 200)
        limits = Path(f"/proc/{twistd.process.pid}/limits").read_text()
        [(soft, hard)] = re.findall(r"^Max open files\s+(\d+)\s+(\d+)", limits, re.M)
        self.assertEqual(soft, hard)
