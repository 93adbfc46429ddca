# -*- test-case-name: tests.test_tap -*-
"""
The twistd plugin's options and service: where the parts are put together.

    twistd -n mxrecv --config etc/mxrecv.toml
"""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from .access import AllowList
from .body import BodyChooser
from .complete import Completer
from .config import Config, ConfigError, loadConfig
from .listen import parseListen, tlsEndpoint, tlsFactory
from .multipart import MultipartBody
from .request import CallbackSite
from .pending import PendingWork
from .resource import CallbackResource
from .retrieve import RetrieveService, makeRetriever
from .spool import Spool, SpoolLocked
from .tls import CertificateError, ReloadableCertificate, TLSFiles, TLSListen, clockTime
from .tlsreload import CertificateReloadService, canHandleSignals
from .writer import FileWriters

log = Logger()

# Largest urlencoded form body: a callback's parameters are small.
FORM_LIMIT = 1024 * 1024
# Threads that write and fsync messages; concurrent fsyncs share journal
# commits, so more threads than cores pays off.
IO_THREADS = 16
# Threads that write and hash uploads as they stream in: that is CPU work
# (SHA-256, copying into the page cache), so about as many as cores, in a
# pool of their own so that uploads never delay the fsyncs of the messages
# being acknowledged.
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
            for child in children:
                await maybeDeferred(child.stopService)

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


class PendingService(Service):
    """
    Takes up the MMS a previous run left in C{pending/} once we are running.
    """

    def __init__(self, pending: PendingWork) -> None:
        self.pending = pending

    def startService(self) -> None:
        super().startService()
        count = self.pending.resume()
        if count:
            log.info("Resumed {count} pending MMS", count=count)


def buildSite(
    config: Config, spool: Spool, reactor: Any, onPending: Any = None, *, writers: FileWriters
) -> CallbackSite:
    """
    The web site that takes the callbacks; C{writers} write their uploads.
    """
    server = config.server
    resource = CallbackResource(
        path=server.path,
        spool=spool,
        zone=server.timezone,
        ack=server.ack,
        clock=reactor,
        **({"onPending": onPending} if onPending else {}),
    )
    return CallbackSite(
        resource,
        reactor=reactor,
        allow=AllowList(server.allow),
        maxBody=server.max_body,
        requestTimeout=server.request_timeout,
        chooseBody=BodyChooser(
            min(FORM_LIMIT, server.max_body), multipart=MultipartBody.factory(spool, writers)
        ),
    )


def makeService(options: Options, reactor: Any = None) -> OrderedService:
    if reactor is None:
        from twisted.internet import reactor
    config: Config = options["settings"]
    service = OrderedService()
    # Before the spool: a bad certificate should stop start-up untouched.
    certificates = loadCertificates(config, reactor)

    pool = ThreadPool(minthreads=1, maxthreads=IO_THREADS, name="mxrecv-io")
    ThreadPoolService(pool).setServiceParent(service)
    # Stopped after the listeners and the spool, before the pool above.
    uploadPool = ThreadPool(minthreads=1, maxthreads=UPLOAD_THREADS, name="mxrecv-upload")
    ThreadPoolService(uploadPool).setServiceParent(service)

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
                zone=config.server.timezone,
                maxBody=config.server.max_body,
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
    PendingService(pending).setServiceParent(service)

    site = buildSite(
        config, spool, reactor, pending, writers=FileWriters(reactor=reactor, pool=uploadPool)
    )
    addListeners(service, config, site, certificates, reactor)
    log.info(
        "mxrecv spooling to {spool}, listening on {listen}",
        spool=str(spool.root),
        listen=", ".join(config.server.listen),
    )
    return service


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
) -> None:
    """
    A listening service per C{[server] listen} string, and the reloading of
    the certificates of the HTTPS ones.
    """
    for description in config.server.listen:
        listen = parseListen(description)
        if not isinstance(listen, TLSListen):
            # strports.service makes a failure to listen stop start-up.
            strports.service(description, site, reactor=reactor).setServiceParent(service)
            continue
        listener = StreamServerEndpointService(
            tlsEndpoint(reactor, listen),
            tlsFactory(site, site.allow, certificates[listen.files]),
        )
        # As strports.service does: a failure to listen stops start-up.
        listener._raiseSynchronously = True
        listener.setServiceParent(service)
    if certificates:
        CertificateReloadService(
            list(certificates.values()),
            reactor=reactor,
            watch=config.tls.watch,
            handleSignal=canHandleSignals(reactor),
        ).setServiceParent(service)


def _prune(spool: Spool) -> None:
    """
    Forget old ids; an error is logged and the timer keeps running.
    """
    spool.prune().addCallbacks(
        lambda n: log.info("Forgot {count} ids older than the dedupe window", count=n),
        lambda f: log.failure("Pruning the seen-id index failed", f),
    )

