# -*- test-case-name: tests.test_workerprocesses -*-
"""
One worker process of a server of several (C{[server] workers}): what is
different from a server of one process.  C{mxrecv.tap} composes it like a
server of one, with these differences, which L{Worker} provides:

    - the configuration, spool lock and listening sockets come from the
      parent (L{mxrecv.workers.control});
    - the spool is opened as this worker's (L{Spool}'s C{worker});
    - the MMS work, delivery and the prune run in the leader only
      (L{mxrecv.workers.leader}); the other workers tell the leader,
      through the parent, of each MMS they accept into C{pending/} and each
      message they commit into C{new/};
    - no admin listener (the parent serves it, for all the workers);
    - each log line names the worker.
"""

from __future__ import annotations

import os
import signal
import sys
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from twisted.application.internet import TimerService
from twisted.application.service import IServiceCollection, Service
from twisted.internet import stdio
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, Logger

from mxrecv.config import Config, loadConfig, parseConfig
from mxrecv.interfaces import IServerReactor
from mxrecv.ops.logs import observerFor
from mxrecv.spool.layout import STATE
from mxrecv.spool.store import Spool
from mxrecv.tls.reload import canHandleSignals
from mxrecv.workers.control import (
    ALIVE,
    CONTROL_FD,
    FIRST_SOCKET_FD,
    LEADER,
    LOCK_FD,
    NEW,
    PARENT_FD,
    PENDING,
    Hello,
    ParentChannel,
    readHello,
)
from mxrecv.workers.gauges import SAMPLE_INTERVAL, GaugeBridge
from mxrecv.workers.leader import FileLeaderLock, Leadership
from mxrecv.workers.logs import CoalescingFile, namedObserver
from mxrecv.workers.sockets import AdoptedEndpoint

log = Logger()

# The file in state/ whose lock makes its holder the leader.
LEADER_FILE = "leader"
# Seconds between two "alive" messages to the parent.
HEARTBEAT = 1.0


class PendingWork(Protocol):
    """
    What the leader's work offers: C{pending} takes up an MMS in
    C{pending/} by name (L{mxrecv.mms.MMSWork}).
    """

    @property
    def pending(self) -> Callable[[str], None]: ...


def configOf(hello: Hello) -> Config:
    """
    The configuration the parent runs.
    """
    if hello.config is None:
        return loadConfig(None)
    return parseConfig(tomllib.loads(hello.config), Path(hello.base))


class Worker:
    """
    This process, as worker L{number} of its server.

    @ivar config: the parent's configuration.
    @ivar endpoints: the listening sockets, in the order of C{[server]
        listen}.
    @ivar leadership: the L{Leadership}, once L{lead} has made it.
    """

    def __init__(self, hello: Hello, reactor: IServerReactor, *, lock: int = LOCK_FD) -> None:
        self.number = hello.worker
        self.config = configOf(hello)
        self.lock = lock
        self.endpoints = [
            AdoptedEndpoint(reactor, FIRST_SOCKET_FD + i, family)
            for i, family in enumerate(hello.families)
        ]
        self._reactor = reactor
        self.stopping = False
        self._work: PendingWork | None = None
        self._spool: Spool | None = None
        self.leadership: Leadership | None = None
        self.channel = ParentChannel(
            {PENDING: self._pendingFromParent, NEW: self._newFromParent}, self._orphaned
        )

    @classmethod
    def join(cls, reactor: IServerReactor) -> Worker:
        """
        The worker its parent started this process as: reads the hello
        from file descriptor 0, blocking.

        @raise SystemExit: if there is none (not started by a parent).
        """
        try:
            hello = readHello(PARENT_FD)
        except (OSError, ValueError) as e:
            raise SystemExit(f"mxrecv: --worker is for the server's own use: {e}") from None
        # A process group of its own: a signal to the parent's group (^C in
        # a terminal) reaches the parent only, which stops its workers in
        # order; the parent's end is noticed on file descriptor 0 anyway.
        os.setpgid(0, 0)
        return cls(hello, reactor)

    @property
    def isLeader(self) -> bool:
        return self.leadership is not None and self.leadership.isLeader

    def attach(self, service: Any) -> None:
        """
        Talk to the parent for as long as C{service} (an
        L{mxrecv.ops.service.MxrecvService}) runs, and sample the collectors
        its metrics watch; call before any of its thread pools is made, so
        that the channel stops last.
        """
        _ChannelService(self, service, self._reactor).setServiceParent(service.threads)
        bridge = GaugeBridge(service.metrics)
        sampling = TimerService(SAMPLE_INTERVAL, bridge.sample)
        sampling.clock = self._reactor
        sampling.setServiceParent(service.threads)

    def lead(
        self,
        parent: IServiceCollection,
        spool: Spool,
        build: Callable[[IServiceCollection], PendingWork],
        *,
        relayNew: bool,
    ) -> Callable[[str], None]:
        """
        Build the leader's work with C{build}, into C{parent}, once this
        worker leads; until then (and in the workers that do not lead),
        tell the leader of each message committed into C{spool}'s C{new/}
        if C{relayNew} (the leader delivers them: C{[deliver]}).

        @return: what takes up an MMS accepted into C{pending/}: the
            leader's work if this worker leads, else a message to the
            leader.
        """
        self._spool = spool
        if relayNew:
            spool.observeNew(self._landed)
        lock = FileLeaderLock(
            spool.dir(STATE) / LEADER_FILE, f"pid {os.getpid()} worker {self.number}"
        )

        def buildWork(into: IServiceCollection) -> PendingWork:
            self._work = build(into)
            return self._work

        self.leadership = Leadership(
            lock,
            buildWork,
            clock=self._reactor,
            elected=lambda: self.channel.send(LEADER),
            fatal=self._fatal,
        )
        self.leadership.setServiceParent(parent)
        return self._pending

    def _pending(self, name: str) -> None:
        if self.isLeader and self._work is not None:
            self._work.pending(name)
        else:
            self.channel.send(PENDING, name)

    def _landed(self, name: str) -> None:
        # The leader's own observers (delivery) have it already.
        if not self.isLeader:
            self.channel.send(NEW, name)

    def _pendingFromParent(self, name: str | None) -> None:
        if name and self.isLeader and self._work is not None:
            self._work.pending(name)

    def _newFromParent(self, name: str | None) -> None:
        if name and self.isLeader and self._spool is not None:
            self._spool.landed(name)

    def _orphaned(self) -> None:
        if self.stopping:
            # The reactor closes the channel as it shuts down.
            return
        log.warn("The parent process is gone: stopping")
        self._stop()

    def _fatal(self) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._reactor.running:
            self._reactor.stop()
        else:
            self._reactor.callWhenRunning(self._reactor.stop)

    def logObserver(self, format: str, secrets: Iterable[str]) -> ILogObserver:
        """
        The log observer of this worker: its events formatted as the parent's
        would be (C{[log] format}, secrets redacted), with this worker's
        number in each (C{worker}; in text, also in its system, as
        C{[NAMESPACE#LEVEL worker=N]}), written to file descriptor 1 for the
        parent to put in its log, several lines at a time
        (L{CoalescingFile}).
        """
        out = CoalescingFile(sys.stdout, self._reactor)
        return namedObserver(observerFor(format, out, secrets), self.number, text=format != "json")


class _ChannelService(Service):
    """
    The worker's side of the channel while it runs: says it is alive, with
    how many callback listeners it has up, every L{HEARTBEAT} seconds.
    """

    def __init__(self, worker: Worker, service: Any, reactor: IServerReactor) -> None:
        self._worker = worker
        self._service = service
        self._reactor = reactor
        self._heartbeat = LoopingCall(self._alive)
        self._heartbeat.clock = reactor

    def startService(self) -> None:
        super().startService()
        if canHandleSignals(self._reactor):
            # The parent passes SIGHUP on to reload certificates: a worker
            # without any (whose reload service sets no handler) ignores it.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        stdio.StandardIO(
            self._worker.channel, stdin=PARENT_FD, stdout=CONTROL_FD, reactor=self._reactor
        )
        self._heartbeat.start(HEARTBEAT, now=True)
        # Once every service has started: the listeners are up.
        self._reactor.callWhenRunning(self._alive)

    def stopService(self) -> None:
        super().stopService()
        self._worker.stopping = True
        if self._heartbeat.running:
            self._heartbeat.stop()

    def _alive(self) -> None:
        site = self._service.site
        self._worker.channel.send(ALIVE, str(site.numPorts if site is not None else 0))
