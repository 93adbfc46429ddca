# -*- test-case-name: tests.test_admin -*-
"""
The admin listener (C{[admin] listen}, local-only by default): C{/metrics}
in the Prometheus text format, C{/health} for load balancers and
supervisors, C{POST /pending/NAME} to take up a requeued MMS and
C{POST /deliver/NAME} to deliver a dead letter again.  Never on
the callback port: it is for operators.
"""

from __future__ import annotations

import datetime
import json
import os
import uuid
from collections.abc import Callable, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any

from attrs import frozen
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from mxrecv.spool.durable import fsyncPath
from mxrecv.spool.naming import isName
from mxrecv.tls.certificate import ReloadableCertificate, clockTime

log = Logger()

# A disk that takes longer than this to write and fsync a few bytes is not
# healthy, even if it would succeed in the end.
PROBE_TIMEOUT = 5.0


@frozen
class Check:
    """
    The result of one health check.

    @ivar critical: whether a failure means mxrecv cannot take callbacks
        (C{/health} answers 503); a check that is not critical (delivery)
        is reported but does not take mxrecv out of service.
    """

    name: str
    ok: bool
    detail: str
    critical: bool = True


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
    @param extra: more checks, each called at every request for its
        L{Check}s (delivery's, which are not critical).
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
        extra: Sequence[Callable[[], Sequence[Check]]] = (),
    ) -> None:
        self._directory = directory
        self._sync = sync
        self._listening = listening
        self._expected = expected
        self._reactor = reactor
        self._pool = pool
        self._timeout = timeout
        self._certificates = tuple(certificates)
        self._extra = tuple(extra)

    def check(self) -> Deferred[list[Check]]:
        checks = [self._spool(), self._listeners()]
        if self._certificates:
            checks.append(succeed(self._tls()))
        checks.extend(succeed(c) for more in self._extra for c in more())
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
                "checks": {c.name: _checkJSON(c) for c in checks},
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


def _checkJSON(check: Check) -> dict[str, Any]:
    body: dict[str, Any] = {"ok": check.ok, "detail": check.detail}
    if not check.critical:
        body["critical"] = False
    return body


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


class RedeliverResource(Resource):
    """
    C{POST /deliver/NAME} (optionally C{?target=T}): put the dead letter
    C{new/NAME} back in its queue (what C{mxrecv redeliver --admin} sends).
    202 with the targets it was a dead letter of, 404 if it was none.
    """

    isLeaf = True

    def __init__(self, redeliver: Callable[[str, str | None], Deferred[list[str]]]) -> None:
        super().__init__()
        self._redeliver = redeliver

    def render_POST(self, request: Request) -> int | bytes:
        name = b"/".join(request.postpath).decode("utf-8", "replace")
        target = (request.args or {}).get(b"target", [None])[0]
        if not isName(name):
            return _notUndeliverable(request)

        def answer(targets: list[str]) -> None:
            if not targets:
                _write(request, *_NOT_UNDELIVERABLE)
                return
            body = json.dumps({"redelivered": name, "targets": targets}).encode() + b"\n"
            _write(request, HTTPStatus.ACCEPTED, b"application/json", body)

        d = self._redeliver(name, None if target is None else target.decode("utf-8", "replace"))
        d.addCallback(answer).addErrback(_internalError, request)
        return NOT_DONE_YET


_NOT_UNDELIVERABLE = (
    HTTPStatus.NOT_FOUND,
    b"application/json",
    json.dumps({"error": "no such undeliverable message"}).encode() + b"\n",
)


def _notUndeliverable(request: Request) -> bytes:
    status, contentType, body = _NOT_UNDELIVERABLE
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", contentType)
    return body


class AdminSite(Site):
    """
    The admin listener's site: C{/metrics}, C{/health} and C{/pending/NAME};
    no access log (scrapes every few seconds would drown the callbacks'
    events).

    @param takeUp: called with a name from C{POST /pending/NAME}; says
        whether C{pending/NAME} exists and was taken up.
    @param redeliver: called with a name and a target (or L{None}) from
        C{POST /deliver/NAME}; fires with the targets that took it back.
    """

    def __init__(
        self,
        *,
        health: Health,
        registry: Any,
        reactor: Any,
        pool: Any,
        takeUp: Callable[[str], bool] = lambda name: False,
        redeliver: Callable[[str, str | None], Deferred[list[str]]] = (
            lambda name, target: succeed([])
        ),
    ) -> None:
        root = Resource()
        root.putChild(b"metrics", MetricsResource(registry, reactor, pool))
        root.putChild(b"health", HealthResource(health))
        root.putChild(b"pending", PendingResource(takeUp))
        root.putChild(b"deliver", RedeliverResource(redeliver))
        super().__init__(root, reactor=reactor)

    def log(self, request: Request) -> None:
        pass
