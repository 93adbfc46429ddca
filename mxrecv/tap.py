# -*- test-case-name: tests.test_tap -*-
"""
The twistd plugin's options and service: where the parts are put together.

    twistd -n mxrecv --config etc/mxrecv.toml

Each subsystem builds its own part (its package exports the builder); this
module only composes them, layer by layer (L{MxrecvService}): the thread
pools, the spool, the MMS and delivery work, and the edge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import IServiceCollection, Service
from twisted.logger import ILogObserver, Logger
from twisted.python import usage

from mxrecv.config import Config, ConfigError, loadConfig
from mxrecv.deliver import buildDelivery, checkDelivery
from mxrecv.interfaces import IServerReactor, installedReactor
from mxrecv.mms import MMSWork, buildMMS
from mxrecv.ops import MxrecvService, buildAdmin
from mxrecv.ops.logs import logFileFor, observerFor
from mxrecv.ops.metrics import SpoolCollector
from mxrecv.spool import IO_THREADS, UPLOAD_THREADS, PruneService, SpoolService, openSpool
from mxrecv.spool.writer import FileWriters
from mxrecv.tls import loadCertificates, reloadCertificates
from mxrecv.web import buildSite, serveCallbacks
from mxrecv.workers import Worker, buildSupervisor

log = Logger()


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = (
        "Receive MX Telecom's SMS and MMS callbacks into a Maildir-like spool. "
        "Without --config, every setting has its default (listen on "
        "127.0.0.1:8080, spool in var/spool)."
    )
    optParameters = [
        ["config", "c", None, "The TOML configuration file."],
        [
            "worker",
            None,
            None,
            "Internal: run as worker N of a server of several processes "
            "([server] workers), which starts its workers itself.",
            int,
        ],
    ]

    def postOptions(self) -> None:
        try:
            self["settings"] = loadConfig(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Options, reactor: IServerReactor | None = None) -> Service:
    """
    The server's service, for twistd.

    @param reactor: the reactor it runs on; the global one unless a test
        gives its own.
    """
    if reactor is None:
        reactor = installedReactor()
    config: Config = options["settings"]
    twistd = getattr(options, "parent", None)
    worker: Worker | None = None
    if options.get("worker") is None:
        for warning in config.warnings:
            log.warn("Configuration: {warning}", warning=warning)
        if config.server.workers > 1:
            return buildSupervisor(config, options.get("config"), twistd=twistd, reactor=reactor)
    else:
        worker = Worker.join(reactor)
        config = worker.config

    def observer() -> ILogObserver | None:
        if worker is not None:
            return worker.logObserver(config.log.format, [config.retrieve.password])
        return _observer(config, twistd)

    service = MxrecvService(logObserver=observer)
    metrics = service.metrics
    # Before the spool: a bad certificate should stop start-up untouched.
    listens = {"server.listen": config.server.listen}
    if worker is None:
        listens["admin.listen"] = config.admin.listen
    certificates = loadCertificates(
        listens, warnDays=config.tls.expiry_warning_days, reactor=reactor
    )
    if worker is None:
        # So should a database mxrecv cannot write to; with several workers
        # the parent checked it, and the leader's delivery never stops on it.
        checkDelivery(config.deliver)

    if worker is not None:
        # Before the thread pools: its channel to the parent stops last.
        worker.attach(service)
    # The bottom layers: threads, then the spool.
    pool = service.threadPool("mxrecv-io", IO_THREADS)
    spool = service.spool = openSpool(
        config.spool.dir,
        sync=config.spool.fsync,
        dedupeSeconds=config.spool.dedupe_days * 86400,
        reactor=reactor,
        pool=pool,
        mode=config.spool.permissions,
        **({} if worker is None else {"worker": worker.number, "lock": worker.lock}),
    )
    # One budget for the files streaming in, uploads and downloads alike.
    writers = FileWriters(
        reactor=reactor,
        pool=service.threadPool("mxrecv-upload", UPLOAD_THREADS),
        mode=spool.mode.file,
    )
    SpoolService(spool).setServiceParent(service.store)
    if worker is None:
        # Workers leave it to the parent, which serves the metrics.
        metrics.watch(SpoolCollector(spool))

    def work(parent: IServiceCollection) -> MMSWork:
        """
        The work off the request path, of one process of the server.
        """
        PruneService(spool, reactor).setServiceParent(parent)
        mms = buildMMS(
            config,
            spool=spool,
            reactor=reactor,
            pool=pool,
            writers=writers,
            metrics=metrics,
            parent=parent,
        )
        service.retriever = mms.retriever
        if config.deliver.enabled:
            service.delivery = buildDelivery(
                config.deliver, spool=spool, reactor=reactor, pool=pool, metrics=metrics
            )
            service.delivery.setServiceParent(parent)
        return mms

    pending: Callable[[str], None]
    if worker is None:
        pending = work(service.work).pending
    else:
        pending = worker.lead(service.work, spool, work, relayNew=config.deliver.enabled)

    # The edge: the callback listeners stop first, the admin ones last.
    site = service.site = buildSite(
        config, spool, reactor, pending, writers=writers, observe=metrics.callback
    )
    if worker is None:
        service.adminListeners = buildAdmin(
            config.admin,
            headerTimeout=config.server.header_timeout,
            spool=spool,
            # Each listening port starts the site (even behind TLS wrappers).
            listening=lambda: site.numPorts,
            expected=len(config.server.listen),
            registry=metrics.registry,
            reactor=reactor,
            pool=pool,
            takeUp=pending,
            certificates=certificates,
            parent=service.edge,
            **service.deliveryAdmin(),
        )
    edge = serveCallbacks(
        config.server,
        site,
        certificates=certificates,
        reactor=reactor,
        parent=service.edge,
        endpoints=None if worker is None else worker.endpoints,
        events=metrics,
    )
    service.listeners, service.inFlight = edge.listeners, edge.inFlight
    reloadCertificates(
        certificates.values(), watch=config.tls.watch, reactor=reactor, parent=service.edge
    )

    if worker is None:
        log.info(
            "mxrecv spooling to {spool}, listening on {listen}{admin}",
            spool=str(spool.root),
            listen=", ".join(config.server.listen),
            admin=f", admin on {', '.join(config.admin.listen)}" if config.admin.listen else "",
        )
    else:
        log.info("Worker {worker} spooling to {spool}", worker=worker.number, spool=str(spool.root))
    return service


def _observer(config: Config, twistd: Any) -> ILogObserver | None:
    outFile = logFileFor(twistd)
    if outFile is None:
        return None
    return observerFor(config.log.format, outFile, [config.retrieve.password])
