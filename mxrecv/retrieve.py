# -*- test-case-name: tests.test_retrieve -*-
"""
GET-mode MMS: download each zip that MX Telecom notified us of from
RetrieveMMS, before its expiry, and hand it to the L{Completer}.

L{Fetcher} makes one attempt: a treq GET whose body streams into
C{pending/NAME/mms.zip.part} (hashed and counted on the way, never held in
memory), cut off at a deadline that covers the whole body and at a byte cap.
L{Retriever} runs the attempts as L{mxrecv.schedule.Schedule} decides, keeps
each message's attempts in C{pending/NAME/retrieve.json} so that a restart
resumes with its history, and moves the message on: to C{new/} once
C{mms.zip} is in place, or to C{failed/} when its expiry passes.

The RetrieveMMS password travels in the query string, so no URL with a query
is ever logged or recorded: log lines name the configured base URL and the
message id, and every outcome sentence has the password masked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from collections.abc import Callable
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from attrs import frozen
from OpenSSL import SSL
from service_identity import VerificationError
from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet import error as netError
from twisted.internet.defer import CancelledError, Deferred, DeferredList, DeferredLock
# Not re-exported by twisted.internet.ssl, but the documented way to extend trust.
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, platformTrust, trustRootFromCertificates
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IPolicyForHTTPS
from zope.interface import implementer

from .complete import MMS_ZIP, Attempt, Completer
from .config import RetrieveConfig
from .dates import parseDate
from .durable import fsyncPath, removeTree, replaceFile
from .message import Message
from .metrics import Metrics
from .schedule import Completed, GaveUp, Policy, Schedule, Start
from .spool import MESSAGE_JSON, PENDING, Spool

log = Logger()

PART = MMS_ZIP + ".part"
STATE = "retrieve.json"
# A notification without an expiry: MX Telecom promises at least this long.
DEFAULT_LIFETIME = timedelta(hours=24)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class RetrieveError(Exception):
    """
    One attempt failed.  C{str()} is the attempt's outcome, a sentence fit
    for logs and C{failed/NAME/message.json} (no secrets).

    @ivar kind: the attempt's outcome for the metrics: C{timeout},
        C{connection}, C{http_4xx}, C{http_5xx}, C{invalid} (not a zip, too
        large) or C{other}.
    @ivar refused: the server refused our credentials (HTTP 401 or 403).
    """

    def __init__(self, outcome: str, kind: str = "other", refused: bool = False) -> None:
        super().__init__(outcome)
        self.kind = kind
        self.refused = refused


@frozen
class Download:
    size: int
    sha256: str


# TLS


@implementer(IOpenSSLTrustRoot)
class _AllOf:
    """
    Trust what any of several trust roots trusts.
    """

    def __init__(self, *roots: Any) -> None:
        self._roots = roots

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        for root in self._roots:
            root._addCACertsToContext(context)


def tlsPolicy(caFile: Path | None = None) -> IPolicyForHTTPS:
    """
    Verify servers against the platform's CAs, plus the certificates in the
    PEM file C{caFile}, with hostname checks.  There is deliberately no way
    to turn verification off.

    @raise ValueError: if C{caFile} holds no certificate.
    """
    if caFile is None:
        return BrowserLikePolicyForHTTPS(platformTrust())
    blocks = _PEM.findall(Path(caFile).read_bytes())
    if not blocks:
        raise ValueError(f"no PEM certificate in {caFile}")
    extra = trustRootFromCertificates([Certificate.loadPEM(b) for b in blocks])
    return BrowserLikePolicyForHTTPS(_AllOf(platformTrust(), extra))


# One attempt


def redact(text: str, secret: str) -> str:
    """
    C{text} with C{secret} (and its URL-encoded forms) masked.
    """
    if not secret:
        return text
    for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
        text = text.replace(form, "***")
    return text


def _statusOutcome(code: int, location: bytes | None) -> RetrieveError:
    if code in (401, 403):
        return RetrieveError(
            f"HTTP {code}: RetrieveMMS refused our credentials", "http_4xx", refused=True
        )
    if 300 <= code < 400:
        where = location.decode("ascii", "replace")[:200] if location else "nowhere"
        return RetrieveError(f"HTTP {code}: redirect to {where} not followed")
    kind = {4: "http_4xx", 5: "http_5xx"}.get(code // 100, "other")
    return RetrieveError(f"HTTP {code}", kind)


def _requestOutcome(reason: Failure) -> RetrieveError:
    """
    A sentence for a request that got no usable response.
    """
    if reason.check(netError.ConnectionRefusedError):
        return RetrieveError("connection refused", "connection")
    if reason.check(netError.DNSLookupError):
        return RetrieveError("host name not found", "connection")
    if reason.check(netError.TimeoutError):
        return RetrieveError("connection timed out", "timeout")
    inner = getattr(reason.value, "reasons", None) or []
    for f in inner:
        if f.check(VerificationError):
            return RetrieveError("TLS handshake failed: the certificate does not name the host", "connection")
        if f.check(SSL.Error):
            return RetrieveError(f"TLS handshake failed: {_tlsReason(f.value)}", "connection")
    if inner:
        what = ", ".join(sorted({f.getErrorMessage() or f.type.__name__ for f in inner}))
        return RetrieveError(f"no response: {what}", "connection")
    return RetrieveError(f"{reason.type.__name__}: {reason.getErrorMessage()}")


def _tlsReason(e: BaseException) -> str:
    text = str(e)
    match = re.search(r"'([^']*verify[^']*)'|(certificate verify failed|hostname mismatch)", text)
    return match.group(1) or match.group(2) if match else text[:200]


class Fetcher:
    """
    Downloads from RetrieveMMS, one attempt per call, over its own
    connection pool.

    @param reactor: makes connections.
    @param clock: times the attempts' deadlines.
    @param maxBody: the largest zip accepted, in bytes.
    """

    def __init__(
        self,
        *,
        reactor: Any,
        clock: Any,
        url: str,
        user: str,
        password: str,
        maxBody: int,
        connectTimeout: float,
        policy: IPolicyForHTTPS,
        concurrency: int = 8,
    ) -> None:
        self.url = url
        self._user = user
        self._password = password
        self._clock = clock
        self._maxBody = maxBody
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = concurrency
        agent = Agent(
            reactor, contextFactory=policy, connectTimeout=connectTimeout, pool=self._pool
        )
        self._http = HTTPClient(agent)

    def redact(self, text: str) -> str:
        return redact(text, self._password)

    def fetch(self, messageId: str, part: Path, deadline: float) -> Deferred[Download]:
        """
        Download the zip of C{messageId} into C{part}, by C{deadline} (on the
        clock).  C{part} may be left behind, complete or not, either way.

        @return: fires with the zip's size and hash, or fails with
            L{RetrieveError}; cancelling it abandons the attempt.
        """
        return _Attempt(self, messageId, part, deadline).result

    def close(self) -> Deferred[None]:
        """
        Close the cached connections.
        """
        return self._pool.closeCachedConnections()


class _Attempt:
    def __init__(self, fetcher: Fetcher, messageId: str, part: Path, deadline: float) -> None:
        self._fetcher = fetcher
        self._part = part
        self._body: _BodyFile | None = None
        self._error: RetrieveError | CancelledError | None = None
        self.result: Deferred[Download] = Deferred(lambda d: self._stop(CancelledError()))
        clock = fetcher._clock
        timeout = max(0.0, deadline - clock.seconds())
        self._timer = clock.callLater(
            timeout, self._stop, RetrieveError(f"timed out after {round(timeout, 1):g} s", "timeout")
        )
        self._request = fetcher._http.get(
            fetcher.url,
            params=[("user", fetcher._user), ("pass", fetcher._password), ("id", messageId)],
            headers=Headers({b"User-Agent": [b"mxrecv"]}),
            allow_redirects=False,
            unbuffered=True,
        )
        self._request.addCallbacks(self._response, self._noResponse)

    def _stop(self, error: RetrieveError | CancelledError) -> None:
        if self._error is not None or self.result.called:
            return
        self._error = error
        if self._body is not None:
            self._body.transport.stopProducing()
        else:
            self._request.cancel()

    def _response(self, response: Any) -> None:
        if response.code != 200:
            location = response.headers.getRawHeaders(b"location", [None])[0]
            self._error = self._error or _statusOutcome(response.code, location)
            response.deliverBody(_BodyFile(self, None, 0))
            return
        cap = self._fetcher._maxBody
        if response.length is not UNKNOWN_LENGTH and response.length > cap:
            self._error = RetrieveError(f"body larger than {cap} bytes", "invalid")
            response.deliverBody(_BodyFile(self, None, 0))
            return
        self._body = _BodyFile(self, self._part, cap)
        response.deliverBody(self._body)

    def _noResponse(self, reason: Failure) -> None:
        self._settle(self._error or _requestOutcome(reason))

    def _settle(self, outcome: Download | RetrieveError | CancelledError) -> None:
        if self._timer.active():
            self._timer.cancel()
        if self.result.called:
            return
        if isinstance(outcome, Download):
            self.result.callback(outcome)
        else:
            if isinstance(outcome, RetrieveError):
                outcome = RetrieveError(
                    self._fetcher.redact(str(outcome)), outcome.kind, outcome.refused
                )
            self.result.errback(outcome)


class _BodyFile(Protocol):
    """
    Streams a response body into a file, hashing and counting it, refusing
    more than C{cap} bytes and anything that does not start like a zip.
    With C{path} L{None}, the body is dropped at once.
    """

    def __init__(self, attempt: _Attempt, path: Path | None, cap: int) -> None:
        self._attempt = attempt
        self._path = path
        self._cap = cap
        self._file: Any = None
        self._hash = hashlib.sha256()
        self._head = b""
        self.size = 0

    def connectionMade(self) -> None:
        if self._path is None:
            self.transport.stopProducing()
            return
        try:
            self._file = open(self._path, "wb")
        except OSError as e:
            self._attempt._stop(RetrieveError(f"cannot write {PART}: {e.strerror}"))

    def dataReceived(self, data: bytes) -> None:
        if self._file is None or self._attempt._error is not None:
            return
        self.size += len(data)
        if self.size > self._cap:
            self._attempt._stop(RetrieveError(f"body larger than {self._cap} bytes", "invalid"))
            return
        if len(self._head) < 4:
            self._head = (self._head + data)[:4]
            if len(self._head) == 4 and self._head not in _ZIP_MAGIC:
                self._attempt._stop(RetrieveError("HTTP 200 but the body is not a zip", "invalid"))
                return
        self._hash.update(data)
        try:
            self._file.write(data)
        except OSError as e:
            self._attempt._stop(RetrieveError(f"cannot write {PART}: {e.strerror}"))

    def connectionLost(self, reason: Failure = None) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as e:
                self._attempt._error = self._attempt._error or RetrieveError(
                    f"cannot write {PART}: {e.strerror}"
                )
        attempt = self._attempt
        if attempt._error is not None:
            attempt._settle(attempt._error)
        elif reason.check(ResponseDone, PotentialDataLoss):
            attempt._settle(Download(self.size, self._hash.hexdigest()))
        else:
            attempt._settle(RetrieveError(f"body cut short after {self.size} bytes", "connection"))


# The queue of pending downloads


@frozen
class _Job:
    messageId: str
    expiry: float
    attempts: tuple[Attempt, ...]


def expiryOf(message: Message, zone: tzinfo) -> float:
    """
    When C{message} stops being available from RetrieveMMS, in POSIX seconds:
    its C{expiry} (in C{zone} unless it has an offset), or 24 hours after we
    received it if it has none.
    """
    if message.expiry is not None:
        try:
            return parseDate(message.expiry, zone).timestamp()
        except ValueError:
            pass
    received = datetime.fromisoformat(message.received.replace("Z", "+00:00"))
    return (received + DEFAULT_LIFETIME).timestamp()


class Retriever:
    """
    Downloads every pending MMS it is given, as the schedule says, and
    completes or fails it.  Call it with a name in C{pending/} (this is
    L{mxrecv.pending.PendingWork}'s C{retrieve} hook).

    @param pool: the thread pool that does the blocking file work.
    """

    def __init__(
        self,
        *,
        spool: Spool,
        completer: Completer,
        fetcher: Fetcher,
        schedule: Schedule,
        clock: Any,
        reactor: Any,
        pool: Any,
        zone: tzinfo,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = Metrics() if metrics is None else metrics
        self._spool = spool
        self._completer = completer
        self._fetcher = fetcher
        self.schedule = schedule
        self._clock = clock
        self._reactor = reactor
        self._pool = pool
        self._zone = zone
        self._ids: dict[str, str] = {}
        self._attempts: dict[str, Deferred[Any]] = {}
        self._waiters: dict[str, list[Deferred[Completed | GaveUp]]] = {}
        self._busy: set[Deferred[Any]] = set()
        self._locks: dict[str, DeferredLock] = {}
        self._timer: Any = None
        self._stopped = False
        self.peakInFlight = 0

    def __call__(self, name: str) -> None:
        if self._stopped or name in self._ids:
            return
        self._ids[name] = ""
        self._serially(name, self._inThread, self._load, name).addCallbacks(
            self._loaded,
            lambda f: self._lost(name, f, "Reading pending/{name} for retrieval failed"),
            (name,),
        )

    def whenDone(self, name: str) -> Deferred[Completed | GaveUp]:
        """
        Fire once C{name} is in C{new/} or C{failed/}, with its outcome.
        """
        d: Deferred[Completed | GaveUp] = Deferred()
        self._waiters.setdefault(name, []).append(d)
        return d

    def stop(self) -> Deferred[None]:
        """
        Abandon the attempts in flight (their messages stay in C{pending/},
        with their history, for the next run) and close the connections.
        """
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        for d in list(self._attempts.values()):
            d.cancel()
        busy = DeferredList(list(self._busy), consumeErrors=True)
        return busy.addBoth(lambda _: self._fetcher.close())

    # Steps

    def _load(self, name: str) -> _Job:
        """
        In a worker: the message, its attempts so far; a half-written
        download is discarded.
        """
        directory = self._spool.dir(PENDING) / name
        message = Message.decode((directory / MESSAGE_JSON).read_bytes())
        removeTree(directory / PART)
        attempts: tuple[Attempt, ...] = ()
        try:
            document = json.loads((directory / STATE).read_bytes())
            attempts = tuple(Attempt(a["at"], a["outcome"]) for a in document["attempts"])
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as e:
            log.warn("Ignoring unreadable {path}: {error}", path=str(directory / STATE), error=e)
        return _Job(message.id, expiryOf(message, self._zone), attempts)

    def _loaded(self, job: _Job, name: str) -> None:
        if self._stopped:
            return
        self._ids[name] = job.messageId
        self.schedule.add(name, job.expiry, job.attempts)
        self._pump()

    def _pump(self) -> None:
        if self._stopped:
            return
        now = self._clock.seconds()
        for decision in self.schedule.poll(now):
            if isinstance(decision, Start):
                self._start(decision)
            else:
                self._giveUp(decision)
        self.peakInFlight = max(self.peakInFlight, self.schedule.inFlight)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        wake = self.schedule.wakeAt()
        if wake is not None:
            self._timer = self._clock.callLater(max(0.0, wake - now), self._pump)

    def _start(self, start: Start) -> None:
        name = start.name
        messageId = self._ids[name]
        log.debug(
            "Retrieving MMS {id} from {url}", id=messageId, url=self._fetcher.url, name=name
        )
        part = self._spool.dir(PENDING) / name / PART
        d = self._fetcher.fetch(messageId, part, start.deadline)
        d.addCallback(
            lambda download: self._serially(name, self._inThread, self._install, name, download)
        )
        self._attempts[name] = d
        d.addBoth(self._ended, name)

    def _install(self, name: str, download: Download) -> None:
        """
        In a worker: make the downloaded zip durable as C{mms.zip}, its size
        and hash recorded in C{message.json}.  The rename is the commit point:
        after it the message is never downloaded again.
        """
        sync = self._spool.sync
        directory = self._spool.dir(PENDING) / name
        part = directory / PART
        if not zipfile.is_zipfile(part):
            raise RetrieveError(f"HTTP 200 but the body ({download.size} bytes) is not a zip", "invalid")
        fsyncPath(part, sync)
        message = Message.decode((directory / MESSAGE_JSON).read_bytes())
        message = message.replace(mms_size=download.size, mms_sha256=download.sha256)
        replaceFile(directory / MESSAGE_JSON, message.encode(), sync)
        (directory / STATE).unlink(missing_ok=True)
        os.rename(part, directory / MMS_ZIP)
        fsyncPath(directory, sync)

    def _ended(self, result: None | Failure, name: str) -> None:
        del self._attempts[name]
        if isinstance(result, Failure):
            # Here, not in a worker, so that it cannot race the next attempt.
            try:
                (self._spool.dir(PENDING) / name / PART).unlink(missing_ok=True)
            except OSError as e:
                log.warn("Cannot remove {part}: {error}", part=PART, error=e.strerror)
        if self._stopped:
            if isinstance(result, Failure) and not result.check(CancelledError):
                log.info("MMS pending/{name}: attempt abandoned at shutdown", name=name)
            return
        now = self._clock.seconds()
        messageId = self._ids[name]
        if not isinstance(result, Failure):
            self._metrics.retrievalAttempt("ok")
            completed = self.schedule.succeeded(name, now)
            self._serially(name, self._completer.complete, name).addCallbacks(
                self._completed,
                lambda f: self._lost(name, f, "Completing pending/{name} failed"),
                (completed,),
            )
        else:
            if result.check(RetrieveError):
                error = result.value
            elif result.check(OSError):
                error = RetrieveError(f"cannot store the zip: {result.value.strerror}")
            else:
                # Not log.failure: the traceback could quote the request's URL.
                log.error(
                    "Retrieving pending/{name}: unexpected error\n{traceback}",
                    name=name,
                    traceback=self._fetcher.redact(result.getTraceback()),
                )
                error = RetrieveError("internal error (see the log)")
            self._failed(name, messageId, error, now)
        self._pump()

    def _failed(self, name: str, messageId: str, error: RetrieveError, now: float) -> None:
        self._metrics.retrievalAttempt(error.kind)
        outcome = self._fetcher.redact(str(error))
        gaveUp = self.schedule.failed(name, now, outcome)
        if gaveUp is None:
            attempts = self.schedule.attempts(name)
            self._serially(name, self._inThread, self._record, name, attempts).addErrback(
                lambda f: log.failure("Recording attempts of pending/{name}", f, name=name)
            )
        if error.refused:
            log.critical(
                "RetrieveMMS at {url} refused our credentials for MMS {id} ({outcome}): "
                "check [retrieve] user and password",
                url=self._fetcher.url,
                id=messageId,
                outcome=outcome,
            )
        else:
            log.warn(
                "Retrieving MMS {id} from {url} failed: {outcome}",
                id=messageId,
                url=self._fetcher.url,
                outcome=outcome,
            )
        if gaveUp is not None:
            self._giveUp(gaveUp)

    def _record(self, name: str, attempts: tuple[Attempt, ...]) -> None:
        """
        In a worker: journal the attempts so far.
        """
        directory = self._spool.dir(PENDING) / name
        data = json.dumps({"attempts": [a.toJSON() for a in attempts]}, indent=2).encode()
        replaceFile(directory / STATE, data + b"\n", self._spool.sync)

    def _giveUp(self, gaveUp: GaveUp) -> None:
        self._metrics.expired()
        name = gaveUp.name
        log.error(
            "MMS {id} moved to failed/{name}: {error}",
            id=self._ids.get(name),
            name=name,
            error=gaveUp.error,
        )
        self._serially(
            name, self._completer.fail, name, gaveUp.error, gaveUp.attempts
        ).addCallbacks(
            lambda _: self._done(gaveUp),
            lambda f: self._lost(name, f, "Moving pending/{name} to failed/ failed"),
        )

    def _completed(self, message: Message, completed: Completed) -> None:
        log.info(
            "MMS {id} retrieved ({size} bytes, {count} attempt{s}) and completed in "
            "new/{name}{error}",
            id=message.id,
            size=message.mms_size,
            count=len(completed.attempts),
            s="" if len(completed.attempts) == 1 else "s",
            name=completed.name,
            error=f" ({message.parts_error})" if message.parts_error else "",
        )
        self._done(completed)

    def _done(self, outcome: Completed | GaveUp) -> None:
        self._ids.pop(outcome.name, None)
        self._locks.pop(outcome.name, None)
        for d in self._waiters.pop(outcome.name, []):
            d.callback(outcome)

    def _lost(self, name: str, reason: Failure, format: str) -> None:
        """
        A step failed that should not (the disk, most likely): the message
        stays in C{pending/} and is taken up again at the next start.
        """
        log.failure(format, reason, name=name)
        for d in self._waiters.pop(name, []):
            d.errback(reason)

    def _inThread(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def _serially(self, name: str, f: Callable[..., Deferred[Any]], *args: Any) -> Deferred[Any]:
        """
        Run C{f}, the next file step for message C{name}, once the previous
        one has finished; the steps in flight are waited for at shutdown.
        """
        lock = self._locks.setdefault(name, DeferredLock())
        d = lock.run(f, *args)
        self._busy.add(d)

        def untrack(result: Any) -> Any:
            self._busy.discard(d)
            return result

        return d.addBoth(untrack)


class RetrieveService(Service):
    """
    Stops the retriever at shutdown: attempts in flight are abandoned (their
    messages stay journaled in C{pending/}) and the connections closed.
    """

    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.retriever.stop()


def makeRetriever(
    retrieve: RetrieveConfig,
    *,
    spool: Spool,
    completer: Completer,
    reactor: Any,
    pool: Any,
    zone: tzinfo,
    maxBody: int,
    clock: Any = None,
    random: Callable[[], float] | None = None,
    metrics: Metrics | None = None,
) -> Retriever:
    """
    A retriever configured from C{[retrieve]} (a L{RetrieveConfig}).
    """
    if random is None:
        import random as _random

        random = _random.SystemRandom().random
    clock = reactor if clock is None else clock
    fetcher = Fetcher(
        reactor=reactor,
        clock=clock,
        url=retrieve.url,
        user=retrieve.user,
        password=retrieve.password,
        maxBody=maxBody,
        connectTimeout=retrieve.timeout,
        policy=tlsPolicy(retrieve.ca_file),
        concurrency=retrieve.concurrency,
    )
    policy = Policy(
        concurrency=retrieve.concurrency,
        timeout=retrieve.timeout,
        backoffInitial=retrieve.backoff_initial,
        backoffMax=retrieve.backoff_max,
    )
    return Retriever(
        spool=spool,
        completer=completer,
        fetcher=fetcher,
        schedule=Schedule(policy, random),
        clock=clock,
        reactor=reactor,
        pool=pool,
        zone=zone,
        metrics=metrics,
    )
