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
or whose delivery had not succeeded yet).

Delivery is at least once: a crash between a success and its record means
one more delivery after restart.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from mxrecv.config import DeliverConfig
from mxrecv.deliver.command import CommandTarget
from mxrecv.deliver.interfaces import ITarget
from mxrecv.deliver.queue import Deliverer
from mxrecv.deliver.records import Records
from mxrecv.deliver.webhook import WebhookTarget
from mxrecv.spool.store import Spool

log = Logger()


class DeliveryMetrics(Protocol):
    """
    Where delivery reports (L{mxrecv.ops.metrics.Metrics}).
    """

    def delivery(self, target: str, ok: bool) -> None:
        """
        Count one attempt to deliver a message to C{target}.
        """

    def watch(self, collector: Collector) -> None:
        """
        Add a collector read at scrape time.
        """


class BacklogCollector(Collector):
    """
    C{mxrecv_delivery_backlog}: messages waiting for delivery, per target.
    """

    def __init__(self, deliverers: Sequence[Deliverer]) -> None:
        self._deliverers = deliverers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "mxrecv_delivery_backlog",
            "Messages in new/ waiting to be delivered to the application, per target.",
            labels=["target"],
        )
        for d in self._deliverers:
            family.add_metric([d.target.name], len(d))
        yield family


class DeliveryService(Service):
    """
    Feeds each target's L{Deliverer}: from the spool's C{new/} observers as
    messages land, and from a scan of C{new/} at start-up.
    """

    def __init__(
        self,
        deliverers: Sequence[Deliverer],
        *,
        spool: Spool,
        records: Records,
        reactor: Any,
        pool: ThreadPool,
    ) -> None:
        self.deliverers = list(deliverers)
        self._records = records
        self._reactor = reactor
        self._pool = pool
        spool.observeNew(self._landed)

    def _landed(self, name: str) -> None:
        for deliverer in self.deliverers:
            deliverer.add(name)

    def startService(self) -> None:
        super().startService()
        for service in self._targetServices():
            service.startService()
        for deliverer in self.deliverers:
            name = deliverer.target.name
            d = deferToThreadPool(self._reactor, self._pool, self._records.undelivered, name)
            d.addCallback(self._scanned, deliverer)
            d.addErrback(
                lambda f, name=name: log.failure("Scanning new/ for the {target}", f, target=name)
            )

    def _scanned(self, names: list[str], deliverer: Deliverer) -> None:
        if names:
            log.info(
                "{count} messages in new/ to deliver to the {target}",
                count=len(names),
                target=deliverer.target.name,
            )
        deliverer.start(names)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        stopped = DeferredList([d.stop() for d in self.deliverers])
        return stopped.addCallback(
            lambda _: DeferredList(
                [maybeDeferred(s.stopService) for s in self._targetServices()]
            )
        )

    def _targetServices(self) -> list[IService]:
        """
        The targets that are also services (those with resources of their
        own, such as connections): started before delivery starts, stopped
        once it has.
        """
        return [d.target for d in self.deliverers if IService.providedBy(d.target)]


def buildDelivery(
    config: DeliverConfig,
    *,
    spool: Spool,
    reactor: Any,
    pool: ThreadPool,
    metrics: DeliveryMetrics,
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
    if config.postgresql is not None:
        from mxrecv.deliver.postgresql.target import buildTarget

        targets.append(buildTarget(config, reactor=reactor))
    records = Records(spool)
    deliverers = [
        Deliverer(
            target,
            spool=spool,
            records=records,
            reactor=reactor,
            pool=pool,
            backoffInitial=config.backoff_initial,
            backoffMax=config.backoff_max,
            onAttempt=metrics.delivery,
        )
        for target in targets
    ]
    metrics.watch(BacklogCollector(deliverers))
    return DeliveryService(deliverers, spool=spool, records=records, reactor=reactor, pool=pool)
