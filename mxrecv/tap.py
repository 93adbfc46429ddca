# -*- test-case-name: tests.test_tap -*-
"""
The twistd plugin's options and service: where the parts are put together.

    twistd -n mxrecv --config etc/mxrecv.toml
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from mxrecv.config import Config, ConfigError, loadConfig
from mxrecv.deliver.service import DeliveryService, buildDelivery
from mxrecv.mms.complete import Completer
from mxrecv.mms.pending import PendingService, PendingWork
from mxrecv.mms.retrieve import RetrieveService, makeRetriever
from mxrecv.ops.admin import AdminSite, Health
from mxrecv.ops.logs import installObserver, logFileFor, observerFor
from mxrecv.ops.metrics import Metrics, SpoolCollector
from mxrecv.spool.layout import PENDING, TMP
from mxrecv.spool.store import Spool, SpoolLocked
from mxrecv.spool.writer import FileWriters
from mxrecv.tls.certificate import (
    CertificateError,
    ReloadableCertificate,
    TLSFiles,
    TLSListen,
    clockTime,
)
from mxrecv.tls.reload import CertificateReloadService, canHandleSignals
from mxrecv.web.access import AllowList
from mxrecv.web.body import BodyChooser
from mxrecv.web.drain import DrainService, InFlight
from mxrecv.web.listen import parseListen, tlsEndpoint, tlsFactory
from mxrecv.web.multipart import MultipartBody
from mxrecv.web.outcome import CallbackOutcome
from mxrecv.web.request import CallbackSite
from mxrecv.web.resource import CallbackResource

log = Logger()

# Largest urlencoded form body: a callback's parameters are small.
FORM_LIMIT = 1024 * 1024
# Threads that write and fsync messages; concurrent fsyncs share journal
# commits, so more threads than cores pays off.
IO_THREADS = 16
# Threads that write and hash uploads and RetrieveMMS downloads as they
# stream in: that is CPU work (SHA-256, copying into the page cache), so
# about as many as cores, in a pool of their own so that they never delay
# the fsyncs of the messages being acknowledged.
UPLOAD_THREADS = 4
PRUNE_INTERVAL = 3600.0


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = (
        "Receive MX Telecom's SMS and MMS callbacks into a Maildir-like spool. "
        "Without --config, every setting has its default (listen on "
        "127.0.0.1:8080, spool in var/spool)."
    )
    optParameters = [["config", "c", None, "The TOML configuration file."]]

    def postOptions(self) -> None:
        try:
            self["settings"] = loadConfig(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


class OrderedService(MultiService):
    """
    A MultiService that stops its children one at a time, last started
    first, each once the one before it has finished stopping.

    MultiService stops them all at once; here the order matters: the
    listeners stop taking callbacks, then the spool finishes the commits in
    flight (which need the thread pool), and only then does the pool stop.
    """

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        children = list(self)
        children.reverse()

        async def stopAll() -> None:
            # One child that fails to stop must not leave the spool open.
            for child in children:
                try:
                    await maybeDeferred(child.stopService)
                except Exception:
                    log.failure("Stopping {service}", service=repr(child))

        return Deferred.fromCoroutine(stopAll())


class ThreadPoolService(Service):
    """
    Runs a thread pool for as long as the service runs.
    """

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()


class SpoolService(Service):
    """
    Opens the spool at start-up and closes it at shutdown.
    """

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def startService(self) -> None:
        super().startService()
        if not self.spool.isOpen:
            self.spool.open()

    def stopService(self) -> Any:
        super().stopService()
        return self.spool.whenIdle().addBoth(lambda _: self.spool.close())


def buildSite(
    config: Config,
    spool: Spool,
    reactor: Any,
    onPending: Any = None,
    *,
    writers: FileWriters,
    observe: Callable[[CallbackOutcome], None] = lambda outcome: None,
) -> CallbackSite:
    """
    The web site that takes the callbacks; C{writers} write their uploads.

    @param observe: called with the outcome of each callback (metrics).
    """
    server = config.server
    resource = CallbackResource(
        path=server.path,
        spool=spool,
        zone=server.timezone,
        ack=server.ack,
        clock=reactor,
        observe=observe,
        **({"onPending": onPending} if onPending else {}),
    )
    return CallbackSite(
        resource,
        reactor=reactor,
        allow=AllowList(server.allow),
        maxBody=server.max_body,
        requestTimeout=server.request_timeout,
        headerTimeout=server.header_timeout,
        chooseBody=BodyChooser(
            min(FORM_LIMIT, server.max_body), multipart=MultipartBody.factory(spool, writers)
        ),
        observe=observe,
    )


class MxrecvService(OrderedService):
    """
    The whole of a running mxrecv.  Its children stop one after the other,
    the last added first, so they are added in the order: threads, spool,
    background work, admin listener, drain, callback listeners.

    @ivar logObserver: makes twistd's log observer (L{mxrecv.ops.logs}), used
        when twistd attaches this service to its application.
    @ivar metrics: the L{Metrics} of this run.
    @ivar site: the callback site.
    @ivar listeners: the services that listen for callbacks.
    @ivar adminListeners: the services that listen for the admin site.
    @ivar inFlight: the callbacks being answered (L{InFlight}).
    """

    def __init__(self) -> None:
        super().__init__()
        self.logObserver: Callable[[], Any] | None = None
        self.metrics = Metrics()
        self.site: CallbackSite | None = None
        self.listeners: list[Service] = []
        self.adminListeners: list[Service] = []
        self.delivery: DeliveryService | None = None
        self.inFlight = InFlight()

    def setServiceParent(self, parent: Any) -> None:
        if self.logObserver is not None:
            installObserver(parent, self.logObserver)
        super().setServiceParent(parent)


def makeService(options: Options, reactor: Any = None) -> MxrecvService:
    if reactor is None:
        from twisted.internet import reactor
    config: Config = options["settings"]
    service = MxrecvService()
    twistd = getattr(options, "parent", None)
    service.logObserver = lambda: _observer(config, twistd)
    metrics = service.metrics
    # Before the spool: a bad certificate should stop start-up untouched.
    certificates = loadCertificates(config, reactor)

    pool = ThreadPool(minthreads=1, maxthreads=IO_THREADS, name="mxrecv-io")
    ThreadPoolService(pool).setServiceParent(service)
    # Stopped after the listeners and the spool, before the pool above.
    uploadPool = ThreadPool(minthreads=1, maxthreads=UPLOAD_THREADS, name="mxrecv-upload")
    ThreadPoolService(uploadPool).setServiceParent(service)
    # One budget for the files streaming in, uploads and downloads alike.
    writers = FileWriters(reactor=reactor, pool=uploadPool)

    spool = Spool(
        config.spool.dir,
        reactor=reactor,
        pool=pool,
        sync=config.spool.fsync,
        dedupeSeconds=config.spool.dedupe_days * 86400,
    )
    try:
        spool.open()
    except (OSError, SpoolLocked) as e:
        raise SystemExit(f"mxrecv: cannot open the spool {spool.root}: {e}") from None
    if not config.spool.fsync:
        log.warn("spool.fsync is false: callbacks are acknowledged before they are durable")
    SpoolService(spool).setServiceParent(service)
    TimerService(PRUNE_INTERVAL, _prune, spool).setServiceParent(service)
    metrics.watch(SpoolCollector(spool))

    completer = Completer(spool, reactor=reactor, pool=pool)
    retrieve = None
    if config.retrieve.user:
        try:
            retriever = makeRetriever(
                config.retrieve,
                spool=spool,
                completer=completer,
                reactor=reactor,
                pool=pool,
                writers=writers,
                zone=config.server.timezone,
                maxBody=config.server.max_body,
                metrics=metrics,
            )
        except (OSError, ValueError) as e:
            raise SystemExit(f"mxrecv: retrieve.ca_file: {e}") from None
        # Started before PendingService hands it the pending MMS, stopped
        # after: stopping abandons the downloads in flight and closes its
        # connections; their messages stay journaled in pending/.
        RetrieveService(retriever).setServiceParent(service)
        retrieve = retriever
        log.info(
            "Retrieving GET-mode MMS from {url} as {user}, {concurrency} at a time",
            url=config.retrieve.url,
            user=config.retrieve.user,
            concurrency=config.retrieve.concurrency,
        )
    else:
        log.warn(
            "[retrieve] user is empty: GET-mode MMS notifications are kept in "
            "pending/ but not downloaded"
        )
    pending = PendingWork(spool, completer, retrieve=retrieve)
    PendingService(pending, reactor).setServiceParent(service)

    if config.deliver.enabled:
        service.delivery = buildDelivery(
            config.deliver, spool=spool, reactor=reactor, pool=pool, metrics=metrics
        )
        service.delivery.setServiceParent(service)

    site = service.site = buildSite(
        config,
        spool,
        reactor,
        pending,
        writers=writers,
        observe=metrics.callback,
    )
    service.inFlight.track(site)
    addAdmin(service, config, spool, site, reactor, pool, pending, list(certificates.values()))
    DrainService(service.inFlight, config.server.shutdown_timeout, reactor).setServiceParent(
        service
    )
    service.listeners = addListeners(service, config, site, certificates, reactor)
    log.info(
        "mxrecv spooling to {spool}, listening on {listen}{admin}",
        spool=str(spool.root),
        listen=", ".join(config.server.listen),
        admin=f", admin on {', '.join(config.admin.listen)}" if config.admin.listen else "",
    )
    return service


def addAdmin(
    service: MxrecvService,
    config: Config,
    spool: Spool,
    site: CallbackSite,
    reactor: Any,
    pool: ThreadPool,
    pending: PendingWork,
    certificates: list[ReloadableCertificate],
) -> None:
    """
    The admin listeners (C{[admin] listen}): C{/metrics}, C{/health} (which
    also checks that the HTTPS C{certificates} have not expired), and
    C{POST /pending/NAME}.
    """

    def takeUp(name: str) -> bool:
        if not (spool.dir(PENDING) / name).is_dir():
            return False
        pending(name)
        return True

    health = Health(
        directory=spool.dir(TMP),
        sync=spool.sync,
        # Each listening port starts the site (even behind TLS wrappers).
        listening=lambda: site.numPorts,
        expected=len(config.server.listen),
        reactor=reactor,
        pool=pool,
        certificates=certificates,
        extra=[service.delivery.checks] if service.delivery else [],
    )
    adminSite = AdminSite(
        health=health,
        registry=service.metrics.registry,
        reactor=reactor,
        pool=pool,
        takeUp=takeUp,
        **({"redeliver": service.delivery.redeliver} if service.delivery else {}),
    )
    for description in config.admin.listen:
        listener = strports.service(description, adminSite, reactor=reactor)
        listener.setServiceParent(service)
        service.adminListeners.append(listener)


def _observer(config: Config, twistd: Any) -> Any:
    outFile = logFileFor(twistd)
    if outFile is None:
        return None
    return observerFor(config.log.format, outFile, [config.retrieve.password])


def loadCertificates(config: Config, reactor: Any) -> dict[TLSFiles, ReloadableCertificate]:
    """
    Load and check the certificate of each HTTPS listener (once for listeners
    that share their files).

    @raise SystemExit: when a certificate or key cannot be used, naming the
        listener and the file.
    """
    certificates: dict[TLSFiles, ReloadableCertificate] = {}
    for i, description in enumerate(config.server.listen):
        listen = parseListen(description)
        if isinstance(listen, TLSListen) and listen.files not in certificates:
            try:
                certificates[listen.files] = ReloadableCertificate(
                    listen.files,
                    now=clockTime(reactor),
                    warnDays=config.tls.expiry_warning_days,
                )
            except CertificateError as e:
                raise SystemExit(f"mxrecv: server.listen[{i}]: {e}") from None
    return certificates


def addListeners(
    service: MultiService,
    config: Config,
    site: CallbackSite,
    certificates: dict[TLSFiles, ReloadableCertificate],
    reactor: Any,
) -> list[Service]:
    """
    A listening service per C{[server] listen} string, and the reloading of
    the certificates of the HTTPS ones.

    @return: the listening services.
    """
    listeners: list[Service] = []
    for description in config.server.listen:
        listen = parseListen(description)
        if not isinstance(listen, TLSListen):
            # strports.service makes a failure to listen stop start-up.
            listener = strports.service(description, site, reactor=reactor)
            listener.setServiceParent(service)
            listeners.append(listener)
            continue
        listener = StreamServerEndpointService(
            tlsEndpoint(reactor, listen),
            tlsFactory(site, site.allow, certificates[listen.files]),
        )
        # As strports.service does: a failure to listen stops start-up.
        listener._raiseSynchronously = True
        listener.setServiceParent(service)
        listeners.append(listener)
    if certificates:
        CertificateReloadService(
            list(certificates.values()),
            reactor=reactor,
            watch=config.tls.watch,
            handleSignal=canHandleSignals(reactor),
        ).setServiceParent(service)
    return listeners


def _prune(spool: Spool) -> None:
    """
    Forget old ids; an error is logged and the timer keeps running.
    """
    spool.prune().addCallbacks(
        lambda n: log.info("Forgot {count} ids older than the dedupe window", count=n),
        lambda f: log.failure("Pruning the seen-id index failed", f),
    )

