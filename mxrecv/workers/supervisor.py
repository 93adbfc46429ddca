# -*- test-case-name: tests.test_workerprocesses -*-
"""
The parent of a server of several worker processes (C{[server] workers}
above 1): what twistd runs, and what its pidfile names.

It takes no callback itself.  It claims the spool and makes the listening
sockets, then starts the workers (each a twistd of its own, C{mxrecv
--worker N}, given the sockets and the spool's lock) and:

    - starts a worker again when it dies: at once if it had run for a
      while, else after a wait that doubles with each such death in a row
      (L{mxrecv.workers.restart});
    - on SIGTERM, stops listening and passes the SIGTERM on, and ends once
      every worker has stopped, gracefully (a worker still running
      C{shutdown_timeout} plus L{STOP_GRACE} seconds later is killed);
    - passes SIGHUP on (each worker reloads its certificates) and reloads
      its own copies, which C{/health} checks;
    - passes the leader the names the other workers tell it of (an MMS in
      C{pending/}, a message in C{new/}), keeping them while no worker
      leads;
    - writes the workers' log lines into its own log (one file, one
      rotation), each line naming its worker;
    - serves the admin listener: C{/metrics} sums every worker's counters
      (prometheus-client's multiprocess mode, in C{state/metrics/}), and
      C{/health} adds the workers' check: which are up, which leads.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from twisted.application.service import IServiceCollection, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from twisted.python.threadpool import ThreadPool

from mxrecv.config import Config
from mxrecv.deliver import buildDeadLetters, checkDelivery
from mxrecv.interfaces import IServerReactor
from mxrecv.ops.admin import Check, buildAdmin, deliveryChecks
from mxrecv.ops.logs import installObserver, logFileFor, observerFor
from mxrecv.ops.metrics import SpoolCollector
from mxrecv.ops.service import OrderedService, ThreadPoolService
from mxrecv.spool.layout import STATE
from mxrecv.spool.naming import isName
from mxrecv.spool.store import Spool, SpoolError, SpoolLocked, claimSpool
from mxrecv.tls import loadCertificates
from mxrecv.tls.client import tlsPolicy
from mxrecv.tls.reload import CertificateReloadService, canHandleSignals
from mxrecv.workers.control import (
    ALIVE,
    CONTROL_FD,
    FIRST_SOCKET_FD,
    LEADER,
    LOCK_FD,
    LOG_FD,
    NEW,
    PARENT_FD,
    PENDING,
    STDERR_FD,
    Hello,
    Lines,
    lines,
    parseMessage,
)
from mxrecv.workers.health import WorkersCollector, workersCheck
from mxrecv.workers.relay import Relay
from mxrecv.workers.restart import RestartPolicy
from mxrecv.workers.slot import Slot
from mxrecv.workers.sockets import SharedSocket, familyOf, socketSpec

log = Logger()

# The directory of the workers' metrics files, in state/.
METRICS_DIR = "metrics"
# Seconds after shutdown_timeout that a worker has to end after SIGTERM
# (its commits, its thread pools), before it is killed.
STOP_GRACE = 15.0
# How a worker is started: twistd, as the parent was.
TWISTD = ["-c", "from twisted.scripts.twistd import run; run()"]


class _WorkerProtocol(ProcessProtocol):
    def __init__(self, supervisor: Supervisor, slot: Slot, hello: bytes) -> None:
        self._supervisor = supervisor
        self._slot = slot
        self._hello = hello
        self._log = Lines()
        self._stderr = Lines()
        self._control = Lines()

    def connectionMade(self) -> None:
        self.transport.writeToChild(PARENT_FD, self._hello)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == LOG_FD:
            self._supervisor.workerLog(self._slot, self._log.feed(data))
        elif childFD == STDERR_FD:
            for line in lines(self._stderr.feed(data)):
                self._supervisor.workerStderr(self._slot, line)
        elif childFD == CONTROL_FD:
            for line in lines(self._control.feed(data)):
                self._supervisor.workerSaid(self._slot, *parseMessage(line))

    def processEnded(self, reason: Failure) -> None:
        self._supervisor.workerLog(self._slot, self._log.rest())
        for line in lines(self._stderr.rest()):
            self._supervisor.workerStderr(self._slot, line)
        self._supervisor.workerEnded(self._slot, reason)


class Supervisor(OrderedService):
    """
    The parent process's service (see the module's docstring).

    @ivar sockets: the shared listening sockets, once made.
    @ivar relay: what the leader must hear of, and which worker leads.
    """

    def __init__(
        self,
        config: Config,
        *,
        configText: str | None,
        base: Path,
        lock: int,
        reactor: IServerReactor,
        certificates: Mapping[Any, Any],
        policy: RestartPolicy = RestartPolicy(),
    ) -> None:
        super().__init__()
        self.config = config
        self._configText = configText
        self._base = base
        self._lock: int | None = lock
        self._reactor = reactor
        self._policy = policy
        self.spool = Path(config.spool.dir).absolute()
        self.metricsDir = self.spool / STATE / METRICS_DIR
        self.slots = [Slot(n) for n in range(config.server.workers)]
        self.sockets: list[SharedSocket] = []
        self.relay = Relay()
        self._stopping = False
        self._allEnded: Deferred[None] | None = None
        self._killTimer: IDelayedCall | None = None
        self._previousHangup: Any = None
        self._lastHangup: float | None = None
        self.certificates = list(certificates.values())
        self._reload = CertificateReloadService(
            self.certificates, reactor=reactor, watch=config.tls.watch
        )
        self.logObserver: Any = None
        self._logFile: IO[str] | None = None

    # The log

    def makeLogObserver(self, twistd: Mapping[str, Any] | None) -> ILogObserver | None:
        """
        twistd's observer (L{mxrecv.ops.logs}); the workers' lines go to
        the same file.
        """
        self._logFile = logFileFor(twistd)
        if self._logFile is None:
            return None
        return observerFor(self.config.log.format, self._logFile, [self.config.retrieve.password])

    def workerLog(self, slot: Slot, data: bytes) -> None:
        """
        Whole log lines of a worker, already formatted (and redacted) by it.
        """
        if not data:
            return
        if isinstance(self._logFile, LogFile):
            # As it came: a twistd log file takes bytes, and rotates.
            self._logFile.write(data)
            return
        text = data.decode("utf-8", "replace")
        if self._logFile is not None:
            self._logFile.write(text)
            self._logFile.flush()
        else:
            for line in text.splitlines():
                log.info("{line}", line=line, worker=slot.number)

    def workerStderr(self, slot: Slot, line: bytes) -> None:
        log.warn(
            "Worker {worker} wrote: {line}",
            worker=slot.number,
            line=line.decode("utf-8", "replace"),
        )

    # Start and stop

    def privilegedStartService(self) -> None:
        # Before twistd sheds its privileges: port 443 with --uid.
        for description in self.config.server.listen:
            self.sockets.append(SharedSocket(socketSpec(description)))
        super().privilegedStartService()

    def startService(self) -> None:
        if not self.sockets:
            self.privilegedStartService()
        super().startService()
        log.info(
            "mxrecv spooling to {spool} with {workers} worker processes, listening for "
            "callbacks on {addresses}",
            spool=str(self.spool),
            workers=len(self.slots),
            addresses=", ".join(_address(s) for s in self.sockets),
        )
        self._reload.startService()
        if canHandleSignals(self._reactor):
            self._previousHangup = signal.signal(signal.SIGHUP, self._onHangup)
        for slot in self.slots:
            self._start(slot)

    def setServiceParent(self, parent: IServiceCollection) -> None:
        if self.logObserver is not None:
            installObserver(parent, self.logObserver)
        super().setServiceParent(parent)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        self._stopping = True
        # New clients are refused at once (the workers stop accepting too).
        for s in self.sockets:
            s.close()
        self.sockets = []
        if self._previousHangup is not None:
            signal.signal(signal.SIGHUP, self._previousHangup)
            self._previousHangup = None
        self._reload.stopService()
        for slot in self.slots:
            if slot.restart is not None and slot.restart.active():
                slot.restart.cancel()
            slot.restart = None
            self._signal(slot, "TERM")
        timeout = self.config.server.shutdown_timeout + STOP_GRACE
        self._killTimer = self._reactor.callLater(timeout, self._killAll)
        d = self._whenAllEnded()
        d.addCallback(lambda _: self._stopChildren())
        d.addBoth(self._released)
        return d

    def _stopChildren(self) -> Deferred[None]:
        if self._killTimer is not None and self._killTimer.active():
            self._killTimer.cancel()
        # The admin listeners and the thread pool: last added first.
        return OrderedService.stopService(self)

    def _released(self, result: object) -> object:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        return result

    def _whenAllEnded(self) -> Deferred[None]:
        if all(slot.process is None for slot in self.slots):
            return succeed(None)
        self._allEnded = Deferred()
        return self._allEnded

    def _killAll(self) -> None:
        for slot in self.slots:
            if slot.process is not None:
                log.error(
                    "Worker {worker} (pid {pid}) still running {timeout:g}s after SIGTERM: "
                    "killing it",
                    worker=slot.number,
                    pid=slot.pid,
                    timeout=self.config.server.shutdown_timeout + STOP_GRACE,
                )
                self._signal(slot, "KILL")

    def _signal(self, slot: Slot, name: str) -> None:
        if slot.process is not None:
            try:
                slot.process.signalProcess(name)
            except (ProcessExitedAlready, OSError):
                pass

    def _onHangup(self, signum: int, frame: Any) -> None:
        # Not safe to touch the reactor from a signal handler: hand over.
        self._reactor.callFromThread(self.hangup)

    def hangup(self) -> None:
        """
        SIGHUP: every worker reloads its certificates; so does the parent,
        whose copies C{/health} checks.
        """
        log.info("SIGHUP: passing it on to the workers")
        self._lastHangup = self._reactor.seconds()
        for slot in self.slots:
            if slot.ready:
                self._signal(slot, "HUP")
        if self.certificates:
            self._reload.reload()

    # The workers

    def _start(self, slot: Slot) -> None:
        slot.restart = None
        if self._stopping:
            return
        hello = Hello(
            worker=slot.number,
            config=self._configText,
            base=str(self._base),
            families=tuple(familyOf(s.spec) for s in self.sockets),
        )
        childFDs: dict[int, int | str] = {
            PARENT_FD: "w",
            LOG_FD: "r",
            STDERR_FD: "r",
            CONTROL_FD: "r",
            LOCK_FD: self._lock,  # type: ignore[dict-item]
        }
        for i, s in enumerate(self.sockets):
            childFDs[FIRST_SOCKET_FD + i] = s.fileno()
        protocol = _WorkerProtocol(self, slot, hello.encode())
        argv = [
            sys.executable,
            *TWISTD,
            "--nodaemon",
            "--pidfile=",
            "--logfile=-",
            "mxrecv",
            "--worker",
            str(slot.number),
        ]
        slot.started = self._reactor.seconds()
        slot.reset()
        try:
            slot.process = self._reactor.spawnProcess(
                protocol, sys.executable, argv, env=self._environment(), childFDs=childFDs
            )
        except OSError as e:
            log.error("Cannot start worker {worker}: {error}", worker=slot.number, error=e)
            self._restartLater(slot, 0.0)
            return
        slot.pid = slot.process.pid
        log.info("Worker {worker} started (pid {pid})", worker=slot.number, pid=slot.pid)

    def _environment(self) -> dict[str, str]:
        """
        The parent's environment; the workers import what the parent
        imported, and count into the multiprocess metrics directory.
        """
        path = os.pathsep.join(os.path.abspath(p) for p in sys.path if p)
        return {
            **os.environ,
            "PYTHONPATH": path,
            "PROMETHEUS_MULTIPROC_DIR": str(self.metricsDir),
        }

    def workerEnded(self, slot: Slot, reason: Failure) -> None:
        pid = slot.pid
        slot.process = None
        slot.reset()
        self.relay.ended(slot)
        if pid is not None:
            mark_process_dead(pid, str(self.metricsDir))
        how = _ending(reason)
        if self._stopping:
            log.info("Worker {worker} (pid {pid}) stopped: {how}", worker=slot.number, pid=pid, how=how)
            if self._allEnded is not None and all(s.process is None for s in self.slots):
                done, self._allEnded = self._allEnded, None
                done.callback(None)
            return
        ranFor = self._reactor.seconds() - slot.started
        delay, slot.restarts = self._policy.after(slot.restarts, ranFor)
        log.error(
            "Worker {worker} (pid {pid}) died after {ranFor:.1f}s: {how}; starting it again"
            "{when}",
            worker=slot.number,
            pid=pid,
            ranFor=ranFor,
            how=how,
            when=f" in {delay:g}s" if delay else "",
        )
        self._restartLater(slot, delay)

    def _restartLater(self, slot: Slot, delay: float) -> None:
        slot.restart = self._reactor.callLater(delay, self._start, slot)

    def workerSaid(self, slot: Slot, verb: str, argument: str | None) -> None:
        if verb == ALIVE:
            slot.lastAlive = self._reactor.seconds()
            slot.listening = _count(argument)
            if not slot.ready and slot.listening >= len(self.config.server.listen):
                self._ready(slot)
        elif verb == LEADER:
            self.relay.leads(slot)
        elif verb in (PENDING, NEW) and argument and isName(argument):
            self.tellLeader(verb, argument)
        else:
            log.warn("Unknown message from worker {worker}: {verb}", worker=slot.number, verb=verb)

    def _ready(self, slot: Slot) -> None:
        """
        The worker runs (its reactor, so its signal handlers too) and listens
        on every socket.
        """
        slot.ready = True
        log.info(
            "Worker {worker} (pid {pid}) ready, listening on {count} socket(s)",
            worker=slot.number,
            pid=slot.pid,
            count=slot.listening,
        )
        if self._lastHangup is not None and self._lastHangup >= slot.started:
            # A SIGHUP that came while it was starting, maybe before it
            # could handle one: its certificates may be older than the files.
            self._signal(slot, "HUP")

    def tellLeader(self, verb: str, name: str) -> None:
        """
        Pass a name on to the leader (L{Relay}).
        """
        self.relay.tell(verb, name)

    def takeUp(self, name: str) -> None:
        """
        C{POST /pending/NAME} on the admin listener: for the leader.
        """
        self.tellLeader(PENDING, name)

    # Health

    def workersCheck(self) -> Check:
        return workersCheck(
            self.slots,
            self.relay.leader,
            now=self._reactor.seconds(),
            expected=len(self.config.server.listen),
        )

    def listening(self) -> int:
        return len(self.sockets)


def _address(s: SharedSocket) -> str:
    name = s.socket.getsockname()
    if isinstance(name, str):
        return f"unix:{name}"
    host = f"[{name[0]}]" if ":" in name[0] else name[0]
    return f"{host}:{name[1]}"


def _count(argument: str | None) -> int:
    try:
        return int(argument or 0)
    except ValueError:
        return 0


def _ending(reason: Failure) -> str:
    if reason.check(ProcessDone):
        return "exit status 0"
    value = reason.value
    if getattr(value, "signal", None):
        return f"signal {value.signal}"
    return f"exit status {getattr(value, 'exitCode', '?')}"


def buildSupervisor(
    config: Config,
    configFile: str | None,
    *,
    twistd: Mapping[str, Any] | None,
    reactor: IServerReactor,
) -> Supervisor:
    """
    The parent of a server of C{[server] workers} processes.

    @param configFile: the configuration file the workers run (read now).
    @raise SystemExit: when the server cannot start: a listener that
        workers cannot share, a bad certificate or CA file, a database
        without mxrecv's tables (L{checkDelivery}), the spool in use.
    """
    for i, description in enumerate(config.server.listen):
        try:
            socketSpec(description)
        except ValueError as e:
            raise SystemExit(f"mxrecv: server.listen[{i}]: {e}") from None
    # Checked before anything starts, as by a server of one process (whose
    # leader would otherwise fail, again and again, once a worker leads).
    for key, caFile, used in (
        ("retrieve.ca_file", config.retrieve.ca_file, bool(config.retrieve.user)),
        ("deliver.ca_file", config.deliver.ca_file, config.deliver.url is not None),
    ):
        if used and caFile is not None:
            try:
                tlsPolicy(caFile)
            except (OSError, ValueError) as e:
                raise SystemExit(f"mxrecv: {key}: {e}") from None
    certificates = loadCertificates(
        {"server.listen": config.server.listen, "admin.listen": config.admin.listen},
        warnDays=config.tls.expiry_warning_days,
        reactor=reactor,
    )
    # The leader's delivery never stops on the database: the check is here.
    checkDelivery(config.deliver)
    text = None
    base = Path(".").absolute()
    if configFile is not None:
        path = Path(configFile).absolute()
        text = path.read_text("utf-8")
        base = path.parent
    try:
        lock = claimSpool(
            config.spool.dir,
            sync=config.spool.fsync,
            dedupeSeconds=config.spool.dedupe_days * 86400,
            mode=config.spool.permissions,
        )
    except (OSError, SpoolError, SpoolLocked) as e:
        raise SystemExit(f"mxrecv: cannot open the spool {config.spool.dir}: {e}") from None
    metrics = Path(config.spool.dir).absolute() / STATE / METRICS_DIR
    # The counts of this run only, as in a server of one process.
    shutil.rmtree(metrics, ignore_errors=True)
    metrics.mkdir(mode=0o700)
    supervisor = Supervisor(
        config,
        configText=text,
        base=base,
        lock=lock,
        reactor=reactor,
        certificates=certificates,
    )
    supervisor.logObserver = lambda: supervisor.makeLogObserver(twistd)
    pool = ThreadPool(minthreads=1, maxthreads=2, name="mxrecv-admin")
    ThreadPoolService(pool).setServiceParent(supervisor)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(supervisor.metricsDir))
    # What /health reads (the workers' gauges): their files alone.  Read
    # from the scraped registry, whose collectors describe none of those
    # names, it would run every collector, listing the spool at each check.
    workerSamples = CollectorRegistry()
    MultiProcessCollector(workerSamples, path=str(supervisor.metricsDir))
    spool = Spool(config.spool.dir, reactor=reactor, pool=pool, sync=config.spool.fsync)
    registry.register(SpoolCollector(spool))
    registry.register(WorkersCollector(supervisor.workersCheck))
    deadLetters = buildDeadLetters(
        config.deliver,
        spool,
        reactor=reactor,
        pool=pool,
        announce=lambda name: supervisor.tellLeader(NEW, name),
    )
    buildAdmin(
        config.admin,
        headerTimeout=config.server.header_timeout,
        spool=spool,
        listening=supervisor.listening,
        expected=len(config.server.listen),
        registry=registry,
        reactor=reactor,
        pool=pool,
        takeUp=supervisor.takeUp,
        certificates=certificates,
        parent=supervisor,
        more=[supervisor.workersCheck, *deliveryChecks(deadLetters.checks() if deadLetters else [])],
        redeliver=deadLetters.redeliver if deadLetters else None,
        samples=workerSamples,
    )
    return supervisor


__all__ = ["Supervisor", "buildSupervisor"]
