# -*- test-case-name: tests.test_deliver -*-
"""
Delivery of each message in C{new/} to the application (C{[deliver]}), so
that it need not poll the spool: one queue (L{mxrecv.deliver.queue}) per
target (L{mxrecv.deliver.command}, L{mxrecv.deliver.webhook},
L{mxrecv.deliver.postgresql}), fed here.

How it learns that a message landed: the spool calls its C{new/} observers
(L{mxrecv.spool.store.Spool.observeNew}) after each group commit that renamed a
message into C{new/}, and the MMS completer does the same after its rename;
both happen after the 200 has gone out, and only append a name to a queue,
so delivery never delays an acknowledgement.  At start-up, C{new/} is
scanned for messages not yet delivered (arrived while mxrecv was stopped,
or whose delivery had not succeeded yet), and again every
L{SWEEP_INTERVAL} seconds (for dead letters that C{mxrecv redeliver} put
back, and for anything a queue missed).

Delivery is at least once: a crash between a success and its record means
one more delivery after restart.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, DeferredList, gatherResults, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from mxrecv.config import DeliverConfig
from mxrecv.deliver.command import CommandTarget
from mxrecv.deliver.deadletters import DeadLetters, TargetHealth, targetHealth, targetNames
from mxrecv.deliver.interfaces import ITarget
from mxrecv.deliver.queue import Deliverer, DeliveryState
from mxrecv.deliver.records import Records, Scan
from mxrecv.deliver.schedule import Policy
from mxrecv.deliver.webhook import WebhookTarget
from mxrecv.interfaces import IReactorTimeAndThreads, IServerReactor
from mxrecv.spool.layout import NEW
from mxrecv.spool.store import Spool

log = Logger()

#: Seconds between two scans of C{new/} and of the records.
SWEEP_INTERVAL = 300.0


class DeliveryMetrics(Protocol):
    """
    Where delivery reports (L{mxrecv.ops.metrics.Metrics}).
    """

    def delivery(self, target: str, outcome: str) -> None:
        """
        Count one attempt to deliver a message to C{target}: C{ok},
        C{temporary} or C{permanent}.
        """

    def deliveryState(self, state: DeliveryState) -> None:
        """
        Show one target's queue.
        """


class DeliveryService(Service):
    """
    Feeds each target's L{Deliverer}: as messages land (L{landed}), from a
    scan of C{new/} at start-up and every L{SWEEP_INTERVAL} seconds, and at
    the operator's request (L{redeliver}).  Started and stopped as a unit
    (with several processes, only the leader runs it).

    Targets that are also services (with resources of their own, such as
    connections) are started before delivery starts and stopped once it has.
    """

    def __init__(
        self,
        deliverers: Sequence[Deliverer],
        *,
        records: Records,
        reactor: IReactorTimeAndThreads,
        pool: ThreadPool,
        clock: IReactorTime | None = None,
        sweepInterval: float = SWEEP_INTERVAL,
    ) -> None:
        self.deliverers = list(deliverers)
        self._records = records
        self._reactor = reactor
        self._pool = pool
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._interval = sweepInterval
        self._sweeps: LoopingCall | None = None
        self.deadLetters = DeadLetters(
            records,
            [d.target.name for d in self.deliverers],
            reactor=reactor,
            pool=pool,
            now=self._clock.seconds,
            announce=self.landed,
        )

    def landed(self, name: str) -> None:
        """
        C{new/NAME} has just landed (or was put back by the operator):
        queue it for every target, unless the service is stopped (its next
        start scans C{new/}).
        """
        if not self.running:
            return
        for deliverer in self.deliverers:
            deliverer.add(name)

    def redeliver(self, name: str, target: str | None = None) -> Deferred[list[str]]:
        """
        Put the dead letter C{new/NAME} of C{target} (or of every target)
        back in its queue.

        @return: fires with the targets it was a dead letter of.
        """
        return self.deadLetters.redeliver(name, target)

    def checks(self) -> list[Callable[[], TargetHealth]]:
        """
        A health check per target (L{targetHealth}).
        """
        return [partial(self._check, d) for d in self.deliverers]

    def startService(self) -> None:
        super().startService()
        for service in self._targetServices():
            service.startService()
        scans = [self._scan(d).addBoth(self._start, d) for d in self.deliverers]
        sweeps = self._sweeps = LoopingCall(self.sweep)
        sweeps.clock = self._clock

        def scanned(_: object) -> None:
            if self.running and sweeps is self._sweeps:
                sweeps.start(self._interval, now=False)

        gatherResults(scans).addCallback(scanned).addErrback(
            lambda f: log.failure("Starting delivery", f)
        )

    def _start(self, scanned: tuple[Scan, float] | Failure, deliverer: Deliverer) -> None:
        """
        Start C{deliverer} with what the scan of C{new/} found, unless the
        service stopped meanwhile.  If the scan failed (logged), with
        nothing: what lands is delivered, and the sweeps find what C{new/}
        held.
        """
        if not self.running:
            return
        if isinstance(scanned, Failure):
            scanned = (Scan((), ()), self._clock.seconds())
        deliverer.start(*scanned)

    def sweep(self) -> Deferred[Any]:
        """
        Scan C{new/} and the records again, for every target.
        """
        return DeferredList(
            [
                self._scan(d, d.queued()).addCallback(lambda s, d=d: d.sweep(*s))
                for d in self.deliverers
            ]
        )

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._sweeps is not None and self._sweeps.running:
            self._sweeps.stop()
        self._sweeps = None
        stopped = DeferredList([d.stop() for d in self.deliverers])
        return stopped.addCallback(
            lambda _: DeferredList([maybeDeferred(s.stopService) for s in self._targetServices()])
        )

    def _targetServices(self) -> list[IService]:
        return [d.target for d in self.deliverers if IService.providedBy(d.target)]

    def _check(self, deliverer: Deliverer) -> TargetHealth:
        return targetHealth(
            deliverer.target.name,
            list(deliverer.undeliverable),
            now=self._clock.seconds(),
            backlog=len(deliverer),
            waited=deliverer.waited(),
            failing=deliverer.failing,
        )

    def _scan(
        self, deliverer: Deliverer, known: frozenset[str] = frozenset()
    ) -> Deferred[tuple[Scan, float]]:
        name = deliverer.target.name
        started = self._clock.seconds()
        d = deferToThreadPool(self._reactor, self._pool, self._records.scan, name, known)
        d.addCallback(lambda scan: (scan, started))

        def failed(f: Any) -> Any:
            log.failure("Scanning new/ for the {target}", f, target=name)
            return f

        return d.addErrback(failed)


def webhookTarget(
    config: DeliverConfig, *, reactor: IServerReactor, pool: ThreadPool
) -> WebhookTarget:
    """
    The C{url} target: HTTPS verified against the system's CAs and
    C{ca_file}; a connection per request.

    @raise SystemExit: if the C{ca_file} holds no certificate.
    """
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    from mxrecv.tls.client import tlsPolicy

    assert config.url is not None
    try:
        policy = tlsPolicy(config.ca_file)
    except (OSError, ValueError) as e:
        raise SystemExit(f"mxrecv: deliver.ca_file: {e}") from None
    agent = Agent(
        reactor,
        contextFactory=policy,
        connectTimeout=config.timeout,
        pool=HTTPConnectionPool(reactor, persistent=False),
    )
    if config.secret is None:
        log.warn(
            "[deliver] url without secret_file: the application cannot tell mxrecv's "
            "requests from anyone else's (make one with `mxrecv webhook-secret`)"
        )
    return WebhookTarget(
        config.url,
        client=HTTPClient(agent),
        clock=reactor,
        timeout=config.timeout,
        secret=config.secret,
        reactor=reactor,
        pool=pool,
    )


def checkDelivery(config: DeliverConfig) -> None:
    """
    What a server checks of C{[deliver]} at start-up, before it takes
    callbacks: a server of one process before it opens the spool, the
    parent of several before it starts any worker (not a worker that comes
    to lead, which would only fail, and be started again, for ever).  A
    PostgreSQL database that answers without a schema mxrecv can write to
    stops start-up.

    @raise SystemExit: saying what to do.
    """
    if config.postgresql is not None:
        from mxrecv.deliver.postgresql.target import checkDatabase

        checkDatabase(config)


def buildDelivery(
    config: DeliverConfig,
    *,
    spool: Spool,
    reactor: IServerReactor,
    pool: ThreadPool,
    metrics: DeliveryMetrics,
) -> DeliveryService:
    """
    The delivery service for C{[deliver]}, once L{checkDelivery} has passed
    (in this process, or in the parent of a server of several).
    """
    targets: list[ITarget] = []
    if config.command:
        targets.append(
            CommandTarget(
                config.command,
                reactor=reactor,
                clock=reactor,
                timeout=config.timeout,
                env=os.environ,
                spool=spool.root,
            )
        )
    if config.url is not None:
        targets.append(webhookTarget(config, reactor=reactor, pool=pool))
    if config.postgresql is not None:
        from mxrecv.deliver.postgresql.target import buildTarget

        targets.append(buildTarget(config, reactor=reactor))
    records = Records(spool.root, spool.sync)
    policy = Policy(
        concurrency=config.concurrency,
        maxAttempts=config.max_attempts,
        backoffInitial=config.backoff_initial,
        backoffMax=config.backoff_max,
    )
    deliverers = [
        Deliverer(
            target,
            policy=policy,
            new=spool.dir(NEW),
            records=records,
            reactor=reactor,
            pool=pool,
            clock=reactor,
            onAttempt=metrics.delivery,
            onState=metrics.deliveryState,
        )
        for target in targets
    ]
    service = DeliveryService(deliverers, records=records, reactor=reactor, pool=pool)
    spool.observeNew(service.landed)
    return service


def buildDeadLetters(
    config: DeliverConfig,
    spool: Spool,
    *,
    reactor: IReactorTimeAndThreads,
    pool: ThreadPool,
    announce: Callable[[str], None],
) -> DeadLetters | None:
    """
    The dead letters of C{[deliver]}'s targets, for an admin listener in
    another process than delivery (the parent of C{[server] workers}):
    checked from their records, put back by removing the record and
    C{announce}-ing the name to the leader.  L{None} if nothing is delivered.
    """
    if not config.enabled:
        return None
    return DeadLetters(
        Records(spool.root, spool.sync),
        targetNames(config),
        reactor=reactor,
        pool=pool,
        now=reactor.seconds,
        announce=announce,
    )
