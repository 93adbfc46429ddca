# -*- test-case-name: tests.test_deliver -*-
"""
Delivery of each message in C{new/} to the application (C{[deliver]}), so
that it need not poll the spool: one queue (L{mxrecv.deliver.queue}) per
target (L{mxrecv.deliver.command}, L{mxrecv.deliver.webhook}), fed here.

How it learns that a message landed: the spool calls its C{new/} observers
(L{mxrecv.spool.store.Spool.observeNew}) after each group commit that renamed a
message into C{new/}, and the MMS completer does the same after its rename;
both happen after the 200 has gone out, and only append a name to a queue,
so delivery never delays an acknowledgement.  At start-up, C{new/} is
scanned for messages not yet delivered (arrived while mxrecv was stopped,
or whose delivery had not succeeded yet), and again every
L{SWEEP_INTERVAL} seconds (for dead letters that C{mxrecv redeliver} put
back, and for messages another process accepted).

Delivery is at least once: a crash between a success and its record means
one more delivery after restart.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from mxrecv.config import DeliverConfig
from mxrecv.deliver.command import CommandTarget
from mxrecv.deliver.interfaces import ITarget
from mxrecv.deliver.queue import Deliverer
from mxrecv.deliver.records import Records, Scan
from mxrecv.deliver.schedule import Policy
from mxrecv.deliver.webhook import WebhookTarget
from mxrecv.message.dates import isoFromTimestamp
from mxrecv.ops.admin import Check
from mxrecv.spool.layout import NEW
from mxrecv.spool.store import Spool

if TYPE_CHECKING:
    from mxrecv.ops.metrics import Metrics

log = Logger()

#: Seconds between two scans of C{new/} and of the records.
SWEEP_INTERVAL = 300.0
#: Dead letters named in a health check's detail.
NAMED = 5


class DeliveryService(Service):
    """
    Feeds each target's L{Deliverer}: as messages land (L{landed}), from a
    scan of C{new/} at start-up and every L{SWEEP_INTERVAL} seconds, and at
    the operator's request (L{redeliver}).  Started and stopped as a unit
    (with several processes, only the leader runs it).
    """

    def __init__(
        self,
        deliverers: Sequence[Deliverer],
        *,
        records: Records,
        reactor: Any,
        pool: ThreadPool,
        clock: IReactorTime | None = None,
        sweepInterval: float = SWEEP_INTERVAL,
    ) -> None:
        self.deliverers = list(deliverers)
        self._records = records
        self._reactor = reactor
        self._pool = pool
        self._clock = clock if clock is not None else reactor
        self._interval = sweepInterval
        self._sweeps: LoopingCall | None = None

    def landed(self, name: str) -> None:
        """
        C{new/NAME} has just landed: queue it for every target (unless the
        service is stopped: its next start scans C{new/}).
        """
        if not self.running:
            return
        for deliverer in self.deliverers:
            deliverer.add(name)

    def startService(self) -> None:
        super().startService()
        scans = [self._scan(d).addCallback(lambda s, d=d: d.start(*s)) for d in self.deliverers]
        self._sweeps = LoopingCall(self.sweep)
        self._sweeps.clock = self._clock
        gatherResults(scans).addCallback(
            lambda _: self._sweeps.start(self._interval, now=False) if self.running else None
        ).addErrback(lambda f: log.failure("Starting delivery", f))

    def sweep(self) -> Deferred[Any]:
        """
        Scan C{new/} and the records again, for every target.
        """
        return DeferredList(
            [self._scan(d).addCallback(lambda s, d=d: d.sweep(*s)) for d in self.deliverers]
        )

    def redeliver(self, name: str, target: str | None = None) -> Deferred[list[str]]:
        """
        Put the dead letter C{new/NAME} of C{target} (or of every target)
        back in its queue.

        @return: fires with the targets it was a dead letter of.
        """
        chosen = [d for d in self.deliverers if target in (None, d.target.name)]
        d = gatherResults([deliverer.redeliver(name) for deliverer in chosen])
        return d.addCallback(
            lambda taken: [c.target.name for c, t in zip(chosen, taken, strict=True) if t]
        )

    def checks(self) -> list[Check]:
        """
        A health check per target (C{delivery.TARGET}), failing while the
        target has dead letters or is failing; they do not make C{/health}
        answer 503: callbacks are still taken, and kept.
        """
        return [_check(d, self._clock.seconds()) for d in self.deliverers]

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._sweeps is not None and self._sweeps.running:
            self._sweeps.stop()
        return DeferredList([d.stop() for d in self.deliverers])

    def _scan(self, deliverer: Deliverer) -> Deferred[tuple[Scan, float]]:
        name = deliverer.target.name
        started = self._clock.seconds()
        d = deferToThreadPool(self._reactor, self._pool, self._records.scan, name)
        d.addCallback(lambda scan: (scan, started))

        def failed(f: Any) -> Deferred[Any]:
            log.failure("Scanning new/ for the {target}", f, target=name)
            return f

        return d.addErrback(failed)


def _check(deliverer: Deliverer, now: float) -> Check:
    parts = []
    waited = deliverer.waited()
    backlog = len(deliverer)
    parts.append(
        f"{backlog} waiting, the oldest for {waited:.0f}s" if waited is not None else "0 waiting"
    )
    failing = deliverer.failing
    if failing is not None:
        parts.append(
            f"failing since {isoFromTimestamp(failing.since)} ({failing.failures} in a row, "
            f"next try in {max(0.0, failing.retryAt - now):.0f}s): {failing.why}"
        )
    dead = sorted(deliverer.undeliverable)
    if dead:
        named = ", ".join(dead[:NAMED]) + (
            f" and {len(dead) - NAMED} more" if len(dead) > NAMED else ""
        )
        parts.append(f"{len(dead)} undeliverable: {named}")
    return Check(
        f"delivery.{deliverer.target.name}",
        failing is None and not dead,
        "; ".join(parts),
        critical=False,
    )


class DeliveryCollector(Collector):
    """
    Per target: messages waiting, how long the oldest has waited, and dead
    letters.  Read at scrape time (in a worker thread).
    """

    def __init__(self, deliverers: Sequence[Deliverer]) -> None:
        self._deliverers = deliverers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        backlog = GaugeMetricFamily(
            "mxrecv_delivery_backlog",
            "Messages in new/ waiting to be delivered to the application, per target.",
            labels=["target"],
        )
        oldest = GaugeMetricFamily(
            "mxrecv_delivery_oldest_seconds",
            "How long the message waiting longest for delivery has waited, per target "
            "(0 if none is).",
            labels=["target"],
        )
        dead = GaugeMetricFamily(
            "mxrecv_delivery_undeliverable",
            "Messages the target refused max_attempts times (dead letters), waiting for "
            "`mxrecv redeliver`.",
            labels=["target"],
        )
        for d in self._deliverers:
            labels = [d.target.name]
            backlog.add_metric(labels, len(d))
            oldest.add_metric(labels, d.waited() or 0.0)
            dead.add_metric(labels, len(d.undeliverable))
        yield backlog
        yield oldest
        yield dead


def buildDelivery(
    config: DeliverConfig, *, spool: Spool, reactor: Any, pool: ThreadPool, metrics: Metrics
) -> DeliveryService:
    """
    The delivery service for C{[deliver]}.
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
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        targets.append(
            WebhookTarget(
                config.url, client=HTTPClient(agent), clock=reactor, timeout=config.timeout
            )
        )
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
        )
        for target in targets
    ]
    metrics.watch(DeliveryCollector(deliverers))
    service = DeliveryService(deliverers, records=records, reactor=reactor, pool=pool)
    spool.observeNew(service.landed)
    return service
