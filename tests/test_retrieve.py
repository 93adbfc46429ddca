"""
Tests for L{mxrecv.mms.retrieve}: GET-mode MMS downloaded from a RetrieveMMS
stand-in on 127.0.0.1, over HTTP and HTTPS, with real files; time (attempt
deadlines, backoff, expiry) on a L{Clock} where it matters.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import os
import stat
import subprocess
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote
from zoneinfo import ZoneInfo

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, succeed
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from mxrecv.config import Config, RetrieveConfig, ServerConfig, SpoolConfig
from mxrecv.message.dates import isoFromTimestamp, mxDate
from mxrecv.mms.complete import Completer
from mxrecv.mms.fetch import Download, Fetcher, RetrieveError, redirectOrigin
from mxrecv.mms.pending import PendingService, PendingWork
from mxrecv.mms.retrieve import (
    Retriever,
    expiryOf,
    makeRetriever,
    retrievalWindow,
    whereRaised,
)
from mxrecv.mms.schedule import Completed, GaveUp
from mxrecv.ops.cli import requeue
from mxrecv.ops.metrics import RETRIEVAL_OUTCOMES, Metrics
from mxrecv.spool.layout import FAILED, MMS_ZIP, NEW, PARTIAL_ZIP, PENDING, RETRIEVE_JSON
from mxrecv.spool.mode import SpoolMode
from mxrecv.spool.naming import nameForId
from mxrecv.spool.store import Spool
from mxrecv.spool.writer import FileWriters
from mxrecv.tap import makeService
from mxrecv.testing.retrievemms import (
    Hang,
    QuietSite,
    Redirect,
    RetrieveMMS,
    Serve,
    Stream,
    Trickle,
    Truncate,
)
from mxrecv.testing.zips import makeZip
from mxrecv.tls.client import tlsPolicy

from .certificates import TestCA
from .support import (
    GatedPool,
    LogWatch,
    exampleMessage,
    fileWriters,
    fillUp,
    httpClient,
    openFiles,
    reactorTurns,
    serveLoopback,
    smallFilesystem,
    startedPool,
    turnsUntil,
)

NOW = 1_800_000_000.0
PASSWORD = "s3cr&t/pa ss"
LONDON = ZoneInfo("Europe/London")


def attemptFailed(event: dict) -> bool:
    return "outcome" in event and event.get("log_namespace") == "mxrecv.mms.retrieve"


class RetrieveTestCase(TestCase):
    """
    A spool, a completer, a log watch that proves the password never shows,
    and RetrieveMMS stand-ins.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.pool = startedPool(self)
        self.root = Path(self.mktemp())
        self.spool = Spool(self.root, reactor=reactor, pool=self.pool)
        self.spool.open()
        self.addCleanup(self.spool.close)
        self.completer = Completer(self.spool, reactor=reactor, pool=self.pool)
        self.writers = fileWriters(self)
        self.log = LogWatch()
        globalLogPublisher.addObserver(self.log)
        self.addCleanup(self._noPassword)
        self.addCleanup(globalLogPublisher.removeObserver, self.log)

    def _noPassword(self) -> None:
        text = self.log.text()
        for path in self.root.rglob("*"):
            # The zips and their parts are the MMS's own bytes (random data,
            # in which four given characters turn up now and then).
            if path.is_file() and path.suffix not in (".zip", ".part") and "parts" not in path.parts:
                text += path.read_text("utf-8", "replace")
        # Whatever its encoding (once, twice), or however short a piece of
        # it: every form of it starts with these characters.
        for secret in (PASSWORD, "s3cr"):
            self.assertNotIn(secret, text)

    def standIn(self, script=(), tls: TestCA | None = None, names=("127.0.0.1",), **kw):
        """
        Serve a stand-in on 127.0.0.1; return it and its URL.
        """
        resource = RetrieveMMS(reactor, list(script), **kw)
        root = serveLoopback(self, QuietSite(resource), tls, names)
        self.addCleanup(resource.whenIdle)
        return resource, f"{root}/RetrieveMMS"

    def retriever(
        self, url: str, clock=None, maxBody: int = 1 << 20, metrics=None, writers=None,
        threadReactor=reactor, **config,
    ) -> Retriever:
        settings = {
            "url": url,
            "user": "acme",
            "password": PASSWORD,
            "concurrency": 2,
            "timeout": 10.0,
            "backoff_initial": 5.0,
            "backoff_max": 40.0,
        }
        settings.update(config)
        r = makeRetriever(
            RetrieveConfig(**settings),
            spool=self.spool,
            completer=self.completer,
            reactor=threadReactor,
            pool=self.pool,
            writers=self.writers if writers is None else writers,
            zone=LONDON,
            maxBody=maxBody,
            clock=self.clock if clock is None else clock,
            random=lambda: 0.0,
            metrics=metrics,
        )
        self.addCleanup(r.stop)
        return r

    @inlineCallbacks
    def pend(self, messageId: str, expiresIn: float | None = 3600.0, clock=None):
        """
        Journal a GET-mode MMS notification in pending/, as the callback does.
        """
        now = (clock or self.clock).seconds()
        message = exampleMessage(
            id=messageId,
            type="mms",
            received=isoFromTimestamp(now),
            subject="Hello",
            expiry=None if expiresIn is None else mxDate(now + expiresIn),
        )
        accepted = yield self.spool.accept(message, PENDING)
        return accepted.name

    def smallSpool(self):
        """
        Move the test's spool onto a real 512 KiB filesystem, to fill up;
        return its mount point.
        """
        mount = smallFilesystem(self, "512k")
        self.root = mount / "spool"
        self.spool = Spool(self.root, reactor=reactor, pool=self.pool)
        self.spool.open()
        self.addCleanup(self.spool.close)
        self.completer = Completer(self.spool, reactor=reactor, pool=self.pool)
        return mount

    def assertAttemptUndone(self, name: str, writers) -> None:
        """
        A failed attempt left nothing behind: the message is still in
        pending/, its partial download is removed and closed, and the
        writers hold none of its bytes.
        """
        directory = self.spool.dir(PENDING) / name
        self.assertTrue((directory / "message.json").is_file())
        self.assertFalse((directory / PARTIAL_ZIP).exists())
        self.assertEqual([f for f in self.openMessageFiles() if PARTIAL_ZIP in f], [])
        self.assertEqual(writers.buffered, 0)

    def openMessageFiles(self) -> list[str]:
        """
        The files of messages (not the spool's own state) open in this process.
        """
        return [
            path
            for which in (PENDING, NEW, FAILED)
            for path in openFiles(self.spool.dir(which).absolute())
        ]

    def document(self, which: str, name: str) -> dict:
        return json.loads((self.spool.dir(which) / name / "message.json").read_bytes())


class DownloadTests(RetrieveTestCase):
    @inlineCallbacks
    def assertDownloads(self, retriever: Retriever, standIn: RetrieveMMS, messageId: str):
        name = yield self.pend(messageId)
        done = retriever.whenDone(name)
        retriever(name)
        outcome = yield done
        self.assertIsInstance(outcome, Completed)
        directory = self.spool.dir(NEW) / name
        zipBytes = standIn.default.body
        self.assertEqual((directory / MMS_ZIP).read_bytes(), zipBytes)
        document = self.document(NEW, name)
        self.assertEqual(document["mms_size"], len(zipBytes))
        self.assertEqual(document["mms_sha256"], hashlib.sha256(zipBytes).hexdigest())
        self.assertEqual(document["delivery"], "get")
        self.assertEqual(document["id"], messageId)
        self.assertEqual(sorted(p.name for p in directory.iterdir() if p.name != "parts"),
                         ["message.json", "mms.zip"])
        self.assertFalse((self.spool.dir(PENDING) / name).exists())
        self.assertEqual(
            standIn.requests, [{"user": "acme", "pass": PASSWORD, "id": messageId}]
        )

    def test_http(self):
        """
        A notified MMS is downloaded with the account's credentials and its
        id, and completed into new/ with its zip, size and hash.
        """
        standIn, url = self.standIn()
        return self.assertDownloads(self.retriever(url), standIn, "mx/1 2&3")

    @inlineCallbacks
    def test_idAsSent(self):
        """
        RetrieveMMS is asked for the id's bytes as MX Telecom sent them,
        not UTF-8 made of their decoding: an id that was not UTF-8 (here
        ISO-8859-15 "café") is sent back as it came.
        """
        standIn, url = self.standIn()
        retriever = self.retriever(url)
        message = exampleMessage(
            id="café",
            id_charset="iso-8859-15",
            type="mms",
            received=isoFromTimestamp(self.clock.seconds()),
            expiry=mxDate(self.clock.seconds() + 3600),
        )
        accepted = yield self.spool.accept(message, PENDING)
        self.assertEqual(accepted.name, "caf=E9")
        done = retriever.whenDone(accepted.name)
        retriever(accepted.name)
        self.assertIsInstance((yield done), Completed)
        self.assertEqual(standIn.ids, [b"caf\xe9"])
        document = self.document(NEW, accepted.name)
        self.assertEqual(document["id"].encode(document["id_charset"]), b"caf\xe9")

    @inlineCallbacks
    def test_chunked(self):
        """
        A body without a Content-Length is taken whole.
        """
        standIn, url = self.standIn()
        standIn.default = Serve(standIn.default.body, chunked=True)
        yield self.assertDownloads(self.retriever(url), standIn, "chunked-1")

    def test_https(self):
        """
        Over HTTPS, a server whose certificate comes from C{ca_file}'s CA and
        names the host is trusted.
        """
        ca = TestCA.make()
        caFile = Path(self.mktemp())
        caFile.write_bytes(ca.pem)
        standIn, url = self.standIn(tls=ca)
        return self.assertDownloads(self.retriever(url, ca_file=caFile), standIn, "tls-1")

    def test_httpsHostName(self):
        """
        Over HTTPS to a host name, the certificate must name that host.
        """
        ca = TestCA.make()
        caFile = Path(self.mktemp())
        caFile.write_bytes(ca.pem)
        standIn, url = self.standIn(tls=ca, names=("localhost",))
        url = url.replace("127.0.0.1", "localhost")
        return self.assertDownloads(self.retriever(url, ca_file=caFile), standIn, "tls-2")

    @inlineCallbacks
    def test_spoolMode(self):
        """
        A downloaded MMS (its zip written by the writers, its record and
        message.json rewritten, its parts unpacked) has the spool's mode,
        whatever the umask.
        """
        previous = os.umask(0o077)
        self.addCleanup(os.umask, previous)
        self.spool.close()
        mode = SpoolMode(0o660)
        self.spool = Spool(self.root, reactor=reactor, pool=self.pool, mode=mode)
        self.spool.open()
        self.addCleanup(self.spool.close)
        self.completer = Completer(self.spool, reactor=reactor, pool=self.pool)
        standIn, url = self.standIn([Serve(b"", status=503)])
        writers = fileWriters(self, mode=mode.file)
        retriever = self.retriever(url, writers=writers, backoff_initial=1.0)
        name = yield self.pend("mode-1")
        done = retriever.whenDone(name)
        failed = self.log.next(attemptFailed)
        retriever(name)
        yield failed
        self.clock.advance(1.0)
        yield done
        directory = self.spool.dir(NEW) / name
        found = {
            str(p.relative_to(directory)): stat.S_IMODE(p.stat().st_mode)
            for p in [directory, *directory.rglob("*")]
        }
        self.assertEqual(
            found,
            {".": 0o770, "message.json": 0o660, "mms.zip": 0o660, "parts": 0o770,
             "parts/mms.smil": 0o660, "parts/text.txt": 0o660, "parts/image.jpg": 0o660},
        )

    @inlineCallbacks
    def test_concurrency(self):
        """
        No more than C{concurrency} downloads run at once: with both slots
        held by a server that does not answer, the third waits; it starts
        when they time out, and their retries follow.
        """
        standIn, url = self.standIn([Hang(), Hang()])
        retriever = self.retriever(url, concurrency=2, timeout=10.0, backoff_initial=5.0)
        names = []
        for i in range(3):
            names.append((yield self.pend(f"c{i}")))
        done = [retriever.whenDone(n) for n in names]
        for n in names:
            retriever(n)
        yield standIn.whenRequested(2)
        self.assertEqual(retriever.schedule.inFlight, 2)
        self.assertEqual(len(standIn.requests), 2)
        failures = [self.log.next(attemptFailed), self.log.next(attemptFailed)]
        self.clock.advance(10.0)
        for d in failures:
            yield d
        hung = {r["id"] for r in standIn.requests[:2]}
        [third] = [d for d, n in zip(done, names) if n not in hung]
        self.assertEqual([a.outcome for a in (yield third).attempts], ["downloaded"])
        self.clock.advance(5.0)
        for d, n in zip(done, names):
            if n in hung:
                outcome = yield d
                self.assertEqual(
                    [a.outcome for a in outcome.attempts], ["timed out after 10 s", "downloaded"]
                )
        self.assertEqual(retriever.peakInFlight, 2)
        self.assertEqual(len(standIn.requests), 5)
        self.assertEqual(len(list(self.spool.dir(NEW).iterdir())), 3)


class FailureTests(RetrieveTestCase):
    """
    Each way an attempt can fail is recorded as the attempt's outcome; the
    expiry here leaves room for one attempt only, so the message goes to
    failed/ at once, with that attempt.
    """

    @inlineCallbacks
    def failsWith(self, script, expected: str, *, url=None, **config):
        if url is None:
            standIn, url = self.standIn(script)
        retriever = self.retriever(url, **config)
        name = yield self.pend("fail-1", expiresIn=3.0)
        done = retriever.whenDone(name)
        retriever(name)
        outcome = yield done
        self.assertIsInstance(outcome, GaveUp)
        document = self.document(FAILED, name)
        [attempt] = document["attempts"]
        self.assertEqual(attempt["outcome"], expected)
        self.assertEqual(attempt["at"], isoFromTimestamp(NOW))
        self.assertIn(expected, document["error"])
        self.assertIn("before its expiry", document["error"])
        self.assertEqual(document["mms_sha256"], None)
        directory = self.spool.dir(FAILED) / name
        self.assertEqual(sorted(p.name for p in directory.iterdir()), ["message.json"])
        self.assertFalse((self.spool.dir(PENDING) / name).exists())
        self.assertEqual(self.writers.buffered, 0)
        self.assertEqual(self.openMessageFiles(), [])
        return document

    def test_refused(self):
        port = reactor.listenTCP(0, QuietSite(RetrieveMMS(reactor)), interface="127.0.0.1")
        url = f"http://127.0.0.1:{port.getHost().port}/RetrieveMMS"
        return port.stopListening().addCallback(
            lambda _: self.failsWith([], "connection refused", url=url)
        )

    def test_serverError(self):
        return self.failsWith([Serve(b"oops", status=500)], "HTTP 500")

    def test_notFound(self):
        return self.failsWith([Serve(b"no such id", status=404)], "HTTP 404")

    @inlineCallbacks
    def test_unauthorized(self):
        """
        A refusal of our credentials is logged at the critical level, without
        the password.
        """
        yield self.failsWith(
            [Serve(b"bad password", status=401)], "HTTP 401: RetrieveMMS refused our credentials"
        )
        critical = [e for e in self.log.events if e["log_level"].name == "critical"]
        self.assertEqual(len(critical), 1)
        self.assertIn("refused our credentials", formatEvent(critical[0]))

    def test_redirect(self):
        """
        Redirects are not followed; of the location, only its scheme and
        host are recorded.
        """
        return self.failsWith(
            [Serve(b"", status=302, headers=((b"Location", b"HTTP://Elsewhere.example:8443/x?y=1"),))],
            "HTTP 302: redirect to http://elsewhere.example not followed",
        )

    def test_redirectQuotingTheRequest(self):
        """
        A redirect whose location carries our request's URL (and so the
        password) percent-encoded a second time, as a login page's
        C{return_to=} would, is recorded with its status, scheme and host
        only: no form of the password reaches the log, retrieve.json or
        failed/NAME/message.json (checked after every test).
        """
        return self.failsWith(
            [Redirect(lambda uri: b"https://login.example/sso?return_to=" + quote(uri, safe="").encode())],
            "HTTP 302: redirect to https://login.example not followed",
        )

    def test_redirectCutInThePassword(self):
        """
        A location so long that a cut at 200 characters would fall inside
        the password (where masking the whole password would miss it) is
        not recorded either.
        """

        def location(uri: bytes) -> bytes:
            head = b"http://elsewhere.example/"
            inPassword = uri.index(b"pass=") + len(b"pass=") + 4
            return head + b"x" * (200 - len(head) - inPassword) + uri

        return self.failsWith(
            [Redirect(location)], "HTTP 302: redirect to http://elsewhere.example not followed"
        )

    def test_redirectWithoutUsableLocation(self):
        """
        A relative location, or one whose host is not a host name, is not
        recorded at all.
        """
        return self.failsWith(
            [Serve(b"", status=301, headers=((b"Location", b"/RetrieveMMS?pass=x%25y"),))],
            "HTTP 301: redirect not followed",
        )

    def test_redirectToOddHost(self):
        return self.failsWith(
            [Serve(b"", status=307, headers=((b"Location", b"https://s3cr%26t@x%2F/"),))],
            "HTTP 307: redirect not followed",
        )

    def test_malformedResponseQuotingTheRequest(self):
        """
        A response that is not HTTP, whose first line quotes our request
        (and so the password), is recorded by what it was, not by what it
        said.
        """

        class Echo(Protocol):
            def dataReceived(self, data):
                self.transport.write(b"HTTP/1.1 X" + data.split(b"\r\n")[0] + b"\r\n\r\n")
                self.transport.loseConnection()

        factory = ServerFactory.forProtocol(Echo)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/RetrieveMMS"
        return self.failsWith([], "malformed response", url=url)

    def test_notZip(self):
        """
        A 200 whose body does not start like a zip is stopped early.
        """
        return self.failsWith(
            [Serve(b"<html>Service unavailable</html>")], "HTTP 200 but the body is not a zip"
        )

    def test_brokenZip(self):
        """
        A 200 whose body starts like a zip but is not one is refused.
        """
        return self.failsWith(
            [Serve(b"PK\x03\x04" + b"\0" * 200)], "HTTP 200 but the body (204 bytes) is not a zip"
        )

    def test_truncated(self):
        body = makeZip(10000)
        return self.failsWith([Truncate(body, 3000)], "body cut short after 3000 bytes")

    def test_tooLarge(self):
        """
        A body announced larger than server.max_body is not read.
        """
        return self.failsWith(
            [Serve(makeZip(10000))], "body larger than 5000 bytes", maxBody=5000
        )

    def test_tooLargeStreamed(self):
        """
        A body without a length is cut off once it passes server.max_body.
        """
        return self.failsWith(
            [Serve(makeZip(10000), chunked=True)], "body larger than 5000 bytes", maxBody=5000
        )

    @inlineCallbacks
    def test_timeoutBeforeHeaders(self):
        """
        A server that never answers is abandoned at the attempt's deadline,
        on the clock.
        """
        standIn, url = self.standIn([Hang()])
        retriever = self.retriever(url, timeout=3.0)
        name = yield self.pend("slow", expiresIn=6.0)
        done = retriever.whenDone(name)
        retriever(name)
        yield standIn.whenRequested(1)
        self.assertFalse(done.called)
        self.clock.advance(2.5)
        self.assertFalse(done.called)
        self.clock.advance(0.5)
        outcome = yield done
        self.assertEqual([a.outcome for a in outcome.attempts], ["timed out after 3 s"])

    @inlineCallbacks
    def test_timeoutCoversBody(self):
        """
        The deadline covers the whole body: a server that sends a byte now
        and then is cut off.  (On the reactor's own clock, with a short
        timeout: the server never finishes, so only the deadline can end it.)
        """
        standIn, url = self.standIn([Trickle(0.02)])
        retriever = self.retriever(url, clock=reactor, timeout=0.3)
        name = yield self.pend("trickle", expiresIn=3.0, clock=reactor)
        done = retriever.whenDone(name)
        retriever(name)
        outcome = yield done
        self.assertEqual([a.outcome for a in outcome.attempts], ["timed out after 0.3 s"])

    def test_untrustedCertificate(self):
        """
        Without C{ca_file}, a certificate from an unknown CA is refused.
        """
        standIn, url = self.standIn(tls=TestCA.make())
        return self.failsWith(
            [], "TLS handshake failed: certificate verify failed", url=url
        )

    def test_wrongHost(self):
        """
        A certificate from the trusted CA for another host is refused.
        """
        ca = TestCA.make()
        caFile = Path(self.mktemp())
        caFile.write_bytes(ca.pem)
        standIn, url = self.standIn(tls=ca, names=("elsewhere.example",))
        return self.failsWith(
            [], "TLS handshake failed: the certificate does not name the host",
            url=url, ca_file=caFile,
        )


MiB = 1024 * 1024
# The writers' bound per file in the tests below, and the most a TCP
# transport reads at once (so the most that arrives after a pause).
FILE_LIMIT = 256 * 1024
READ = 65536


def bigZip(size: int) -> bytes:
    """
    A zip holding one stored entry of C{size} random bytes.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        z.writestr("video.3gp", os.urandom(size))
    return buffer.getvalue()


def zipLike(size: int) -> bytes:
    """
    C{size} random bytes that start like a zip (all a download checks).
    """
    return b"PK\x03\x04" + os.urandom(size - 4)


class WriterTests(RetrieveTestCase):
    """
    Downloads go through the writers (L{mxrecv.spool.writer}) on a thread pool the
    test holds, so that they fall behind for as long as it wants: the
    reactor writes nothing, the response is paused at the writer's bound,
    and an attempt that fails or is abandoned settles only once its file
    is closed.
    """

    def heldWriters(self, fileLimit: int = FILE_LIMIT) -> tuple[GatedPool, FileWriters]:
        gate = GatedPool(self)
        writers = FileWriters(
            reactor=reactor,
            pool=gate.pool,
            fileLimit=fileLimit,
            totalLimit=2 * fileLimit,
            batch=16 * 1024,
        )
        return gate, writers

    def hold(self, gate: GatedPool) -> None:
        """
        Hold the writers' threads until the test releases them or ends
        (before the clean-ups registered earlier, such as a fetcher's or a
        retriever's, which wait for the files to be closed).
        """
        gate.hold()
        self.addCleanup(gate.release)

    def fetcher(self, url: str, writers: FileWriters, maxBody: int = 64 * MiB) -> Fetcher:
        fetcher = Fetcher(
            reactor=reactor,
            clock=self.clock,
            url=url,
            user="acme",
            password=PASSWORD,
            maxBody=maxBody,
            connectTimeout=10.0,
            policy=tlsPolicy(),
            writers=writers,
        )
        self.addCleanup(fetcher.close)
        return fetcher

    def part(self) -> Path:
        directory = Path(self.mktemp()).absolute()
        directory.mkdir()
        return directory / PARTIAL_ZIP

    @inlineCallbacks
    def test_writtenByTheWriterThreads(self):
        """
        A download's bytes are written by the writers' threads, not by the
        reactor: while those threads are held the download takes bytes in
        but none reach the file; released, the zip lands in new/ whole, its
        size and hash in message.json.
        """
        gate, writers = self.heldWriters()
        zipBytes = bigZip(16 * MiB)
        standIn, url = self.standIn([Stream(zipBytes)])
        retriever = self.retriever(url, maxBody=64 * MiB, writers=writers)
        name = yield self.pend("held-1")
        done = retriever.whenDone(name)
        self.hold(gate)
        retriever(name)
        yield turnsUntil(lambda: writers.buffered > FILE_LIMIT or done.called)
        self.assertFalse(done.called)
        self.assertEqual((self.spool.dir(PENDING) / name / PARTIAL_ZIP).stat().st_size, 0)
        gate.release()
        outcome = yield done
        self.assertIsInstance(outcome, Completed)
        document = self.document(NEW, name)
        self.assertEqual(document["mms_size"], len(zipBytes))
        self.assertEqual(document["mms_sha256"], hashlib.sha256(zipBytes).hexdigest())
        self.assertEqual((self.spool.dir(NEW) / name / MMS_ZIP).read_bytes(), zipBytes)
        self.assertEqual(writers.buffered, 0)
        self.assertEqual(self.openMessageFiles(), [])

    test_writtenByTheWriterThreads.timeout = 60

    @inlineCallbacks
    def test_slowDiskPausesTheResponse(self):
        """
        While the writer is behind, the response is paused once the download
        buffers more than the writer's bound: what is held in memory stays
        within the bound and one read, and takes in nothing more however
        long the writer stays held; the rest waits at the server.  Released,
        the download completes whole.
        """
        gate, writers = self.heldWriters()
        body = zipLike(16 * MiB)
        standIn, url = self.standIn([Stream(body)])
        part = self.part()
        fetcher = self.fetcher(url, writers)
        self.hold(gate)
        fetched = fetcher.fetch("big-1", part, NOW + 10)
        yield turnsUntil(lambda: writers.buffered > FILE_LIMIT or fetched.called)
        self.assertFalse(fetched.called)
        held = writers.buffered
        self.assertLessEqual(held, FILE_LIMIT + READ)
        yield reactorTurns(200)
        self.assertEqual(writers.buffered, held)
        self.assertLess(standIn.sent, len(body))
        self.assertEqual(part.stat().st_size, 0)
        gate.release()
        download = yield fetched
        self.assertEqual(download, Download(len(body), hashlib.sha256(body).hexdigest()))
        self.assertEqual(part.stat().st_size, len(body))
        self.assertEqual(writers.buffered, 0)
        self.assertEqual(openFiles(part.parent), [])

    test_slowDiskPausesTheResponse.timeout = 60

    @inlineCallbacks
    def failsWhileBehind(self, behaviour, expected: str, *, stall=True, maxBody=64 * MiB):
        """
        Fetch with the writer held until the download has filled the
        writer's bound and the clock passes the deadline (C{stall}), or
        until the stand-in is done: the attempt must not settle while the
        writer holds the file, and when it does, with C{expected}, nothing
        holds the file any more.
        """
        gate, writers = self.heldWriters(FILE_LIMIT if stall else 4 * MiB)
        standIn, url = self.standIn([behaviour])
        part = self.part()
        fetcher = self.fetcher(url, writers, maxBody)
        self.hold(gate)
        fetched = fetcher.fetch("mid-1", part, NOW + 10)
        openWhenSettled = []
        fetched.addBoth(lambda result: (openWhenSettled.append(openFiles(part.parent)), result)[1])
        if stall:
            yield turnsUntil(lambda: writers.buffered > FILE_LIMIT or fetched.called)
            self.clock.advance(10.0)
        else:
            yield standIn.whenRequested(1)
            yield standIn.whenIdle()
        yield reactorTurns(200)
        self.assertFalse(fetched.called)
        gate.release()
        error = yield self.assertFailure(fetched, RetrieveError)
        self.assertEqual(str(error), expected)
        self.assertEqual(openWhenSettled, [[]])
        self.assertEqual(writers.buffered, 0)

    def test_truncatedWhileBehind(self):
        """
        A body cut short while its writer is behind.  (Cut within the
        stand-in's send buffer: past it, Twisted would not close.)
        """
        return self.failsWhileBehind(
            Truncate(zipLike(1 * MiB), 60000), "body cut short after 60000 bytes", stall=False
        )

    def test_tooLargeWhileBehind(self):
        """
        A body without a length that passes the cap while its writer is
        behind.
        """
        return self.failsWhileBehind(
            Serve(zipLike(2 * MiB), chunked=True), "body larger than 1048576 bytes",
            stall=False, maxBody=1 * MiB,
        )

    def test_timeoutWhileBehind(self):
        """
        The deadline (on the clock) also ends a download paused by its
        writer.
        """
        return self.failsWhileBehind(Stream(zipLike(16 * MiB)), "timed out after 10 s")

    @inlineCallbacks
    def test_cancelWhileBehind(self):
        """
        Cancelling abandons the attempt at once; the fetcher's close waits
        until the writer has closed the file.
        """
        gate, writers = self.heldWriters()
        standIn, url = self.standIn([Stream(zipLike(16 * MiB))])
        part = self.part()
        fetcher = self.fetcher(url, writers)
        self.hold(gate)
        fetched = fetcher.fetch("cancel-1", part, NOW + 10)
        yield turnsUntil(lambda: writers.buffered > FILE_LIMIT or fetched.called)
        fetched.cancel()
        yield self.assertFailure(fetched, CancelledError)
        closed = fetcher.close()
        yield reactorTurns(200)
        self.assertFalse(closed.called)
        self.assertEqual(len(openFiles(part.parent)), 1)
        gate.release()
        yield closed
        self.assertEqual(openFiles(part.parent), [])
        self.assertEqual(writers.buffered, 0)

    @inlineCallbacks
    def test_timeoutMidDownloadDiscardsThePart(self):
        """
        A download timed out while its writer is behind is recorded as a
        failed attempt once the writer has closed the part, which is
        removed; the message waits in pending/ for its retry.
        """
        gate, writers = self.heldWriters()
        standIn, url = self.standIn([Stream(bigZip(16 * MiB))])
        retriever = self.retriever(url, maxBody=64 * MiB, writers=writers, timeout=10.0)
        name = yield self.pend("mid-2")
        failed = self.log.next(attemptFailed)
        self.hold(gate)
        retriever(name)
        yield turnsUntil(lambda: writers.buffered > FILE_LIMIT or failed.called)
        self.clock.advance(10.0)
        yield reactorTurns(200)
        self.assertFalse(failed.called)
        gate.release()
        event = yield failed
        self.assertEqual(event["outcome"], "timed out after 10 s")
        self.assertAttemptUndone(name, writers)

    @inlineCallbacks
    def test_diskFullKeepsItPending(self):
        """
        A download that meets a full disk (a small real tmpfs) is a failed
        attempt, "cannot write mms.zip.part: ...": the part is removed, the
        message stays in pending/ with the attempt journaled, and once there
        is room the retry completes it.
        """
        mount = self.smallSpool()
        zipBytes = bigZip(900 * 1024)
        standIn, url = self.standIn([Stream(zipBytes)])
        standIn.default = Serve(zipBytes)
        retriever = self.retriever(url, backoff_initial=5.0)
        name = yield self.pend("full-1")
        done = retriever.whenDone(name)
        failed = self.log.next(attemptFailed)
        retriever(name)
        event = yield failed
        self.assertEqual(event["outcome"], "cannot write mms.zip.part: No space left on device")
        self.assertAttemptUndone(name, self.writers)
        self.assertFalse(done.called)

        subprocess.run(["mount", "-o", "remount,size=16m", str(mount)], check=True)
        self.clock.advance(5.0)
        outcome = yield done
        self.assertEqual(
            [a.outcome for a in outcome.attempts],
            ["cannot write mms.zip.part: No space left on device", "downloaded"],
        )
        self.assertEqual(self.document(NEW, name)["mms_sha256"], hashlib.sha256(zipBytes).hexdigest())


class LocalErrorTests(RetrieveTestCase):
    @inlineCallbacks
    def test_completionRecoveredOnItsOwn(self):
        """
        A downloaded MMS whose completion stops on a full disk is taken up
        again on its own a second later (not at the next sweep), and
        completed once there is room, without being downloaded again.
        """
        mount = self.smallSpool()
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("big.txt", b"\0" * (900 * 1024))
        standIn, url = self.standIn()
        standIn.default = Serve(buffer.getvalue())
        retriever = self.retriever(url)
        pending = PendingWork(self.spool, self.completer, retriever, clock=self.clock)
        name = yield self.pend("full-2")
        landed: Deferred[str] = Deferred()
        self.spool.observeNew(landed.callback)
        stopped = self.log.next(lambda e: "stopped on a local error" in e.get("log_format", ""))
        pending(name)
        yield stopped
        self.flushLoggedErrors(OSError)
        self.assertEqual(pending.recovery.waiting, 1)
        subprocess.run(["mount", "-o", "remount,size=16m", str(mount)], check=True)
        self.clock.advance(1.0)
        # A bound on a failure, not a synchronisation: only the new try
        # would complete it before the sweep.
        self.assertEqual((yield landed.addTimeout(30, reactor)), name)
        self.assertTrue((self.spool.dir(NEW) / name / "parts" / "big.txt").is_file())
        self.assertEqual(len(standIn.requests), 1)
        yield turnsUntil(lambda: pending.recovery.waiting == 0)

    @inlineCallbacks
    def test_setUpRecoveredOnItsOwn(self):
        """
        A GET-mode MMS whose files cannot be read to set its download up
        (here message.json is, for a while, a directory: EISDIR) is taken
        up again after 1 s, then 2 s, and downloaded once they can.
        """
        standIn, url = self.standIn()
        retriever = self.retriever(url)
        pending = PendingWork(self.spool, self.completer, retriever, clock=self.clock)
        name = yield self.pend("setup-1")
        document = self.spool.dir(PENDING) / name / "message.json"
        good = document.read_bytes()
        document.unlink()
        document.mkdir()

        def stopped(event):
            return "stopped on a local error" in event.get("log_format", "")

        failed = self.log.next(stopped)
        pending(name)
        yield failed
        failed = self.log.next(stopped)
        self.clock.advance(1.0)
        yield failed
        self.flushLoggedErrors(OSError)
        self.assertEqual(standIn.requests, [])
        document.rmdir()
        document.write_bytes(good)
        done = retriever.whenDone(name)
        self.clock.advance(1.9)
        self.assertFalse(retriever.handles(name))
        self.clock.advance(0.1)
        self.assertIsInstance((yield done), Completed)
        self.assertEqual(len(standIn.requests), 1)
        yield turnsUntil(lambda: pending.recovery.waiting == 0)


class RecordFailureTests(RetrieveTestCase):
    @inlineCallbacks
    def test_failedRecordLeavesNothingInNew(self):
        """
        When the record of a failed attempt cannot be written (a full disk,
        after its temporary file was created), nothing of that write is
        left behind: once there is room again the retry downloads the zip
        and the message arrives in new/NAME with only message.json, mms.zip
        and parts/.
        """
        mount = self.smallSpool()
        standIn, url = self.standIn([Serve(b"", status=500)])
        retriever = self.retriever(url, backoff_initial=5.0)
        name = yield self.pend("record-1")
        filler = fillUp(mount)
        done = retriever.whenDone(name)
        notRecorded = self.log.next(
            lambda e: e.get("log_format", "").startswith("Recording attempts")
        )
        retriever(name)
        yield notRecorded
        self.flushLoggedErrors(OSError)
        filler.unlink()
        self.clock.advance(5.0)
        outcome = yield done
        self.assertIsInstance(outcome, Completed)
        self.assertEqual(
            sorted(p.name for p in (self.spool.dir(NEW) / name).iterdir()),
            ["message.json", "mms.zip", "parts"],
        )


def attemptCounts(metrics: Metrics) -> dict[str, float]:
    """
    The retrieval attempts counted, by outcome (those counted at all).
    """
    counts = {
        outcome: metrics.registry.get_sample_value(
            "mxrecv_retrieval_attempts_total", {"outcome": outcome}
        )
        for outcome in RETRIEVAL_OUTCOMES
    }
    return {outcome: n for outcome, n in counts.items() if n}


class LostTests(RetrieveTestCase):
    @inlineCallbacks
    def test_takenUpAgainAfterAFailedStep(self):
        """
        A message whose step failed (here, an unreadable message.json) is
        not forgotten until the next start: taken up again once the cause
        is gone, it is downloaded.
        """
        standIn, url = self.standIn()
        retriever = self.retriever(url)
        name = yield self.pend("lost-1")
        document = self.spool.dir(PENDING) / name / "message.json"
        good = document.read_bytes()
        document.write_bytes(b"{")
        failed = retriever.whenDone(name)
        retriever(name)
        yield self.assertFailure(failed, ValueError)
        self.flushLoggedErrors(ValueError)
        document.write_bytes(good)
        done = retriever.whenDone(name)
        retriever(name)
        outcome = yield done
        self.assertIsInstance(outcome, Completed)
        self.assertTrue((self.spool.dir(NEW) / name / MMS_ZIP).is_file())


class RetryTests(RetrieveTestCase):
    @inlineCallbacks
    def failUntilDone(self, retriever, name, done, attempts=None):
        """
        Let each attempt at C{name} fail, advancing the clock to each retry,
        until it is given up (or, with C{attempts}, that many attempts have
        failed); return the outcome (or L{None}) and the attempts made.
        """
        failures = 0
        while True:
            failed = self.log.next(attemptFailed)
            if failures:
                wake = retriever.schedule.wakeAt()
                self.clock.advance(max(0.0, wake - self.clock.seconds()))
                if name not in retriever.schedule:
                    # Given up while waiting: no attempt could start in time.
                    break
            yield failed
            failures += 1
            if failures == attempts:
                return None, failures
            if name not in retriever.schedule:
                break
        return (yield done), failures

    @inlineCallbacks
    def oneRequestPerAttempt(self, tls=None, **config):
        script = [
            Serve(b"no such id", status=404),
            Serve(b"<html>Service unavailable</html>"),
            Serve(b"x" * 100_000, status=500),
            Serve(b"<html>Busy</html>", status=503),
            Serve(b"<html>" + b"x" * 200_000),
        ]
        standIn, url = self.standIn(script, tls=tls)
        retriever = self.retriever(url, backoff_initial=1.0, backoff_max=1.0, **config)
        name = yield self.pend("once-each")
        done = retriever.whenDone(name)
        failed = self.log.next(attemptFailed)
        retriever(name)
        outcomes = [(yield failed)["outcome"]]
        for _ in range(4):
            failed = self.log.next(attemptFailed)
            self.clock.advance(1.0)
            outcomes.append((yield failed)["outcome"])
        self.clock.advance(1.0)
        self.assertIsInstance((yield done), Completed)
        self.assertEqual(
            outcomes,
            ["HTTP 404", "HTTP 200 but the body is not a zip", "HTTP 500", "HTTP 503",
             "HTTP 200 but the body is not a zip"],
        )
        self.assertEqual(len(standIn.requests), 6)

    def test_oneRequestPerAttempt(self):
        """
        Each attempt sends RetrieveMMS one request, also after answers that
        were refused before the end of their body, however much of it was
        in already (an error page, a page that is not a zip): their
        connection, closing, is not kept for the next attempt.
        """
        return self.oneRequestPerAttempt()

    def test_oneRequestPerAttemptHTTPS(self):
        """
        Over HTTPS too, where the connection that closes is under TLS.
        """
        ca = TestCA.make()
        caFile = Path(self.mktemp())
        caFile.write_bytes(ca.pem)
        return self.oneRequestPerAttempt(tls=ca, ca_file=caFile)

    @inlineCallbacks
    def test_retrievalWindowCapped(self):
        """
        An MMS whose expiry is centuries away (9999-12-31) and whose
        RetrieveMMS keeps answering 404 is tried only for [retrieve]
        max_window_days after it was received, then goes to failed/.  Its
        record stays bounded however many attempts it took: the count of
        them and the last ten, in retrieve.json (across a restart) as in
        failed/NAME/message.json.
        """
        standIn, url = self.standIn()
        standIn.default = Serve(b"no such id", status=404)
        window = 600.0 / 86400
        retriever = self.retriever(url, backoff_initial=5.0, backoff_max=40.0, max_window_days=window)
        name = yield self.pend("forever", expiresIn=None)
        message = self.spool.dir(PENDING) / name / "message.json"
        document = json.loads(message.read_bytes())
        document["expiry"] = "9999-12-31 23:59:59"
        message.write_bytes(json.dumps(document).encode())
        done = retriever.whenDone(name)
        retriever(name)
        yield self.failUntilDone(retriever, name, done, attempts=12)
        yield retriever.stop()
        state = json.loads((self.spool.dir(PENDING) / name / RETRIEVE_JSON).read_bytes())
        self.assertEqual(state["attempt_count"], 12)
        self.assertEqual(len(state["attempts"]), 10)
        self.assertEqual(state["attempts"][-1]["outcome"], "HTTP 404")

        second = self.retriever(url, backoff_initial=5.0, backoff_max=40.0, max_window_days=window)
        done = second.whenDone(name)
        second(name)
        outcome, more = yield self.failUntilDone(second, name, done)
        self.assertIsInstance(outcome, GaveUp)
        self.assertLessEqual(self.clock.seconds(), NOW + 600.0)
        count = 12 + more
        self.assertGreater(more, 1)
        document = self.document(FAILED, name)
        self.assertEqual(document["attempt_count"], count)
        self.assertEqual(len(document["attempts"]), 10)
        self.assertEqual(
            document["error"],
            "not downloaded from RetrieveMMS before the end of its retrieval window "
            f"({isoFromTimestamp(NOW + 600.0)}) after {count} attempts; the last one: HTTP 404",
        )

    @inlineCallbacks
    def test_backoff(self):
        """
        Failures are retried after backoff_initial, then twice as long; the
        attempts so far are journaled in pending/NAME between attempts.
        """
        standIn, url = self.standIn([Serve(b"", status=503), Serve(b"", status=500)])
        metrics = Metrics()
        retriever = self.retriever(url, backoff_initial=5.0, backoff_max=40.0, metrics=metrics)
        name = yield self.pend("retry-1")
        done = retriever.whenDone(name)
        failed = self.log.next(attemptFailed)
        retriever(name)
        yield failed
        self.assertEqual(retriever.schedule.inFlight, 0)
        self.clock.advance(4.5)
        self.assertEqual(retriever.schedule.inFlight, 0)
        failed = self.log.next(attemptFailed)
        self.clock.advance(0.5)
        self.assertEqual(retriever.schedule.inFlight, 1)
        yield failed
        self.clock.advance(9.5)
        self.assertEqual(retriever.schedule.inFlight, 0)
        self.clock.advance(0.5)
        self.assertEqual(retriever.schedule.inFlight, 1)
        outcome = yield done
        self.assertEqual(
            [a.outcome for a in outcome.attempts], ["HTTP 503", "HTTP 500", "downloaded"]
        )
        self.assertEqual(len(standIn.requests), 3)
        self.assertTrue((self.spool.dir(NEW) / name / MMS_ZIP).is_file())
        self.assertEqual(attemptCounts(metrics), {"http_5xx": 2, "ok": 1})

    @inlineCallbacks
    def test_expiresAfterRetries(self):
        """
        Retries stop at the expiry: when the next backoff would pass it, one
        last attempt is made so that it ends by the expiry, then the message
        goes to failed/ with every attempt, in order, with its time.
        """
        standIn, url = self.standIn([Serve(b"", status=500)] * 4)
        metrics = Metrics()
        retriever = self.retriever(url, backoff_initial=5.0, backoff_max=40.0, metrics=metrics)
        name = yield self.pend("expires", expiresIn=20.0)
        done = retriever.whenDone(name)
        failed = self.log.next(attemptFailed)
        retriever(name)
        yield failed
        failed = self.log.next(attemptFailed)
        self.clock.advance(5.0)
        yield failed
        # The next retry would be at 15 s: still before the expiry.
        failed = self.log.next(attemptFailed)
        self.clock.advance(10.0)
        yield failed
        # The next would be at 35 s, past the expiry: the last chance comes
        # at 18.75 s (the shortest first retry after the failure at 15 s).
        self.clock.advance(3.7)
        self.assertEqual(len(standIn.requests), 3)
        failed = self.log.next(attemptFailed)
        self.clock.advance(0.05)
        yield failed
        outcome = yield done
        self.assertIsInstance(outcome, GaveUp)
        document = self.document(FAILED, name)
        self.assertEqual(
            document["attempts"],
            [
                {"at": isoFromTimestamp(NOW), "outcome": "HTTP 500"},
                {"at": isoFromTimestamp(NOW + 5), "outcome": "HTTP 500"},
                {"at": isoFromTimestamp(NOW + 15), "outcome": "HTTP 500"},
                {"at": isoFromTimestamp(NOW + 18.75), "outcome": "HTTP 500"},
            ],
        )
        self.assertEqual(len(standIn.requests), 4)
        self.assertEqual(
            [p.name for p in (self.spool.dir(FAILED) / name).iterdir()], ["message.json"]
        )
        self.assertEqual(attemptCounts(metrics), {"http_5xx": 4})
        self.assertEqual(metrics.registry.get_sample_value("mxrecv_expired_total"), 1)


class RestartTests(RetrieveTestCase):
    @inlineCallbacks
    def test_resumeWithHistory(self):
        """
        A restart takes up a pending download with its attempts so far, and
        discards a half-written download.
        """
        standIn, url = self.standIn([Serve(b"", status=500), Hang(), Serve(b"", status=502)])
        first = self.retriever(url, timeout=10.0, backoff_initial=5.0)
        name = yield self.pend("restart-1", expiresIn=14.0)
        failed = self.log.next(attemptFailed)
        first(name)
        yield failed
        yield first.stop()
        directory = self.spool.dir(PENDING) / name
        state = json.loads((directory / RETRIEVE_JSON).read_bytes())
        self.assertEqual(state["attempts"], [{"at": isoFromTimestamp(NOW), "outcome": "HTTP 500"}])
        (directory / PARTIAL_ZIP).write_bytes(b"PK\x03\x04half")

        self.clock.advance(1.0)
        second = self.retriever(url, timeout=10.0, backoff_initial=5.0)
        done = second.whenDone(name)
        second(name)
        yield standIn.whenRequested(2)
        self.assertFalse((directory / PARTIAL_ZIP).exists())
        self.clock.advance(10.0)
        outcome = yield done
        self.assertIsInstance(outcome, GaveUp)
        self.assertEqual(
            [a["outcome"] for a in self.document(FAILED, name)["attempts"]],
            ["HTTP 500", "timed out after 10 s"],
        )

    @inlineCallbacks
    def test_neverDownloadedTwice(self):
        """
        An MMS whose zip is in place (a crash after the download) is
        completed, not downloaded again; a completed one is not retrieved.
        """
        standIn, url = self.standIn()
        retriever = self.retriever(url)
        name = yield self.pend("once")
        zipBytes = makeZip(100)
        (self.spool.dir(PENDING) / name / MMS_ZIP).write_bytes(zipBytes)
        pending = PendingWork(self.spool, self.completer, retrieve=retriever, clock=self.clock)
        completed = self.log.next(lambda e: e.get("name") == name and "parts" in e)
        self.assertEqual((yield pending.resume()), 1)
        yield completed
        self.assertEqual(self.document(NEW, name)["mms_size"], len(zipBytes))
        self.assertEqual((yield pending.resume()), 0)
        self.assertEqual(standIn.requests, [])


class RequeueTests(RetrieveTestCase):
    @inlineCallbacks
    def test_requeuedRetrievedAgain(self):
        """
        An MMS reaches failed/ because its expiry passed; requeued (mxrecv
        requeue), it gets a new window from the requeue and is downloaded,
        rather than given up again at once with no attempt.  The window
        survives a failed attempt's record (and so a restart).
        """
        standIn, url = self.standIn([Serve(b"", status=500), Serve(b"", status=503)])
        retriever = self.retriever(url, backoff_initial=5.0)
        name = yield self.pend("rq-1", expiresIn=2.0)
        done = retriever.whenDone(name)
        retriever(name)
        self.assertIsInstance((yield done), GaveUp)

        self.clock.advance(60.0)
        requeue(self.root, name, io.StringIO(), now=self.clock.seconds())
        state = json.loads((self.spool.dir(PENDING) / name / RETRIEVE_JSON).read_bytes())
        self.assertEqual(
            state, {"attempts": [], "attempt_count": 0, "requeued": isoFromTimestamp(NOW + 60)}
        )
        failed = self.log.next(attemptFailed)
        retriever(name)
        yield failed
        self.assertEqual(len(standIn.requests), 2)
        yield retriever.stop()
        state = json.loads((self.spool.dir(PENDING) / name / RETRIEVE_JSON).read_bytes())
        self.assertEqual(state["requeued"], isoFromTimestamp(NOW + 60))
        self.assertEqual([a["outcome"] for a in state["attempts"]], ["HTTP 503"])

        second = self.retriever(url, backoff_initial=5.0)
        done = second.whenDone(name)
        second(name)
        yield standIn.whenRequested(3)
        outcome = yield done
        self.assertIsInstance(outcome, Completed)
        self.assertEqual([a.outcome for a in outcome.attempts], ["HTTP 503", "downloaded"])
        self.assertTrue((self.spool.dir(NEW) / name / MMS_ZIP).is_file())


class HeldReactor:
    """
    The real reactor, except that results from threads wait while
    C{holding}: a slow directory fsync, or a busy reactor, on demand.
    """

    def __init__(self):
        self.holding = False
        self.held = []

    def __getattr__(self, name):
        return getattr(reactor, name)

    def callFromThread(self, f, *args, **kw):
        if self.holding:
            self.held.append((f, args, kw))
        else:
            reactor.callFromThread(f, *args, **kw)

    def release(self):
        self.holding = False
        held, self.held = self.held, []
        for f, args, kw in held:
            reactor.callFromThread(f, *args, **kw)


class SweepTests(RetrieveTestCase):
    @inlineCallbacks
    def test_sweepLeavesRetrievalAlone(self):
        """
        A sweep of pending/ that comes while a downloaded zip is in place but
        the retriever has not yet seen its install leaves the message to the
        retriever, which completes it once, without a failure logged.
        """
        standIn, url = self.standIn()
        held = HeldReactor()
        retriever = self.retriever(url, threadReactor=held)
        failures = []

        def watch(event):
            if event.get("log_failure") is not None:
                failures.append(event)

        globalLogPublisher.addObserver(watch)
        self.addCleanup(globalLogPublisher.removeObserver, watch)
        name = yield self.pend("mx-race")
        sweeps = Clock()
        service = PendingService(
            PendingWork(self.spool, self.completer, retriever, clock=sweeps), sweeps
        )
        service.startService()
        self.addCleanup(service.stopService)
        done = retriever.whenDone(name)
        yield turnsUntil(lambda: retriever.schedule.inFlight == 1)
        held.holding = True
        directory = self.spool.dir(PENDING) / name
        yield turnsUntil(lambda: held.held and (directory / MMS_ZIP).is_file())
        # What the sweep does every SWEEP_SECONDS, done now.
        yield service.pending.resume(sweep=True)
        # A completion the sweep started would be registered by now (the
        # sweep starts them as it takes names up); only the retriever may
        # start one.
        self.assertNotIn(name, self.completer._running)
        held.release()
        self.assertIsInstance((yield done), Completed)
        self.assertEqual([e["log_format"] for e in failures], [])
        self.assertTrue((self.spool.dir(NEW) / name / MMS_ZIP).is_file())


class ExpiryTests(TestCase):
    def message(self, expiry):
        return exampleMessage(
            id="x", type="mms", received="2026-11-25T10:00:01.000Z", expiry=expiry
        )

    def test_expiryInZone(self):
        """
        An expiry without an offset is in the configured zone.
        """
        self.assertEqual(
            expiryOf(self.message("2026-07-01 12:00:00"), LONDON),
            datetime(2026, 7, 1, 11, 0, 0, tzinfo=timezone.utc).timestamp(),
        )

    def test_expiryWithOffset(self):
        self.assertEqual(
            expiryOf(self.message("2026-07-01 12:00:00 +0000"), LONDON),
            datetime(2026, 7, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp(),
        )

    def test_windowCapped(self):
        """
        An MMS is tried until its expiry, but never more than the maximum
        window after it was received; a requeue gives it at least an hour
        from the requeue.
        """
        received = datetime(2026, 11, 25, 10, 0, 1, tzinfo=timezone.utc).timestamp()
        days = timedelta(days=3)
        self.assertEqual(
            retrievalWindow(self.message("9999-12-31 23:59:59"), LONDON, days),
            (received + 3 * 86400, "the end of its retrieval window"),
        )
        self.assertEqual(
            retrievalWindow(self.message("2026-11-26 10:00:01 +0000"), LONDON, days),
            (received + 86400, "its expiry"),
        )
        self.assertEqual(
            retrievalWindow(self.message(None), LONDON, days, "2026-12-01T00:00:00.000Z"),
            (datetime(2026, 12, 1, 1, tzinfo=timezone.utc).timestamp(), "the end of its requeue window"),
        )
        self.assertEqual(
            retrievalWindow(self.message(None), LONDON, days, "2026-11-25T10:30:00.000Z"),
            (received + 86400, "its expiry"),
        )

    def test_noExpiry(self):
        """
        Without an expiry, the message is assumed available for 24 hours
        after it was received.
        """
        self.assertEqual(
            expiryOf(self.message(None), LONDON),
            datetime(2026, 11, 26, 10, 0, 1, tzinfo=timezone.utc).timestamp(),
        )

    def test_caFileWithoutCertificate(self):
        """
        A ca_file that holds no certificate is refused, rather than silently
        trusting nothing more.
        """
        path = Path(self.mktemp())
        path.write_text("not a certificate\n")
        self.assertRaises(ValueError, tlsPolicy, path)

    def test_redirectOrigin(self):
        """
        Of a redirect's location, only a plain scheme and host (or address)
        are kept; anything else gives nothing.
        """
        for location, origin in [
            (b"https://mms2.example.com/RetrieveMMS?pass=x", "https://mms2.example.com"),
            (b"HTTPS://User:pw@MMS.Example.COM.:8443/x", "https://mms.example.com."),
            (b"http://192.0.2.1/x", "http://192.0.2.1"),
            (b"http://[2001:db8::1]:80/x", "http://[2001:db8::1]"),
            (b"/relative?pass=x", None),
            (b"//host-only.example/x", None),
            (b"https://a%2Fb.example/", None),
            (b"https://caf\xc3\xa9.example/", None),
            (b"https://[not-an-address]/", None),
            (b"", None),
            (None, None),
        ]:
            self.assertEqual(redirectOrigin(location), origin, location)

    def test_whereRaised(self):
        """
        An unexpected failure is logged with its type and frames, never its
        message.
        """
        try:
            raise ValueError("https://h/RetrieveMMS?user=u&pass=s3cr%26t")
        except ValueError:
            text = whereRaised(Failure())
        self.assertIn("builtins.ValueError raised at:", text)
        self.assertIn("test_whereRaised", text)
        self.assertNotIn("s3cr", text)


class EndToEndTests(RetrieveTestCase):
    """
    The whole server from L{makeService}: a GET MMS callback over a real
    port, journaled in pending/, downloaded, completed into new/.
    """

    def config(self, url: str, **retrieve) -> Config:
        return Config(
            server=ServerConfig(
                listen=("tcp:0:interface=127.0.0.1",),
                allow=(ipaddress.ip_network("127.0.0.0/8"),),
            ),
            spool=SpoolConfig(dir=self.root),
            retrieve=RetrieveConfig(url=url, user="acme", password=PASSWORD, **retrieve),
        )

    def setUp(self) -> None:
        super().setUp()
        # makeService opens the spool itself.
        self.spool.close()

    def start(self, config: Config, waitFor: str | None = None) -> Deferred:
        """
        Start the server; return it, its retriever, its URL, and (with
        C{waitFor}) a Deferred for that message's outcome, asked for before
        start-up takes up pending/.
        """
        service = makeService({"settings": config}, reactor)
        retriever = service.retriever
        done = retriever.whenDone(waitFor) if waitFor else None
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        port = service.listeners[0].port
        return succeed((service, retriever, f"http://127.0.0.1:{port.getHost().port}/", done))

    def callback(self, base: str, messageId: str, expiry: str | None) -> Deferred:
        params = [
            ("id", messageId), ("from", "447700900123"), ("to", "84545"),
            ("date", "2026-11-25 10:00:00"), ("type", "2"), ("subject", "Hi"),
        ]
        if expiry:
            params.append(("expiry", expiry))
        return httpClient(self).get(base, params=params).addCallback(
            lambda r: r.content().addCallback(lambda body: (r.code, body))
        )

    @inlineCallbacks
    def test_callbackToNew(self):
        standIn, url = self.standIn()
        service, retriever, base, _ = yield self.start(self.config(url))
        name = nameForId("e2e-1")
        done = retriever.whenDone(name)
        code, body = yield self.callback(base, "e2e-1", mxDate(reactor.seconds() + 86400))
        self.assertEqual((code, body), (200, b"OK\n"))
        outcome = yield done
        self.assertIsInstance(outcome, Completed)
        document = self.document(NEW, name)
        self.assertEqual(document["delivery"], "get")
        self.assertEqual(document["mms_size"], len(standIn.default.body))
        self.assertEqual(
            document["mms_sha256"], hashlib.sha256(standIn.default.body).hexdigest()
        )
        self.assertEqual((self.spool.dir(NEW) / name / MMS_ZIP).read_bytes(), standIn.default.body)
        yield service.stopService()

    @inlineCallbacks
    def test_callbackExpires(self):
        """
        A notification whose expiry passes before a download succeeds ends in
        failed/ with its attempt.
        """
        standIn, url = self.standIn([Serve(b"", status=500)])
        service, retriever, base, _ = yield self.start(self.config(url, backoff_initial=30.0))
        name = nameForId("e2e-2")
        done = retriever.whenDone(name)
        code, _ = yield self.callback(base, "e2e-2", mxDate(reactor.seconds() + 6))
        self.assertEqual(code, 200)
        self.assertIsInstance((yield done), GaveUp)
        document = self.document(FAILED, name)
        self.assertEqual([a["outcome"] for a in document["attempts"]], ["HTTP 500"])
        yield service.stopService()

    @inlineCallbacks
    def test_restart(self):
        """
        A download in flight at shutdown is abandoned, the message stays in
        pending/, and the next run on the same spool downloads it.
        """
        standIn, url = self.standIn([Hang()])
        service, retriever, base, _ = yield self.start(self.config(url))
        code, _ = yield self.callback(base, "e2e-3", mxDate(reactor.seconds() + 86400))
        self.assertEqual(code, 200)
        yield standIn.whenRequested(1)
        yield service.stopService()
        name = nameForId("e2e-3")
        self.assertTrue((self.spool.dir(PENDING) / name / "message.json").is_file())

        service, retriever, base, done = yield self.start(self.config(url), waitFor=name)
        self.assertIsInstance((yield done), Completed)
        self.assertTrue((self.spool.dir(NEW) / name / MMS_ZIP).is_file())
        self.assertEqual(len(standIn.requests), 2)
        yield service.stopService()

    def test_disabledWithoutUser(self):
        """
        Without a user, retrieval is off, with a warning.
        """
        config = Config(spool=SpoolConfig(dir=self.root))
        service = makeService({"settings": config}, reactor)
        self.assertIsNone(service.retriever)
        self.assertTrue(
            any("user is empty" in formatEvent(e) for e in self.log.events)
        )
        # Nothing was started: release the spool's lock.
        service.spool.close()
