"""
Several worker processes (C{[server] workers}): the parts that can be
tested in one process, in memory (the parent's decisions, leadership, the
messages) or on real sockets and files (the shared sockets, the lock).
"""

import ipaddress
import os
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any
from unittest import mock

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEventAsClassicLogText
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mxrecv.config import (
    Config,
    ConfigError,
    ServerConfig,
    SpoolConfig,
    availableCores,
    parseConfig,
)
from mxrecv.ops.metrics import Metrics
from mxrecv.ops.service import OrderedService
from mxrecv.workers.control import (
    CONTROL_FD,
    FIRST_SOCKET_FD,
    LOCK_FD,
    LOG_FD,
    PARENT_FD,
    Hello,
    Lines,
    parseMessage,
    readHello,
)
from mxrecv.workers.gauges import GaugeBridge
from mxrecv.workers.leader import FileLeaderLock, Leadership
from mxrecv.workers.logs import LOG_DELAY, CoalescingFile, namedObserver
from mxrecv.workers.relay import MAX_WAITING
from mxrecv.workers.restart import RestartPolicy, Restarts
from mxrecv.workers.slot import ALIVE_WITHIN
from mxrecv.workers.sockets import (
    AdoptedEndpoint,
    SharedSocket,
    TCPSocket,
    UNIXSocket,
    socketSpec,
)
from mxrecv.workers.supervisor import STOP_GRACE, buildSupervisor


class WorkersConfigTests(SynchronousTestCase):
    def test_default(self) -> None:
        """
        One process unless configured: the server as it always was.
        """
        self.assertEqual(parseConfig({}).server.workers, 1)

    def test_number(self) -> None:
        self.assertEqual(parseConfig({"server": {"workers": 3}}).server.workers, 3)

    def test_auto(self) -> None:
        """
        C{"auto"} is the number of cores this process may run on.
        """
        with mock.patch("os.sched_getaffinity", return_value={0, 2, 5}):
            self.assertEqual(availableCores(), 3)
            self.assertEqual(parseConfig({"server": {"workers": "auto"}}).server.workers, 3)

    def test_bad(self) -> None:
        for value in (0, -1, True, "2", 1.5, "all"):
            e = self.assertRaises(ConfigError, parseConfig, {"server": {"workers": value}})
            self.assertIn("server.workers", str(e))


class RestartPolicyTests(SynchronousTestCase):
    policy = RestartPolicy(stable=30.0, initial=1.0, maximum=60.0)

    def test_afterRunning(self) -> None:
        """
        A worker that ran for a while is started again at once.
        """
        delay, history = self.policy.after(Restarts(), 3600.0)
        self.assertEqual((delay, history), (0.0, Restarts(total=1, quick=0)))

    def test_diesAtOnce(self) -> None:
        """
        Each death soon after a start, in a row, doubles the wait, up to the
        maximum.
        """
        history = Restarts()
        delays = []
        for _ in range(9):
            delay, history = self.policy.after(history, 0.5)
            delays.append(delay)
        self.assertEqual(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60])
        self.assertEqual(history, Restarts(total=9, quick=9))

    def test_stableAgainResets(self) -> None:
        """
        Once a worker has run for C{stable} seconds, its next death is
        forgiven: started again at once, and the doubling starts over.
        """
        delay, history = self.policy.after(Restarts(total=4, quick=4), 29.9)
        self.assertEqual(delay, 16.0)
        delay, history = self.policy.after(history, 30.0)
        self.assertEqual((delay, history), (0.0, Restarts(total=6, quick=0)))
        delay, history = self.policy.after(history, 0.1)
        self.assertEqual(delay, 1.0)

    def test_manyInARowBounded(self) -> None:
        """
        However many deaths in a row, the wait is the maximum (no overflow).
        """
        delay, _ = self.policy.after(Restarts(total=5000, quick=5000), 0.0)
        self.assertEqual(delay, 60.0)


class MemoryLock:
    """
    A L{LeaderLock} held by someone else until C{free} is set.
    """

    def __init__(self) -> None:
        self.free = False
        self.held = False
        self.tries = 0
        self.events: list[str] = []

    def acquire(self) -> bool:
        self.tries += 1
        if self.free and not self.held:
            self.held = True
            self.events.append("acquired")
        return self.held

    def release(self) -> None:
        self.held = False
        self.events.append("released")


class Recorder(OrderedService):
    def __init__(self, name: str, events: list[str]) -> None:
        super().__init__()
        self.setName(name)
        self._events = events

    def startService(self) -> None:
        super().startService()
        self._events.append(f"start {self.name}")

    def stopService(self):
        self._events.append(f"stop {self.name}")
        return super().stopService()


class LeadershipTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.lock = MemoryLock()
        self.built: list[Any] = []
        self.elected = 0
        self.fatal = 0

    def leadership(self, build=None) -> Leadership:
        def defaultBuild(parent):
            self.built.append(parent)
            Recorder("first", self.lock.events).setServiceParent(parent)
            Recorder("second", self.lock.events).setServiceParent(parent)
            return "work"

        leadership = Leadership(
            self.lock,
            build or defaultBuild,
            clock=self.clock,
            elected=lambda: setattr(self, "elected", self.elected + 1),
            fatal=lambda: setattr(self, "fatal", self.fatal + 1),
            interval=1.0,
        )
        return leadership

    def test_followsUntilFree(self) -> None:
        """
        A follower tries at once and every interval; it takes over at the
        first try after the lock is freed, then builds and starts the work,
        once.
        """
        leadership = self.leadership()
        leadership.startService()
        self.assertEqual(self.lock.tries, 1)
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertEqual((self.lock.tries, leadership.isLeader, self.built), (3, False, []))
        self.lock.free = True
        self.clock.advance(1.0)
        self.assertTrue(leadership.isLeader)
        self.assertEqual(self.built, [leadership])
        self.assertEqual(leadership.work, "work")
        self.assertEqual(self.lock.events, ["acquired", "start first", "start second"])
        self.assertEqual(self.elected, 1)
        self.clock.advance(10.0)
        self.assertEqual((self.lock.tries, self.elected, len(self.built)), (4, 1, 1))

    def test_leaderAtOnce(self) -> None:
        """
        With the lock free at start, the first worker leads before its
        start returns.
        """
        self.lock.free = True
        leadership = self.leadership()
        leadership.startService()
        self.assertTrue(leadership.isLeader)
        self.assertEqual(self.elected, 1)

    def test_stopAsLeader(self) -> None:
        """
        At shutdown the work stops, last built first, and only then is the
        lock let go.
        """
        self.lock.free = True
        leadership = self.leadership()
        leadership.startService()
        d = leadership.stopService()
        self.successResultOf(d)
        self.assertEqual(
            self.lock.events,
            ["acquired", "start first", "start second", "stop second", "stop first", "released"],
        )
        self.assertFalse(leadership.isLeader)

    def test_stopAsFollower(self) -> None:
        """
        A follower that stops tries no more, and lets go of nothing.
        """
        leadership = self.leadership()
        leadership.startService()
        self.successResultOf(leadership.stopService())
        self.lock.free = True
        self.clock.advance(5.0)
        self.assertEqual((self.lock.tries, self.lock.events), (1, []))

    def test_buildFails(self) -> None:
        """
        If the work cannot be built, the lock is let go at once (another
        worker may lead) and the worker is told to give up.
        """

        def build(parent):
            raise SystemExit("mxrecv: retrieve.ca_file: no certificate in it")

        self.lock.free = True
        leadership = self.leadership(build)
        leadership.startService()
        self.assertEqual((leadership.isLeader, self.fatal, self.elected), (False, 1, 0))
        self.assertEqual(self.lock.events, ["acquired", "released"])
        self.assertEqual(len(self.flushLoggedErrors(SystemExit)), 1)

    def test_lockError(self) -> None:
        """
        An error trying the lock (a full file table) is logged; the worker
        keeps trying.
        """
        calls = []

        def acquire():
            calls.append(1)
            if len(calls) == 1:
                raise OSError(24, "Too many open files")
            return True

        self.lock.acquire = acquire  # type: ignore[method-assign]
        leadership = self.leadership()
        leadership.startService()
        self.assertFalse(leadership.isLeader)
        self.clock.advance(1.0)
        self.assertTrue(leadership.isLeader)


class FileLeaderLockTests(SynchronousTestCase):
    def test_oneHolder(self) -> None:
        """
        Two holders of their own open file: one holds the lock, the other
        is refused until it is let go; the file names the holder.
        """
        path = Path(self.mktemp())
        first, second = FileLeaderLock(path, "pid 1 worker 0"), FileLeaderLock(path, "pid 2 worker 1")
        self.addCleanup(first.release)
        self.addCleanup(second.release)
        self.assertTrue(first.acquire())
        self.assertTrue(first.acquire())
        self.assertFalse(second.acquire())
        self.assertEqual(path.read_text(), "pid 1 worker 0\n")
        first.release()
        self.assertTrue(second.acquire())
        self.assertFalse(first.acquire())
        self.assertEqual(path.read_text(), "pid 2 worker 1\n")

    def test_closedOnExec(self) -> None:
        """
        The lock's file is closed on exec: a program the leader runs (a
        delivery command) cannot keep the lock after the leader died.
        """
        path = Path(self.mktemp())
        lock = FileLeaderLock(path, "me")
        self.addCleanup(lock.release)
        lock.acquire()
        self.assertFalse(os.get_inheritable(lock._fd))


class SocketSpecTests(SynchronousTestCase):
    def test_tcp(self) -> None:
        self.assertEqual(
            socketSpec("tcp:8080:interface=127.0.0.1"),
            TCPSocket(socket.AF_INET, "127.0.0.1", 8080),
        )
        self.assertEqual(
            socketSpec("tcp:port=0:backlog=128"), TCPSocket(socket.AF_INET, "", 0, 128)
        )
        self.assertEqual(
            socketSpec("tcp:80:interface=\\:\\:1"), TCPSocket(socket.AF_INET6, "::1", 80)
        )
        self.assertEqual(socketSpec("tcp6:443"), TCPSocket(socket.AF_INET6, "::", 443))

    def test_ssl(self) -> None:
        """
        An C{ssl:} listener's socket is TCP: TLS is the workers' business.
        """
        self.assertEqual(
            socketSpec("ssl:8443:privateKey=k.pem:certKey=c.pem:interface=127.0.0.1"),
            TCPSocket(socket.AF_INET, "127.0.0.1", 8443),
        )

    def test_unix(self) -> None:
        self.assertEqual(socketSpec("unix:/run/mxrecv.sock"), UNIXSocket("/run/mxrecv.sock"))
        self.assertEqual(
            socketSpec("unix:address=/run/m.sock:mode=660:lockfile=0:backlog=10"),
            UNIXSocket("/run/m.sock", 0o660, 10, False),
        )

    def test_refused(self) -> None:
        """
        Endpoints that cannot be shared, and bad values, are refused with
        a reason.
        """
        for description, fragment in [
            ("systemd:domain=INET:index=0", "cannot be shared"),
            ("stdio:", "cannot be shared"),
            ("tcp:8080:colour=blue", "bad tcp"),
            ("tcp:http", "not a number"),
            ("tcp:70000", "out of range"),
            ("unix:/x:mode=rw", "octal"),
        ]:
            e = self.assertRaises(ValueError, socketSpec, description)
            self.assertIn(fragment, str(e), description)

    def test_configChecked(self) -> None:
        """
        With several workers, a listener they cannot share is refused at
        start-up, naming it.
        """
        config = Config(
            server=ServerConfig(listen=("systemd:domain=INET:index=0",), workers=2),
            spool=SpoolConfig(dir=Path(self.mktemp())),
        )
        e = self.assertRaises(
            SystemExit, buildSupervisor, config, None, twistd=None, reactor=MemoryReactorClock()
        )
        self.assertIn("server.listen[0]", str(e))


class Accepted(Protocol):
    def connectionMade(self) -> None:
        self.factory.accepted.append(self)
        self.transport.write(self.factory.greeting)


class Greeter(Factory):
    protocol = Accepted

    def __init__(self, greeting: bytes) -> None:
        self.greeting = greeting
        self.accepted: list[Accepted] = []


class Greeted(Protocol):
    def __init__(self) -> None:
        self.received: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.received.called:
            self.received.callback(data)


class SharedSocketTests(TestCase):
    """
    Real sockets shared by two adopters in one process, as by two workers.
    """

    def socketPath(self) -> str:
        """
        A path for a UNIX socket: short, as they must be (the test's own
        directory may be too deep).
        """
        directory = tempfile.mkdtemp(prefix="mxrecv-")
        self.addCleanup(shutil.rmtree, directory, True)
        return os.path.join(directory, "s")

    def adopt(self, shared: SharedSocket, greeting: bytes) -> tuple[Any, Greeter]:
        factory = Greeter(greeting)
        family = socket.AF_UNIX if isinstance(shared.spec, UNIXSocket) else shared.spec.family
        d = AdoptedEndpoint(reactor, os.dup(shared.fileno()), family).listen(factory)
        port = self.successResultOf(d)
        self.addCleanup(lambda: port.stopListening() if port.connected else None)
        return port, factory

    @inlineCallbacks
    def test_tcpOutlivesAnAdopter(self):
        """
        Both adopters accept from the one socket (port 0 is one port for
        all); when one stops listening, the socket is not shut down for the
        other, which takes the next connections.
        """
        shared = SharedSocket(socketSpec("tcp:0:interface=127.0.0.1"))
        self.addCleanup(shared.close)
        self.assertIsInstance(shared.port, int)
        first, _ = self.adopt(shared, b"first")
        second, secondFactory = self.adopt(shared, b"second")
        yield first.stopListening()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", shared.port)
        client = yield connectProtocol(endpoint, Greeted())
        self.assertEqual((yield client.received), b"second")
        client.transport.loseConnection()
        self.assertEqual(len(secondFactory.accepted), 1)

    @inlineCallbacks
    def test_unixOutlivesAnAdopter(self):
        """
        A UNIX socket: the adopters leave its path and mode alone (the
        parent made them); one stopping neither removes the path nor stops
        the other; the parent's close removes the path.
        """
        path = self.socketPath()
        shared = SharedSocket(socketSpec(f"unix:{path}:mode=600"))
        self.addCleanup(shared.close)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        first, _ = self.adopt(shared, b"first")
        self.adopt(shared, b"second")
        yield first.stopListening()
        self.assertTrue(os.path.exists(path))
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        client = yield connectProtocol(UNIXClientEndpoint(reactor, path), Greeted())
        self.assertEqual((yield client.received), b"second")
        client.transport.loseConnection()
        shared.close()
        self.assertFalse(os.path.exists(path))

    def test_unixStaleRemoved(self):
        """
        As Twisted does with its lock file: a socket that a dead server
        left at the path (with its lock, naming a process that is gone) is
        replaced.
        """
        path = self.socketPath()
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)
        stale.close()
        os.symlink(str(2**22 + 1), path + ".lock")
        shared = SharedSocket(socketSpec(f"unix:{path}"))
        self.addCleanup(shared.close)
        self.assertEqual(shared.port, path)

    def test_portInUse(self):
        """
        A port in use is an error at once, in the parent.
        """
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        port = taken.getsockname()[1]
        self.assertRaises(OSError, SharedSocket, socketSpec(f"tcp:{port}:interface=127.0.0.1"))


class ControlTests(SynchronousTestCase):
    def test_helloRoundTrip(self) -> None:
        hello = Hello(worker=3, config='[server]\nworkers = 4\n', base="/etc/mxrecv", families=(2, 1))
        self.assertEqual(Hello.decode(hello.encode()), hello)

    def test_readHelloStopsAtItsLine(self) -> None:
        """
        The hello is read to its line's end and not a byte further: what
        follows is the reactor's to read.
        """
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        hello = Hello(worker=1, config=None, base="/", families=(2,))
        os.write(w, hello.encode() + b"pending abc\n")
        os.close(w)
        self.assertEqual(readHello(r), hello)
        self.assertEqual(os.read(r, 100), b"pending abc\n")

    def test_readHelloParentGone(self) -> None:
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        os.write(w, b'{"worker": 1')
        os.close(w)
        self.assertRaises(ValueError, readHello, r)

    def test_lines(self) -> None:
        """
        Pieces are gathered into whole lines; a line over the limit comes
        out cut rather than held without bound.
        """
        lines = Lines(limit=10)
        self.assertEqual(lines.feed(b"ali"), b"")
        self.assertEqual(lines.feed(b"ve 1\nlead"), b"alive 1\n")
        self.assertEqual(lines.feed(b"er\npen"), b"leader\n")
        self.assertEqual(lines.feed(b"ding 0123456789"), b"pending 0123456789")
        self.assertEqual(lines.rest(), b"")
        self.assertEqual(parseMessage(b"pending abc"), ("pending", "abc"))
        self.assertEqual(parseMessage(b"leader"), ("leader", None))


class NamedObserverTests(SynchronousTestCase):
    def event(self) -> dict:
        return {
            "log_namespace": "mxrecv.web.resource",
            "log_level": LogLevel.info,
            "log_format": "hello",
            "log_time": 0.0,
        }

    def test_text(self) -> None:
        """
        In text, the worker is named in the line's system, after the usual
        namespace and level.
        """
        seen = []
        namedObserver(seen.append, 2, text=True)(self.event())
        line = formatEventAsClassicLogText(seen[0])
        self.assertIn("[mxrecv.web.resource#info worker=2] hello", line)
        self.assertEqual(seen[0]["worker"], 2)

    def test_json(self) -> None:
        """
        In JSON, the worker is a field of its own; the event is otherwise
        as it was (and the one given is not changed).
        """
        seen = []
        event = self.event()
        namedObserver(seen.append, 0, text=False)(event)
        self.assertEqual(seen[0], {**self.event(), "worker": 0})
        self.assertNotIn("worker", event)


class Pipe:
    """
    What a worker's log goes to (an unbuffered stdout): each write reaches
    the pipe.
    """

    def __init__(self) -> None:
        self.sent: list[str] = []

    def write(self, text: str) -> None:
        self.sent.append(text)

    def flush(self) -> None:
        pass


class ThreadsReactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.fromThreads: list[Any] = []

    def callFromThread(self, f, *args, **kwargs):
        self.fromThreads.append((f, args, kwargs))


class CoalescingFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = ThreadsReactor()
        self.pipe = Pipe()
        self.file = CoalescingFile(self.pipe, self.reactor)

    def test_beforeRunning(self) -> None:
        """
        Before the reactor runs, each line goes out at once.
        """
        self.file.write("one\n")
        self.file.flush()
        self.file.write("two\n")
        self.assertEqual(self.pipe.sent, ["one\n", "two\n"])

    def test_together(self) -> None:
        """
        While it runs, lines go out together, C{delay} seconds after the
        first of them.
        """
        self.reactor.running = True
        for line in ("a\n", "b\n"):
            self.file.write(line)
            self.file.flush()
        self.reactor.advance(LOG_DELAY / 2)
        self.file.write("c\n")
        self.assertEqual(self.pipe.sent, [])
        self.reactor.advance(LOG_DELAY / 2)
        self.assertEqual(self.pipe.sent, ["a\nb\nc\n"])
        self.file.write("d\n")
        self.reactor.advance(LOG_DELAY)
        self.assertEqual(self.pipe.sent, ["a\nb\nc\n", "d\n"])

    def test_bounded(self) -> None:
        """
        What waits is bounded: past the limit, it goes out at once.
        """
        self.file = CoalescingFile(self.pipe, self.reactor, limit=10)
        self.reactor.running = True
        self.file.write("12345\n")
        self.assertEqual(self.pipe.sent, [])
        self.file.write("67890\n")
        self.assertEqual(self.pipe.sent, ["12345\n67890\n"])

    def test_fromAnotherThread(self) -> None:
        """
        A line logged in a worker thread is sent by the reactor, once for
        all the lines until then.
        """
        self.reactor.running = True

        def log() -> None:
            self.file.write("x\n")
            self.file.write("y\n")

        thread = threading.Thread(target=log)
        thread.start()
        thread.join()
        self.assertEqual(len(self.reactor.fromThreads), 1)
        f, args, kwargs = self.reactor.fromThreads[0]
        f(*args, **kwargs)
        self.reactor.advance(LOG_DELAY)
        self.assertEqual(self.pipe.sent, ["x\ny\n"])

    def test_shuttingDown(self) -> None:
        """
        From the reactor's shutdown on, what is buffered goes out, then each
        line at once (the process may end before another turn).
        """
        self.reactor.running = True
        self.file.write("last turn\n")
        [(trigger, args, kwargs)] = self.reactor.triggers["before"]["shutdown"]
        trigger(*args, **kwargs)
        self.assertEqual(self.pipe.sent, ["last turn\n"])
        self.file.write("Server Shut Down.\n")
        self.assertEqual(self.pipe.sent, ["last turn\n", "Server Shut Down.\n"])


class Backlog(Collector):
    def __init__(self) -> None:
        self.sizes = {"command": 3, "url": 0}

    def collect(self):
        family = GaugeMetricFamily("mxrecv_test_backlog", "Waiting.", labels=["target"])
        for target, size in self.sizes.items():
            family.add_metric([target], size)
        yield family
        yield CounterMetricFamily("mxrecv_test_total", "Not a gauge.", value=7)


class GaugeBridgeTests(SynchronousTestCase):
    def test_sampled(self) -> None:
        """
        What a worker's metrics watch is sampled into gauges of the same
        names and labels (counters left alone), again at each sample.
        """
        metrics = Metrics()
        collector = Backlog()
        metrics.watch(collector)
        registry = CollectorRegistry()
        bridge = GaugeBridge(metrics, registry)
        bridge.sample()
        value = registry.get_sample_value
        self.assertEqual(value("mxrecv_test_backlog", {"target": "command"}), 3)
        self.assertEqual(value("mxrecv_test_backlog", {"target": "url"}), 0)
        self.assertIsNone(value("mxrecv_test_total"))
        collector.sizes["url"] = 5
        bridge.sample()
        self.assertEqual(value("mxrecv_test_backlog", {"target": "url"}), 5)


class FakeProcess:
    """
    What the supervisor sees of a worker process it started.
    """

    def __init__(self, pid: int, protocol: Any, argv: list, env: dict, childFDs: dict) -> None:
        self.pid = pid
        self.protocol = protocol
        self.argv = argv
        self.env = env
        self.childFDs = childFDs
        self.written = b""
        self.signals: list[str] = []
        self.ended = False

    def writeToChild(self, fd: int, data: bytes) -> None:
        assert fd == PARENT_FD and not self.ended
        self.written += data

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def say(self, *lines: bytes) -> None:
        self.protocol.childDataReceived(CONTROL_FD, b"".join(line + b"\n" for line in lines))

    def end(self, signal: int | None = None, status: int = 0) -> None:
        self.ended = True
        if signal is None and status == 0:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(status or None, signal))
        self.protocol.processEnded(reason)


class SpawningReactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.processes: list[FakeProcess] = []

    def spawnProcess(self, protocol, executable, args, env=None, childFDs=None, **kw):
        process = FakeProcess(1000 + len(self.processes), protocol, args, env, childFDs)
        self.processes.append(process)
        protocol.makeConnection(process)
        return process


class SupervisorTests(TestCase):
    """
    The parent's decisions, with worker processes it only believes it
    started.
    """

    def setUp(self) -> None:
        self.reactor = SpawningReactor()
        base = Path(self.mktemp()).absolute()
        base.mkdir()
        self.configFile = base / "mxrecv.toml"
        self.configFile.write_text("[server]\nworkers = 2\n")
        self.config = Config(
            server=ServerConfig(
                listen=("tcp:0:interface=127.0.0.1",),
                allow=(ipaddress.ip_network("127.0.0.0/8"),),
                workers=2,
                shutdown_timeout=10.0,
            ),
            spool=SpoolConfig(dir=base / "spool"),
        )
        self.supervisor = buildSupervisor(
            self.config, str(self.configFile), twistd=None, reactor=self.reactor
        )
        self.supervisor.startService()
        self.addCleanup(self.stopped)

    def stopped(self):
        if not self.supervisor.running:
            return None
        d = self.supervisor.stopService()
        for process in self.reactor.processes:
            if not process.ended:
                process.end(signal.SIGTERM)
        return d

    def worker(self, number: int) -> FakeProcess:
        """
        The process running as worker C{number} now.
        """
        return [p for p in self.reactor.processes if p.argv[-1] == str(number) and not p.ended][-1]

    def test_starts(self) -> None:
        """
        Each worker is a twistd of its own, given the spool's lock and the
        listening sockets at fixed descriptors, the metrics directory, and
        the parent's configuration as it read it.
        """
        self.assertEqual(len(self.reactor.processes), 2)
        for number in (0, 1):
            process = self.worker(number)
            self.assertEqual(process.argv[-3:], ["mxrecv", "--worker", str(number)])
            self.assertIn("--nodaemon", process.argv)
            self.assertEqual(process.childFDs[LOCK_FD], self.supervisor._lock)
            self.assertEqual(
                process.childFDs[FIRST_SOCKET_FD], self.supervisor.sockets[0].fileno()
            )
            self.assertEqual(process.childFDs[LOG_FD], "r")
            self.assertEqual(
                process.env["PROMETHEUS_MULTIPROC_DIR"], str(self.supervisor.metricsDir)
            )
            hello = Hello.decode(process.written)
            self.assertEqual(hello.worker, number)
            self.assertEqual(hello.config, "[server]\nworkers = 2\n")
            self.assertEqual(hello.families, (socket.AF_INET,))

    def test_restartAtOnce(self) -> None:
        """
        A worker that dies after running a while is started again at once,
        with the same number.
        """
        self.reactor.advance(3600)
        self.worker(1).end(signal.SIGKILL)
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.processes), 3)
        self.assertEqual(Hello.decode(self.worker(1).written).worker, 1)
        self.assertEqual(self.supervisor.slots[1].restarts.total, 1)

    def test_restartBackoff(self) -> None:
        """
        A worker that dies as soon as it starts waits 1 s, then 2 s, then
        4 s... before each new start.
        """
        starts = []
        for wait in (1.0, 2.0, 4.0):
            self.worker(0).end(status=1)
            count = len(self.reactor.processes)
            self.reactor.advance(wait - 0.01)
            self.assertEqual(len(self.reactor.processes), count)
            self.reactor.advance(0.01)
            self.assertEqual(len(self.reactor.processes), count + 1)
            starts.append(self.reactor.seconds())
        self.assertEqual(starts, [1.0, 3.0, 7.0])

    def test_relayedToLeader(self) -> None:
        """
        Names a worker tells of go to the leader; while none leads they are
        kept, and the next leader gets them when it says it leads.
        """
        zero, one = self.worker(0), self.worker(1)
        hellos = zero.written, one.written
        one.say(b"pending mms-1", b"new sms-1")
        self.assertEqual((zero.written, one.written), hellos)
        zero.say(b"leader")
        self.assertEqual(zero.written[len(hellos[0]) :], b"pending mms-1\nnew sms-1\n")
        one.say(b"new sms-2", b"pending ../escape")
        self.assertEqual(zero.written[len(hellos[0]) :], b"pending mms-1\nnew sms-1\nnew sms-2\n")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_leaderDies(self) -> None:
        """
        When the leader dies, names wait for the next one, which another
        worker becomes.
        """
        zero, one = self.worker(0), self.worker(1)
        zero.say(b"leader")
        self.reactor.advance(60)
        zero.end(signal.SIGKILL)
        self.assertIsNone(self.supervisor.relay.leader)
        one.say(b"pending mms-2")
        one.say(b"leader")
        self.assertTrue(one.written.endswith(b"pending mms-2\n"))
        self.assertIs(self.supervisor.relay.leader, self.supervisor.slots[1])

    def test_waitingBounded(self) -> None:
        """
        While no worker leads, at most L{MAX_WAITING} names are kept.
        """
        one = self.worker(1)
        for i in range(MAX_WAITING + 5):
            self.supervisor.tellLeader("new", f"m{i}")
        one.say(b"leader")
        self.assertEqual(one.written.count(b"\n"), 1 + MAX_WAITING)

    def test_takeUp(self) -> None:
        """
        C{POST /pending/NAME} on the parent's admin listener is for the
        leader.
        """
        zero = self.worker(0)
        zero.say(b"leader")
        self.supervisor.takeUp("mms-3")
        self.assertTrue(zero.written.endswith(b"pending mms-3\n"))

    def test_health(self) -> None:
        """
        The workers' check: up means running, heard from within
        L{ALIVE_WITHIN} seconds and listening on every socket; healthy
        means at least one up and a leader.
        """
        zero, one = self.worker(0), self.worker(1)
        check = self.supervisor.workersCheck()
        self.assertEqual((check.ok, check.detail), (False, "0 of 2 up; no leader"))
        zero.say(b"alive 1", b"leader")
        one.say(b"alive 0")
        check = self.supervisor.workersCheck()
        self.assertEqual((check.ok, check.detail), (True, "1 of 2 up; worker 0 leads"))
        states = check.more["workers"]
        self.assertEqual(
            [(s["worker"], s["pid"], s["up"], s["leader"], s["listening"]) for s in states],
            [(0, zero.pid, True, True, 1), (1, one.pid, False, False, 0)],
        )
        self.reactor.advance(ALIVE_WITHIN + 0.1)
        one.say(b"alive 1")
        check = self.supervisor.workersCheck()
        self.assertEqual(check.detail, "1 of 2 up; worker 0 leads")
        self.assertEqual([s["up"] for s in check.more["workers"]], [False, True])

    def test_hangup(self) -> None:
        """
        SIGHUP is passed on to every worker that is ready; one still
        starting (which may not handle it yet) gets it once ready.
        """
        zero, one = self.worker(0), self.worker(1)
        zero.say(b"alive 1")
        one.say(b"alive 0")
        self.supervisor.hangup()
        self.assertEqual((zero.signals, one.signals), (["HUP"], []))
        one.say(b"alive 1")
        self.assertEqual((zero.signals, one.signals), (["HUP"], ["HUP"]))
        one.say(b"alive 1")
        self.assertEqual(one.signals, ["HUP"])

    def test_hangupBeforeStart(self) -> None:
        """
        A worker started after the last SIGHUP read the renewed files
        itself: it is not sent one.
        """
        self.supervisor.hangup()
        self.reactor.advance(60)
        self.worker(1).end(signal.SIGKILL)
        self.reactor.advance(0)
        self.worker(1).say(b"alive 1")
        self.assertEqual(self.worker(1).signals, [])

    def test_stop(self) -> None:
        """
        On stop the sockets are closed, every worker gets SIGTERM and none
        is started again; the stop ends once all have ended.
        """
        shared = self.supervisor.sockets[0]
        d = self.supervisor.stopService()
        self.assertEqual(shared.socket.fileno(), -1)
        self.assertEqual([p.signals for p in self.reactor.processes], [["TERM"], ["TERM"]])
        self.worker(0).end(signal.SIGTERM)
        self.reactor.advance(100)
        self.assertNoResult(d)
        self.worker(1).end(signal.SIGTERM)
        self.successResultOf(d)
        self.assertEqual(len(self.reactor.processes), 2)
        self.assertIsNone(self.supervisor._lock)

    def test_stopKillsStragglers(self) -> None:
        """
        A worker still running C{shutdown_timeout} plus L{STOP_GRACE}
        seconds after SIGTERM is killed.
        """
        d = self.supervisor.stopService()
        self.worker(0).end(signal.SIGTERM)
        straggler = self.worker(1)
        self.reactor.advance(10.0 + STOP_GRACE - 0.1)
        self.assertEqual(straggler.signals, ["TERM"])
        self.reactor.advance(0.1)
        self.assertEqual(straggler.signals, ["TERM", "KILL"])
        straggler.end(signal.SIGKILL)
        self.successResultOf(d)

    def test_restartCancelledByStop(self) -> None:
        """
        A worker waiting to be started again is not, once the server stops.
        """
        self.worker(0).end(status=1)
        d = self.supervisor.stopService()
        self.worker(1).end(signal.SIGTERM)
        self.successResultOf(d)
        self.reactor.advance(100)
        self.assertEqual(len(self.reactor.processes), 2)
