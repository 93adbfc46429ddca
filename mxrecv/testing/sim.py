# -*- test-case-name: tests.test_sim -*-
"""
C{mxrecv-sim}: a stand-in for MX Telecom.

It sends SMS and MMS callbacks to a URL the way MX Telecom does (GET with a
query string, or a multipart/form-data POST carrying the zip as the part
C{mms.zip}), serves RetrieveMMS for the GET-mode MMS it announced, and checks
every answer: a 200 with a non-empty body, in good time.  It exits non-zero
when any answer was wrong, so that it can stand in a script or a test.

    mxrecv-sim --url http://127.0.0.1:8080/ --type sms --count 100

Everything is bounded: at most C{count} callbacks, sent for at most
C{duration} seconds, each given at most C{timeout} seconds to be answered.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlencode

import treq
from attrs import evolve, field, frozen
from twisted.internet import task
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IDelayedCall, IReactorTCP, IReactorTime
from twisted.internet.ssl import Certificate
from twisted.python import usage
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from mxrecv.interfaces import IServerReactor
from mxrecv.message.dates import mxDate
from mxrecv.testing.retrievemms import QuietSite, RetrieveMMS
from mxrecv.testing.zips import makeZip

# MX Telecom waits 60 s for an answer but asks for one "in a timely manner
# (sub 10 seconds)": a slower 200 counts as a wrong answer.
TIMELY = 10.0
CHUNK = 64 * 1024

Pairs = Sequence[tuple[str, str]]


# What is sent (pure)


@frozen
class Callback:
    """
    One callback as MX Telecom would send it.

    @ivar params: the parameters, in order, repeatable ones repeated.
    @ivar zip: the zipped MMS, for an MMS (sent in POST mode, retrievable in
        GET mode); L{None} for an SMS.
    """

    id: str
    params: Pairs
    zip: bytes | None = field(default=None, repr=False)


# How long after its date an MMS may be retrieved: MX Telecom promises at
# least 24 hours.
EXPIRY_SECONDS = 48 * 3600


def makeCallbacks(
    kind: str,
    count: int,
    runId: str,
    zipSize: int = 10 * 1024,
    zip: bytes | None = None,
    *,
    now: float,
) -> Iterator[Callback]:
    """
    C{count} callbacks of C{kind} (C{"sms"} or C{"mms"}) with ids unique to
    C{runId}, sharing one zip (C{zip}, or one of C{zipSize} bytes), dated
    C{now} (Unix time) as MX Telecom would date them, an MMS expiring
    L{EXPIRY_SECONDS} later.
    """
    mms = (zip or makeZip(zipSize)) if kind == "mms" else None
    date = mxDate(now)
    expiry = mxDate(now + EXPIRY_SECONDS)
    for i in range(count):
        ident = f"sim-{runId}-{i}"
        params: list[tuple[str, str]] = [
            ("id", ident),
            ("from", f"4477009{i % 100000:05d}"),
            ("to", "80001"),
            ("date", date),
        ]
        if kind == "sms":
            params += [("type", "6"), ("network", "vodafone"), ("message", f"Hello {i} \u20ac")]
        else:
            params += [
                ("type", "2"),
                ("to", "80002"),
                ("cc", "447700900999"),
                ("subject", f"Picture {i}"),
                ("expiry", expiry),
            ]
        yield Callback(ident, tuple(params), mms)


def getURL(url: str, callback: Callback) -> str:
    """
    The URL of a GET-mode callback: the parameters in the query string.
    """
    separator = "&" if "?" in url else "?"
    return url + separator + urlencode(list(callback.params))


@frozen
class Multipart:
    """
    A multipart/form-data body in three segments, so that a large zip is
    sent from the bytes we already hold rather than copied into the body.
    """

    contentType: bytes
    head: bytes
    zip: bytes
    tail: bytes

    def __len__(self) -> int:
        return len(self.head) + len(self.zip) + len(self.tail)

    def chunks(self) -> Iterator[bytes]:
        yield self.head
        view = memoryview(self.zip)
        for start in range(0, len(view), CHUNK):
            yield bytes(view[start : start + CHUNK])
        yield self.tail


def multipartBody(callback: Callback, boundary: str) -> Multipart:
    """
    The body MX Telecom POSTs: one field per parameter and, for an MMS, the
    zip as the file part C{mms.zip}.
    """
    dash = b"--" + boundary.encode("ascii")
    head = bytearray()
    for name, value in callback.params:
        head += dash + b"\r\n"
        head += b'Content-Disposition: form-data; name="%s"\r\n' % name.encode()
        head += b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        head += value.encode("utf-8") + b"\r\n"
    tail = dash + b"--\r\n"
    if callback.zip is not None:
        head += dash + b"\r\n"
        head += b'Content-Disposition: form-data; name="mms.zip"; filename="mms.zip"\r\n'
        head += b"Content-Type: application/zip\r\n\r\n"
        tail = b"\r\n" + tail
    return Multipart(
        b"multipart/form-data; boundary=" + boundary.encode("ascii"),
        bytes(head),
        callback.zip or b"",
        tail,
    )


@implementer(IBodyProducer)
class _Producer:
    """
    Sends a L{Multipart} body in chunks, honouring flow control.
    """

    def __init__(self, body: Multipart, cooperate: Any = task.cooperate) -> None:
        self.length = len(body)
        self._chunks = body.chunks()
        self._cooperate = cooperate
        self._task: Any = None

    def startProducing(self, consumer: Any) -> Deferred:
        def produce() -> Iterator[None]:
            for chunk in self._chunks:
                consumer.write(chunk)
                yield None

        self._task = self._cooperate(produce())
        return self._task.whenDone().addCallback(lambda _: None)

    def pauseProducing(self) -> None:
        self._task.pause()

    def resumeProducing(self) -> None:
        self._task.resume()

    def stopProducing(self) -> None:
        self._task.stop()


# What came back (pure)


@frozen
class Outcome:
    """
    The answer to one callback: status and body, or the error instead.
    """

    id: str
    elapsed: float
    status: int | None = None
    body: bytes = b""
    error: str | None = None

    @property
    def problem(self) -> str | None:
        """
        What was wrong with the answer, or L{None} if it was right.
        """
        if self.error is not None:
            return self.error
        if self.status != 200:
            return f"HTTP {self.status}: {self.body[:80]!r}"
        if not self.body:
            return "200 with an empty body"
        if self.elapsed > TIMELY:
            return f"answered after {self.elapsed:.1f}s (over {TIMELY:g}s)"
        return None


def percentile(values: Sequence[float], fraction: float) -> float:
    """
    The nearest-rank percentile of C{values} (not empty).
    """
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return ordered[rank - 1]


@frozen
class Summary:
    sent: int
    ok: int
    problems: tuple[Outcome, ...]
    seconds: float
    p50: float | None
    p99: float | None
    worst: float | None
    bytes: int
    announced: int = 0
    retrieved: int = 0
    drained: float | None = None

    @classmethod
    def of(cls, outcomes: Sequence[Outcome], seconds: float, bodyBytes: int = 0) -> Summary:
        times = [o.elapsed for o in outcomes if o.status is not None]
        problems = tuple(o for o in outcomes if o.problem is not None)
        return cls(
            sent=len(outcomes),
            ok=len(outcomes) - len(problems),
            problems=problems,
            seconds=seconds,
            p50=percentile(times, 0.5) if times else None,
            p99=percentile(times, 0.99) if times else None,
            worst=max(times) if times else None,
            bytes=bodyBytes,
        )

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """
        The one-line summary, machine-readable enough for bench/.
        """

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:.1f}ms"

        parts = [
            f"sent={self.sent} ok={self.ok} wrong={len(self.problems)}",
            f"seconds={self.seconds:.3f} rate={self.rate:.1f}/s",
            f"MiB/s={self.bytes / 1048576 / self.seconds:.1f}"
            if self.bytes and self.seconds > 0
            else "",
            f"p50={ms(self.p50)} p99={ms(self.p99)} max={ms(self.worst)}",
        ]
        if self.announced:
            parts.append(f"retrieved={self.retrieved}/{self.announced}")
        if self.drained is not None:
            parts.append(f"drained={self.drained:.3f}s")
        return "mxrecv-sim: " + " ".join(p for p in parts if p)


# Sending


@frozen
class Settings:
    url: str
    kind: str = "sms"
    mode: str = "get"
    count: int = 100
    concurrency: int = 10
    duration: float = 60.0
    zipSize: int = 10 * 1024
    timeout: float = 60.0
    newConnections: bool = False
    caFile: str | None = None
    runId: str = ""
    retrieveListen: str = "tcp:0:interface=127.0.0.1"
    user: str = "sim"
    password: str = "sim-password"
    linger: float = 10.0


def makeClient(
    reactor: IReactorTCP, settings: Settings
) -> tuple[treq.client.HTTPClient, HTTPConnectionPool]:
    pool = HTTPConnectionPool(reactor, persistent=not settings.newConnections)
    pool.maxPersistentPerHost = settings.concurrency
    pool.retryAutomatically = False
    kwargs: dict[str, Any] = {"pool": pool, "connectTimeout": settings.timeout}
    if settings.caFile:
        with open(settings.caFile, "rb") as f:
            trust = Certificate.loadPEM(f.read())
        kwargs["contextFactory"] = BrowserLikePolicyForHTTPS(trustRoot=trust)
    return treq.client.HTTPClient(Agent(reactor, **kwargs)), pool


@inlineCallbacks
def send(
    reactor: IReactorTime, client: treq.client.HTTPClient, settings: Settings, callback: Callback
) -> Any:
    """
    Send one callback and return its L{Outcome}; never fails.
    """
    start = reactor.seconds()
    headers = Headers({b"User-Agent": [b"mxrecv-sim"]})
    if settings.newConnections:
        headers.addRawHeader(b"Connection", b"close")
    try:
        if settings.mode == "get":
            response = yield client.get(
                getURL(settings.url, callback), headers=headers, timeout=settings.timeout
            )
        else:
            body = multipartBody(callback, f"mxsim{random.getrandbits(64):016x}")
            headers.addRawHeader(b"Content-Type", body.contentType)
            response = yield client.post(
                settings.url,
                data=_Producer(body),
                headers=headers,
                timeout=settings.timeout,
            )
        content = yield _collect(reactor, response, settings.timeout - (reactor.seconds() - start))
    except Exception as e:
        return Outcome(callback.id, reactor.seconds() - start, error=f"{type(e).__name__}: {e}")
    return Outcome(callback.id, reactor.seconds() - start, response.code, content)


def _collect(reactor: IReactorTime, response: Any, timeout: float) -> Deferred[bytes]:
    """
    The (small) body of an answer, within the time left.
    """
    d = response.content()
    call = reactor.callLater(max(timeout, 0.001), d.cancel)
    return d.addBoth(_cancelled, call)


def _cancelled(result: Any, call: IDelayedCall) -> Any:
    if call.active():
        call.cancel()
    return result


@inlineCallbacks
def run(reactor: IServerReactor, settings: Settings, out: Any = None) -> Any:
    """
    Play MX Telecom as C{settings} say and return the L{Summary}.
    """
    out = out or sys.stdout
    runId = settings.runId or f"{random.getrandbits(40):010x}"
    retrieve = None
    listening = None
    if settings.kind == "mms" and settings.mode == "get":
        retrieve = RetrieveMMS(reactor, user=settings.user, password=settings.password)
        listening = yield serverFromString(reactor, settings.retrieveListen).listen(QuietSite(retrieve))
        address = listening.getHost()
        print(
            f"mxrecv-sim: RetrieveMMS at http://{address.host}:{address.port}/RetrieveMMS"
            f" (configure [retrieve] url with it, user = {settings.user!r},"
            f" password = {settings.password!r})",
            file=out,
            flush=True,
        )
    zipData = makeZip(settings.zipSize) if settings.kind == "mms" else None
    callbacks = makeCallbacks(
        settings.kind, settings.count, runId, zip=zipData, now=reactor.seconds()
    )
    client, pool = makeClient(reactor, settings)
    start = reactor.seconds()
    stopAt = start + settings.duration
    outcomes: list[Outcome] = []
    bodyBytes = 0

    @inlineCallbacks
    def worker() -> Any:
        # Each of the concurrency workers takes the next callback until
        # none are left or the duration is over.
        nonlocal bodyBytes
        for callback in callbacks:
            if reactor.seconds() >= stopAt:
                return
            if retrieve is not None:
                assert callback.zip is not None
                retrieve.announce(callback.id, callback.zip)
            outcomes.append((yield send(reactor, client, settings, callback)))
            if settings.mode == "post":
                bodyBytes += len(callback.zip or b"")

    try:
        yield gatherResults([worker() for _ in range(settings.concurrency)])
        summary = Summary.of(outcomes, reactor.seconds() - start, bodyBytes)
        if retrieve is not None:
            yield _within(reactor, retrieve.whenAllRetrieved(), settings.linger)
            summary = _withRetrieved(summary, retrieve, reactor.seconds() - start)
    finally:
        yield pool.closeCachedConnections()
        if listening is not None:
            yield listening.stopListening()
    for outcome in summary.problems[:10]:
        print(f"mxrecv-sim: {outcome.id}: {outcome.problem}", file=out)
    print(summary.line(), file=out, flush=True)
    return summary


def _withRetrieved(summary: Summary, retrieve: RetrieveMMS, elapsed: float) -> Summary:
    """
    C{summary} with what was retrieved and, if all was, how long it took
    from the first callback to the last download.
    """
    retrieved = len(retrieve.retrieved)
    drained = elapsed if retrieved >= retrieve.announced else None
    return evolve(summary, announced=retrieve.announced, retrieved=retrieved, drained=drained)


def _within(reactor: IReactorTime, d: Deferred, seconds: float) -> Deferred:
    """
    C{d}, or nothing once C{seconds} have passed.
    """
    call = reactor.callLater(seconds, d.cancel)
    return d.addBoth(_cancelled, call).addErrback(lambda f: None)


# Command line


class Options(usage.Options):
    synopsis = "--url URL [options]"
    longdesc = (
        "Plays MX Telecom: sends SMS and MMS callbacks to --url (GET with a query "
        "string, or multipart/form-data POST with the zip as the part mms.zip), "
        "serves RetrieveMMS for the GET-mode MMS it announced, and checks every "
        "answer (200, non-empty body, within 10 s). Exits 1 if any answer was wrong."
    )
    optParameters = [
        ["url", "u", None, "The callback URL (http:// or https://)."],
        ["type", "t", "sms", "sms or mms."],
        ["mode", "m", "get", "get (query string) or post (multipart/form-data)."],
        ["count", "n", 100, "How many callbacks to send.", int],
        ["concurrency", "c", 10, "How many at a time.", int],
        ["duration", "d", 60.0, "Stop sending after this many seconds.", float],
        ["zip-size", "z", 10 * 1024, "Size of each MMS zip in bytes.", int],
        ["timeout", None, 60.0, "Seconds to wait for each answer.", float],
        ["ca-file", None, None, "A PEM CA certificate to trust for https://."],
        ["retrieve-listen", None, "tcp:0:interface=127.0.0.1",
         "Endpoint of the RetrieveMMS stand-in (GET-mode MMS)."],
        ["user", None, "sim", "RetrieveMMS user name expected."],
        ["password", None, "sim-password", "RetrieveMMS password expected."],
        ["linger", None, 10.0,
         "GET-mode MMS: seconds to keep serving RetrieveMMS after the last answer.", float],
        ["run-id", None, "", "Makes the message ids (default: random)."],
    ]
    optFlags = [["new-connections", None, "A new connection for every callback."]]

    def postOptions(self) -> None:
        if not self["url"] or not self["url"].startswith(("http://", "https://")):
            raise usage.UsageError("--url: an http:// or https:// URL is required")
        if self["type"] not in ("sms", "mms"):
            raise usage.UsageError("--type: sms or mms")
        if self["mode"] not in ("get", "post"):
            raise usage.UsageError("--mode: get or post")
        for key in ("count", "concurrency", "zip-size"):
            if self[key] < 1:
                raise usage.UsageError(f"--{key}: at least 1")
        for key in ("duration", "timeout", "linger"):
            if not self[key] > 0:
                raise usage.UsageError(f"--{key}: above 0")

    def settings(self) -> Settings:
        return Settings(
            url=self["url"],
            kind=self["type"],
            mode=self["mode"],
            count=self["count"],
            concurrency=self["concurrency"],
            duration=self["duration"],
            zipSize=self["zip-size"],
            timeout=self["timeout"],
            newConnections=bool(self["new-connections"]),
            caFile=self["ca-file"],
            runId=self["run-id"],
            retrieveListen=self["retrieve-listen"],
            user=self["user"],
            password=self["password"],
            linger=self["linger"],
        )


def main(argv: Sequence[str] | None = None) -> None:
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        raise SystemExit(f"mxrecv-sim: {e}\n{options}")

    @inlineCallbacks
    def _main(reactor: IServerReactor) -> Any:
        summary = yield run(reactor, options.settings())
        if summary.problems or summary.sent == 0:
            raise SystemExit(1)

    task.react(_main)
