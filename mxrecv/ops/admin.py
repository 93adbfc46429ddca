# -*- test-case-name: tests.test_admin -*-
"""
The admin listener (C{[admin] listen}, local-only by default): C{/metrics}
in the Prometheus text format, C{/health} for load balancers and
supervisors, C{POST /pending/NAME} to take up a requeued MMS and C{POST
/deliver/NAME} to deliver a dead letter again.  Never on
the callback port: it is for operators.

Like the callback listeners, it drops clients outside its allow list
(C{[admin] allow}, loopback by default) at accept and bounds how long a
request's headers may take; requests other than GET and HEAD must carry the
bearer token when one is configured (L{mxrecv.ops.bearer}).
"""

from __future__ import annotations

import datetime
import json
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar

from attrs import field, frozen
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.application.service import IServiceCollection
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from mxrecv.config import LOOPBACK, AdminConfig, listenInterface
from mxrecv.deliver.deadletters import TargetHealth
from mxrecv.interfaces import IReactorTimeAndThreads, IServerReactor
from mxrecv.ops.bearer import BearerToken, TokenRequired
from mxrecv.ops.hosts import HostRequired, KnownHosts
from mxrecv.ops.inbox.service import buildInbox
from mxrecv.ops.metrics import LOCAL_ERROR_WAITING, sampleValue
from mxrecv.spool.durable import fsyncPath
from mxrecv.spool.layout import PENDING, TMP
from mxrecv.spool.naming import isName
from mxrecv.spool.store import Spool
from mxrecv.tls.certificate import ReloadableCertificate, clockTime
from mxrecv.tls.description import TLSFiles
from mxrecv.web.access import AllowList, Gate
from mxrecv.web.bounded import BoundedRequest
from mxrecv.web.listen import Listener, gatedListener
from mxrecv.web.outcome import CallbackOutcome
from mxrecv.web.request import CallbackChannel

log = Logger()

_T = TypeVar("_T")

INBOX = b"inbox"

# A disk that takes longer than this to write and fsync a few bytes is not
# healthy, even if it would succeed in the end.
PROBE_TIMEOUT = 5.0


@frozen
class Check:
    """
    The result of one health check.

    @ivar more: further JSON fields of the check (per-worker states).
    @ivar critical: whether a failure means mxrecv cannot take callbacks
        (C{/health} answers 503); a check that is not critical (delivery's)
        is reported, with C{"critical": false}, but does not take mxrecv out
        of service.
    """

    name: str
    ok: bool
    detail: str
    more: Mapping[str, Any] = field(factory=dict)
    critical: bool = True

    def toJSON(self) -> dict[str, Any]:
        critical = {} if self.critical else {"critical": False}
        return {"ok": self.ok, "detail": self.detail, **critical, **self.more}


def deliveryCheck(health: TargetHealth) -> Check:
    """
    The check C{delivery.TARGET} of a delivery target: not critical.
    """
    return Check(f"delivery.{health.target}", health.ok, health.detail, critical=False)


def deliveryChecks(
    sources: Sequence[Callable[[], TargetHealth | Deferred[TargetHealth]]],
) -> list[Callable[[], Deferred[Check]]]:
    """
    The checks of the delivery targets whose health C{sources} tell.
    """
    return [partial(_deliveryCheck, source) for source in sources]


def _deliveryCheck(source: Callable[[], TargetHealth | Deferred[TargetHealth]]) -> Deferred[Check]:
    return _deferred(source).addCallback(deliveryCheck)


def _deferred(f: Callable[[], _T | Deferred[_T]]) -> Deferred[_T]:
    """
    What C{f} returns, as a L{Deferred} (as L{maybeDeferred}, for a
    function that may return either).
    """
    try:
        result = f()
    except Exception:
        return fail()
    return result if isinstance(result, Deferred) else succeed(result)


def probeWritable(directory: Path, sync: bool = True) -> None:
    """
    Write, fsync and remove a small file in C{directory}: what accepting a
    message needs.  Blocking.

    @raise OSError: if any step fails.
    """
    path = directory / f".health-{uuid.uuid4().hex}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, b"ok\n")
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    fsyncPath(directory, sync)


class Health:
    """
    Whether mxrecv can take callbacks: its spool is writable (a real write
    and fsync in a worker thread), all its listeners are up, and (with HTTPS
    listeners) no certificate in service has expired.

    @param listening: returns how many callback listeners are up.
    @param expected: how many there should be.
    @param certificates: the HTTPS listeners' certificates; their expiry is
        checked against C{reactor}'s time.
    @param more: further checks (the worker processes', delivery's); each
        returns a L{Check} or a L{Deferred} that fires with one.
    """

    def __init__(
        self,
        *,
        directory: Path,
        sync: bool,
        listening: Callable[[], int],
        expected: int,
        reactor: IReactorTimeAndThreads,
        pool: ThreadPool,
        timeout: float = PROBE_TIMEOUT,
        certificates: Sequence[ReloadableCertificate] = (),
        more: Sequence[Callable[[], Check | Deferred[Check]]] = (),
    ) -> None:
        self._directory = directory
        self._sync = sync
        self._listening = listening
        self._expected = expected
        self._reactor = reactor
        self._pool = pool
        self._timeout = timeout
        self._certificates = tuple(certificates)
        self._more = tuple(more)

    def check(self) -> Deferred[list[Check]]:
        checks = [self._spool(), self._listeners()]
        if self._certificates:
            checks.append(succeed(self._tls()))
        checks.extend(_deferred(check) for check in self._more)
        return gatherResults(checks)

    def _spool(self) -> Deferred[Check]:
        d = deferToThreadPool(
            self._reactor, self._pool, probeWritable, self._directory, self._sync
        )
        d.addTimeout(self._timeout, self._reactor)

        def failed(f: Failure) -> Check:
            if f.check(OSError):
                why = f"cannot write: {f.value.strerror or f.value}"
            else:
                why = f"no answer in {self._timeout:g}s"
            return Check("spool", False, why)

        return d.addCallbacks(lambda _: Check("spool", True, "writable"), failed)

    def _listeners(self) -> Deferred[Check]:
        up = self._listening()
        return succeed(Check("listeners", up >= self._expected, f"{up} of {self._expected} up"))

    def _tls(self) -> Check:
        """
        Every certificate in service, chains included, is before its
        notAfter (a certificate is only put in service after its notBefore).
        """
        now = clockTime(self._reactor)()
        expired = [c for c in self._certificates if c.current.notAfter <= now]
        total = len(self._certificates)
        detail = f"{total - len(expired)} of {total} valid"
        if expired:
            return Check(
                "tls",
                False,
                detail + "; expired: " + ", ".join(
                    f"{c.current.expiring} served from {c.files.certKey} on {_utc(c.current.notAfter)}"
                    for c in expired
                ),
            )
        first = min(c.current.notAfter for c in self._certificates)
        return Check("tls", True, f"{detail}; the first expires on {_utc(first)}")


def localErrorCheck(
    registry: CollectorRegistry, reactor: IReactorFromThreads, pool: ThreadPool
) -> Callable[[], Deferred[Check]]:
    """
    The check C{mms}: how many MMS are held up by a local error (a full or
    failing disk stopped their completion or download set-up) and wait to
    be taken up again (L{mxrecv.mms.recover}), as the metric
    L{LOCAL_ERROR_WAITING} says (summed over the workers when there are
    several).  It never fails C{/health}: callbacks are still taken, and
    the C{spool} check says whether they can be stored.
    """

    def check() -> Deferred[Check]:
        d = deferToThreadPool(reactor, pool, sampleValue, registry, LOCAL_ERROR_WAITING)

        def made(value: float) -> Check:
            count = int(value)
            if not count:
                return Check("mms", True, "none held up by a local error", {"waiting": 0})
            return Check(
                "mms",
                True,
                f"{count} held up by a local error, taken up again with backoff",
                {"waiting": count},
            )

        return d.addCallback(made)

    return check


def _utc(when: datetime.datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M:%S} UTC"


class HealthResource(Resource):
    """
    C{GET /health}: 200 when every check passes, else 503; the body is JSON::

        {"ok": true, "checks": {"spool": {"ok": true, "detail": "writable"}, ...}}
    """

    isLeaf = True

    def __init__(self, health: Health) -> None:
        super().__init__()
        self._health = health

    def render_GET(self, request: Request) -> int:
        def answer(checks: list[Check]) -> None:
            ok = all(c.ok for c in checks if c.critical)
            body = {
                "ok": ok,
                "checks": {c.name: c.toJSON() for c in checks},
            }
            if not ok:
                log.warn("Health check failed: {checks}", checks=body["checks"])
            _write(
                request,
                HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                b"application/json",
                json.dumps(body).encode() + b"\n",
            )

        self._health.check().addCallback(answer).addErrback(_internalError, request)
        return NOT_DONE_YET


class MetricsResource(Resource):
    """
    C{GET /metrics}: the registry in the Prometheus text format, collected in
    a worker thread (some collectors list spool directories).
    """

    isLeaf = True

    def __init__(
        self, registry: CollectorRegistry, reactor: IReactorFromThreads, pool: ThreadPool
    ) -> None:
        super().__init__()
        self._registry = registry
        self._reactor = reactor
        self._pool = pool

    def render_GET(self, request: Request) -> int:
        d = deferToThreadPool(self._reactor, self._pool, generate_latest, self._registry)
        d.addCallback(
            lambda data: _write(request, HTTPStatus.OK, CONTENT_TYPE_LATEST.encode(), data)
        )
        d.addErrback(_internalError, request)
        return NOT_DONE_YET


def _write(request: Request, status: int, contentType: bytes, body: bytes) -> None:
    if request.channel is None:
        return
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", contentType)
    request.setHeader(b"Cache-Control", b"no-store")
    request.write(body)
    request.finish()


def _internalError(f: Failure, request: Request) -> None:
    log.failure("Admin request {path} failed", f, path=request.path)
    _write(request, HTTPStatus.INTERNAL_SERVER_ERROR, b"text/plain", b"internal error\n")


class PendingResource(Resource):
    """
    C{POST /pending/NAME}: take up C{pending/NAME} now (an MMS that
    C{mxrecv requeue} moved back from C{failed/}) rather than at the next
    start.  202 if taken up, 404 if there is no such message.
    """

    isLeaf = True

    def __init__(self, takeUp: Callable[[str], bool]) -> None:
        super().__init__()
        self._takeUp = takeUp

    def render_POST(self, request: Request) -> bytes:
        name = b"/".join(request.postpath).decode("utf-8", "replace")
        request.setHeader(b"Content-Type", b"application/json")
        if isName(name) and self._takeUp(name):
            log.info("Taking up pending/{name} at the operator's request", name=name)
            request.setResponseCode(HTTPStatus.ACCEPTED)
            return json.dumps({"taken": name}).encode() + b"\n"
        request.setResponseCode(HTTPStatus.NOT_FOUND)
        return json.dumps({"error": "no such message in pending/"}).encode() + b"\n"


class RedeliverResource(Resource):
    """
    C{POST /deliver/NAME} (C{?target=T} for one target only): put the dead
    letter C{new/NAME} back in its queue (what C{mxrecv redeliver --admin}
    sends).  202 with the targets it was a dead letter of, 404 if it was
    none.
    """

    isLeaf = True

    def __init__(self, redeliver: Callable[[str, str | None], Deferred[list[str]]]) -> None:
        super().__init__()
        self._redeliver = redeliver

    def render_POST(self, request: Request) -> int | bytes:
        name = b"/".join(request.postpath).decode("utf-8", "replace")
        values = request.args.get(b"target") if request.args else None
        target = values[0].decode("utf-8", "replace") if values else None
        if not isName(name):
            request.setResponseCode(HTTPStatus.NOT_FOUND)
            request.setHeader(b"Content-Type", b"application/json")
            return _NOT_UNDELIVERABLE

        def answer(targets: list[str]) -> None:
            if not targets:
                _write(request, HTTPStatus.NOT_FOUND, b"application/json", _NOT_UNDELIVERABLE)
                return
            log.info(
                "Delivering new/{name} again to {targets} at the operator's request",
                name=name,
                targets=", ".join(targets),
            )
            body = json.dumps({"redelivered": name, "targets": targets}).encode() + b"\n"
            _write(request, HTTPStatus.ACCEPTED, b"application/json", body)

        d = self._redeliver(name, target)
        d.addCallback(answer).addErrback(_internalError, request)
        return NOT_DONE_YET


_NOT_UNDELIVERABLE = json.dumps({"error": "no such undeliverable message"}).encode() + b"\n"


class AdminSite(Site):
    """
    The admin listener's site: C{/metrics}, C{/health} and C{/pending/NAME};
    no access log (scrapes every few seconds would drown the callbacks'
    events).

    Its connections are L{CallbackChannel}s, so that a request's headers
    must be in within C{headerTimeout} here too; its requests are
    L{BoundedRequest}s, whose bodies may be no larger than C{maxBody}
    (413), token or not.  Listen behind L{gate}, which drops clients
    outside C{allow} at accept.

    @param takeUp: called with a name from C{POST /pending/NAME}; says
        whether C{pending/NAME} exists and was taken up.
    @param redeliver: called with a name and a target (or L{None}) from
        C{POST /deliver/NAME}; fires with the targets that took it back.
    @param token: what requests other than GET and HEAD must carry.
    @param allow: the clients that may connect.
    @param children: more resources, by path segment (C{b"inbox"}); those
        in C{selfChecking} check C{token} themselves.
    """

    protocol = CallbackChannel
    # Its forms are small (a token, a CSRF token, a target).
    maxBody = 64 * 1024

    def __init__(
        self,
        *,
        health: Health,
        registry: CollectorRegistry,
        reactor: IReactorTimeAndThreads,
        pool: ThreadPool,
        takeUp: Callable[[str], bool] = lambda name: False,
        redeliver: Callable[[str, str | None], Deferred[list[str]]] = (
            lambda name, target: succeed([])
        ),
        token: BearerToken = BearerToken(),
        allow: AllowList = AllowList(LOOPBACK),
        headerTimeout: float = 30.0,
        children: Mapping[bytes, IResource] = {},
        selfChecking: frozenset[bytes] = frozenset(),
    ) -> None:
        root = Resource()
        for segment, child in children.items():
            root.putChild(segment, child)
        root.putChild(b"metrics", MetricsResource(registry, reactor, pool))
        root.putChild(b"health", HealthResource(health))
        root.putChild(b"pending", PendingResource(takeUp))
        root.putChild(b"deliver", RedeliverResource(redeliver))
        super().__init__(
            TokenRequired(root, token, selfChecking),
            requestFactory=BoundedRequest,
            reactor=reactor,
        )
        self.token = token
        self.allow = allow
        self.headerTimeout = headerTimeout

    def observe(self, outcome: CallbackOutcome) -> None:
        """
        Requests refused by the channel are logged there; the callback
        metrics do not count the admin listener's.
        """

    def gate(self) -> Gate:
        """
        What to listen behind: the allow list, at accept.
        """
        return Gate(self.allow, clock=self.reactor)

    def log(self, request: Request) -> None:
        pass


def buildAdmin(
    config: AdminConfig,
    *,
    headerTimeout: float,
    spool: Spool,
    listening: Callable[[], int],
    expected: int,
    registry: CollectorRegistry,
    reactor: IServerReactor,
    pool: ThreadPool,
    takeUp: Callable[[str], None],
    certificates: Mapping[TLSFiles, ReloadableCertificate],
    parent: IServiceCollection,
    more: Sequence[Callable[[], Check | Deferred[Check]]] = (),
    redeliver: Callable[[str, str | None], Deferred[list[str]]] | None = None,
    samples: CollectorRegistry | None = None,
) -> list[Listener]:
    """
    The admin listeners (C{[admin] listen}), added to C{parent}:
    C{/metrics} from C{registry}, C{/health} (the spool writable,
    C{expected} callback listeners up, the HTTPS C{certificates} not
    expired, and the checks C{more}), C{POST /pending/NAME} and the
    C{/inbox}; for the clients in C{[admin] allow}, with C{[admin] token}
    for POST, and C{headerTimeout} (the callback listeners').  An C{ssl:}
    admin listener has its certificate among C{certificates} (all the HTTPS
    listeners', loaded at start-up and reloaded with the others).

    @param listening: how many callback listeners are up.
    @param takeUp: takes up an MMS in C{pending/} by name.
    @param redeliver: puts a dead letter back (C{POST /deliver/NAME}), if
        anything is delivered.
    @param samples: where C{/health} reads the gauges it reports
        (L{localErrorCheck}): C{registry} unless given.
    """

    def takeUpIfThere(name: str) -> bool:
        if not spool.message(PENDING, name).exists():
            return False
        takeUp(name)
        return True

    health = Health(
        directory=spool.dir(TMP),
        sync=spool.sync,
        listening=listening,
        expected=expected,
        reactor=reactor,
        pool=pool,
        certificates=certificates.values(),
        more=[*more, localErrorCheck(registry if samples is None else samples, reactor, pool)],
    )
    token = BearerToken(config.token)
    children: dict[bytes, IResource] = {}
    if config.listen:
        # Before the listeners, so that it stops after them.
        inbox = buildInbox(
            spool.root,
            reactor=reactor,
            sync=spool.sync,
            # It has just moved the message into pending/ itself.
            takeUp=takeUp,
            token=token,
            mode=spool.mode,
        )
        inbox.setServiceParent(parent)
        # Private messages, read in a browser: only under the listener's
        # own names (DNS rebinding).  /metrics and /health hold none, and
        # scrapers reach them by names of their own.
        interfaces = (listenInterface(d) for d in config.listen)
        hosts = KnownHosts.of([*config.hosts, *(i for i in interfaces if i)])
        children[INBOX] = HostRequired(inbox.resource, hosts)
    site = AdminSite(
        health=health,
        registry=registry,
        reactor=reactor,
        pool=pool,
        takeUp=takeUpIfThere,
        **({} if redeliver is None else {"redeliver": redeliver}),
        token=token,
        allow=AllowList(config.allow),
        headerTimeout=headerTimeout,
        children=children,
        # Its requeue form carries the token in a field: a browser cannot
        # send an Authorization header without script.
        selfChecking=frozenset({INBOX}),
    )
    gate = site.gate()
    listeners = [
        gatedListener(reactor, description, site, gate=gate, certificates=certificates)
        for description in config.listen
    ]
    for listener in listeners:
        listener.setServiceParent(parent)
    return listeners
