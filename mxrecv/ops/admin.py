# -*- test-case-name: tests.test_admin -*-
"""
The admin listener (C{[admin] listen}, local-only by default): C{/metrics}
in the Prometheus text format, C{/health} for load balancers and
supervisors, and C{POST /pending/NAME} to take up a requeued MMS.  Never on
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
from http import HTTPStatus
from pathlib import Path
from typing import Any

from attrs import field, frozen
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.application.service import IServiceCollection
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from mxrecv.config import LOOPBACK, AdminConfig
from mxrecv.ops.bearer import BearerToken, TokenRequired
from mxrecv.ops.inbox.service import buildInbox
from mxrecv.ops.metrics import LOCAL_ERROR_WAITING, sampleValue
from mxrecv.spool.durable import fsyncPath
from mxrecv.spool.layout import PENDING, TMP
from mxrecv.spool.naming import isName
from mxrecv.spool.store import Spool
from mxrecv.tls.certificate import ReloadableCertificate, clockTime
from mxrecv.web.access import AllowList, Gate
from mxrecv.web.listen import Listener
from mxrecv.web.outcome import CallbackOutcome
from mxrecv.web.request import CallbackChannel

log = Logger()

INBOX = b"inbox"

# A disk that takes longer than this to write and fsync a few bytes is not
# healthy, even if it would succeed in the end.
PROBE_TIMEOUT = 5.0


@frozen
class Check:
    """
    The result of one health check.

    @ivar more: further JSON fields of the check (per-worker states).
    """

    name: str
    ok: bool
    detail: str
    more: Mapping[str, Any] = field(factory=dict)

    def toJSON(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, **self.more}


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
    @param more: further checks (the worker processes').
    """

    def __init__(
        self,
        *,
        directory: Path,
        sync: bool,
        listening: Callable[[], int],
        expected: int,
        reactor: Any,
        pool: Any,
        timeout: float = PROBE_TIMEOUT,
        certificates: Sequence[ReloadableCertificate] = (),
        more: Sequence[Callable[[], Check] | Callable[[], Deferred[Check]]] = (),
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
        checks.extend(maybeDeferred(check) for check in self._more)
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
    registry: CollectorRegistry, reactor: Any, pool: ThreadPool
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
            ok = all(c.ok for c in checks)
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

    def __init__(self, registry: Any, reactor: Any, pool: Any) -> None:
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


class AdminSite(Site):
    """
    The admin listener's site: C{/metrics}, C{/health} and C{/pending/NAME};
    no access log (scrapes every few seconds would drown the callbacks'
    events).

    Its connections are L{CallbackChannel}s, so that a request's headers
    must be in within C{headerTimeout} here too.  Listen with L{factory},
    which drops clients outside C{allow} at accept.

    @param takeUp: called with a name from C{POST /pending/NAME}; says
        whether C{pending/NAME} exists and was taken up.
    @param token: what requests other than GET and HEAD must carry.
    @param allow: the clients that may connect.
    @param children: more resources, by path segment (C{b"inbox"}); those
        in C{selfChecking} check C{token} themselves.
    """

    protocol = CallbackChannel

    def __init__(
        self,
        *,
        health: Health,
        registry: Any,
        reactor: Any,
        pool: Any,
        takeUp: Callable[[str], bool] = lambda name: False,
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
        super().__init__(TokenRequired(root, token, selfChecking), reactor=reactor)
        self.token = token
        self.allow = allow
        self.headerTimeout = headerTimeout

    def observe(self, outcome: CallbackOutcome) -> None:
        """
        Requests refused by the channel are logged there; the callback
        metrics do not count the admin listener's.
        """

    def factory(self) -> Factory:
        """
        What to listen with: this site behind the allow list.
        """
        return Gate(self.allow, clock=self.reactor).wrap(self)

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
    reactor: Any,
    pool: ThreadPool,
    takeUp: Callable[[str], None],
    certificates: Sequence[ReloadableCertificate],
    parent: IServiceCollection,
    more: Sequence[Callable[[], Check]] = (),
) -> list[Listener]:
    """
    The admin listeners (C{[admin] listen}), added to C{parent}:
    C{/metrics} from C{registry}, C{/health} (the spool writable,
    C{expected} callback listeners up, the HTTPS C{certificates} not
    expired, and the checks C{more}), C{POST /pending/NAME} and the
    C{/inbox}; for the clients in C{[admin] allow}, with C{[admin] token}
    for POST, and C{headerTimeout} (the callback listeners').

    @param listening: how many callback listeners are up.
    @param takeUp: takes up an MMS in C{pending/} by name.
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
        certificates=certificates,
        more=[*more, localErrorCheck(registry, reactor, pool)],
    )
    token = BearerToken(config.token)
    children: dict[bytes, IResource] = {}
    if config.listen:
        # Before the listeners, so that it stops after them.
        inbox = buildInbox(
            spool.root, reactor=reactor, sync=spool.sync, takeUp=takeUpIfThere, token=token
        )
        inbox.setServiceParent(parent)
        children[INBOX] = inbox.resource
    site = AdminSite(
        health=health,
        registry=registry,
        reactor=reactor,
        pool=pool,
        takeUp=takeUpIfThere,
        token=token,
        allow=AllowList(config.allow),
        headerTimeout=headerTimeout,
        children=children,
        # Its requeue form carries the token in a field: a browser cannot
        # send an Authorization header without script.
        selfChecking=frozenset({INBOX}),
    )
    listeners = [
        Listener.fromDescription(reactor, description, site.factory())
        for description in config.listen
    ]
    for listener in listeners:
        listener.setServiceParent(parent)
    return listeners
