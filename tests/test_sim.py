"""
Tests for L{mxrecv.testing.sim}: the stand-in for MX Telecom, run against a real
mxrecv site listening on 127.0.0.1.
"""

from __future__ import annotations

import io
import json
import zipfile

import multipart
import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool

from mxrecv.testing.retrievemms import RetrieveMMS
from mxrecv.testing.sim import (
    Callback,
    Options,
    Outcome,
    Settings,
    Summary,
    makeCallbacks,
    multipartBody,
    percentile,
    run,
)
from mxrecv.testing.zips import makeZip

from .support import startServer

# 2027-01-15 08:00:00 UTC
NOW = 1_800_000_000.0


class PureTests(SynchronousTestCase):
    def test_zip(self) -> None:
        """
        makeZip makes a valid zip of about the size asked for.
        """
        data = makeZip(50_000)
        self.assertTrue(45_000 < len(data) <= 51_000)
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            self.assertIsNone(z.testzip())
            self.assertEqual(sorted(z.namelist()), ["image.jpg", "mms.smil", "text.txt"])

    def test_uniqueIds(self) -> None:
        callbacks = list(makeCallbacks("sms", 50, "r1", now=NOW))
        self.assertEqual(len({c.id for c in callbacks}), 50)
        self.assertTrue(all(c.zip is None for c in callbacks))
        self.assertTrue(all(c.zip for c in makeCallbacks("mms", 3, "r1", 2000, now=NOW)))

    def test_datedNow(self) -> None:
        """
        Callbacks are dated when they are made, as MX Telecom dates them,
        and an MMS expires 48 hours later (at least 24 h, MX Telecom says),
        so that a GET-mode MMS is still retrievable whenever the simulator
        runs.
        """
        [sms] = makeCallbacks("sms", 1, "d1", now=NOW)
        [mms] = makeCallbacks("mms", 1, "d1", 1000, now=NOW)
        self.assertEqual(dict(sms.params)["date"], "2027-01-15 08:00:00 +0000")
        self.assertNotIn("expiry", dict(sms.params))
        self.assertEqual(dict(mms.params)["date"], "2027-01-15 08:00:00 +0000")
        self.assertEqual(dict(mms.params)["expiry"], "2027-01-17 08:00:00 +0000")

    def test_multipartParses(self) -> None:
        """
        The POST body is multipart/form-data that an independent parser reads
        back: every field in order, and the zip byte for byte as C{mms.zip}.
        """
        callback = next(makeCallbacks("mms", 1, "r2", 100_000, now=NOW))
        body = multipartBody(callback, "b0undary")
        raw = b"".join(body.chunks())
        self.assertEqual(len(raw), len(body))
        parser = multipart.MultipartParser(io.BytesIO(raw), "b0undary")
        parts = [(p.name, p.raw) for p in parser]
        fields = [(n, v.decode()) for n, v in parts if n != "mms.zip"]
        self.assertEqual(fields, list(callback.params))
        self.assertEqual(dict(parts)["mms.zip"], callback.zip)

    def test_multipartWithoutZip(self) -> None:
        callback = Callback("x", (("id", "x"), ("type", "6")))
        raw = b"".join(multipartBody(callback, "bb").chunks())
        parts = [(p.name, p.value) for p in multipart.MultipartParser(io.BytesIO(raw), "bb")]
        self.assertEqual(parts, [("id", "x"), ("type", "6")])

    def test_problems(self) -> None:
        """
        Only a timely 200 with a non-empty body is right.
        """
        self.assertIsNone(Outcome("a", 0.1, 200, b"OK").problem)
        self.assertIn("HTTP 503", Outcome("a", 0.1, 503, b"no").problem)
        self.assertIn("empty", Outcome("a", 0.1, 200, b"").problem)
        self.assertIn("after", Outcome("a", 11.0, 200, b"OK").problem)
        self.assertIn("refused", Outcome("a", 0.1, error="refused").problem)
        summary = Summary.of(
            [Outcome("a", 0.1, 200, b"OK"), Outcome("b", 0.3, 500, b"x")], 1.0
        )
        self.assertEqual((summary.sent, summary.ok, len(summary.problems)), (2, 1, 1))
        self.assertIn("wrong=1", summary.line())

    def test_percentile(self) -> None:
        values = list(range(1, 101))
        self.assertEqual(percentile(values, 0.5), 50)
        self.assertEqual(percentile(values, 0.99), 99)
        self.assertEqual(percentile([7.0], 0.99), 7.0)

    def test_options(self) -> None:
        self.assertRaises(usage.UsageError, Options().parseOptions, [])
        self.assertRaises(
            usage.UsageError, Options().parseOptions, ["--url", "http://x/", "--mode", "put"]
        )
        options = Options()
        options.parseOptions(["--url", "http://x/", "-n", "5", "--type", "mms"])
        self.assertEqual(options.settings().count, 5)
        self.assertEqual(options.settings().kind, "mms")


class AgainstMxrecvTests(TestCase):
    """
    The simulator against a real mxrecv site on a loopback port.
    """

    def setUp(self) -> None:
        server = startServer(self)
        self.spool = server.spool
        self.url = server.url
        self.out = io.StringIO()

    def settings(self, **kwargs) -> Settings:
        kwargs.setdefault("url", self.url)
        return Settings(count=12, concurrency=4, duration=30.0, timeout=10.0, **kwargs)

    @inlineCallbacks
    def test_smsGet(self) -> None:
        """
        GET-mode SMS callbacks are all answered 200 and land in new/.
        """
        summary = yield run(reactor, self.settings(runId="t1"), self.out)
        self.assertEqual((summary.sent, summary.ok), (12, 12), self.out.getvalue())
        stored = sorted(self.spool.dir("new").iterdir())
        self.assertEqual(len(stored), 12)
        document = json.loads((stored[0] / "message.json").read_bytes())
        self.assertEqual(document["delivery"], "get")
        self.assertTrue(document["message"].startswith("Hello "))
        self.assertIn("sent=12 ok=12 wrong=0", self.out.getvalue())

    @inlineCallbacks
    def test_newConnections(self) -> None:
        summary = yield run(reactor, self.settings(runId="t2", newConnections=True), self.out)
        self.assertEqual(summary.ok, 12, self.out.getvalue())

    @inlineCallbacks
    def test_durationBounds(self) -> None:
        """
        --duration stops the sending however many callbacks were asked for.
        """
        settings = Settings(url=self.url, count=1_000_000, concurrency=4, duration=0.3)
        summary = yield run(reactor, settings, self.out)
        self.assertGreater(summary.sent, 0)
        self.assertLess(summary.sent, 1_000_000)
        self.assertEqual(summary.ok, summary.sent, self.out.getvalue())

    @inlineCallbacks
    def test_wrongAnswersCounted(self) -> None:
        """
        Answers other than 200 are reported, one line each, and in the summary.
        """
        summary = yield run(reactor, self.settings(url=self.url + "elsewhere"), self.out)
        self.assertEqual((summary.sent, summary.ok), (12, 0))
        self.assertIn("HTTP 404", self.out.getvalue())
        self.assertIn("wrong=12", self.out.getvalue())

    @inlineCallbacks
    def test_refusedConnection(self) -> None:
        summary = yield run(reactor, self.settings(url="http://127.0.0.1:1/"), self.out)
        self.assertEqual(summary.ok, 0)
        self.assertEqual(len(summary.problems), 12)

    @inlineCallbacks
    def test_mmsGetServesRetrieve(self) -> None:
        """
        GET-mode MMS notifications are journaled in pending/, and the
        RetrieveMMS stand-in serves each announced zip to the right user only.
        """
        settings = self.settings(kind="mms", runId="t3", linger=0.2, zipSize=5000)
        finished = run(reactor, settings, self.out)
        summary = yield finished
        self.assertEqual(summary.ok, 12, self.out.getvalue())
        self.assertEqual(summary.announced, 12)
        self.assertEqual(len(list(self.spool.dir("pending").iterdir())) + len(
            list(self.spool.dir("new").iterdir())), 12)
        self.assertIn("RetrieveMMS at http://127.0.0.1:", self.out.getvalue())

    @inlineCallbacks
    def test_retrieveEndpoint(self) -> None:
        """
        The stand-in answers RetrieveMMS with the zip, 403 for a wrong
        password and 404 for an id it did not announce.
        """
        from twisted.web.server import Site


        retrieve = RetrieveMMS(reactor, user="u", password="p")
        callback = next(makeCallbacks("mms", 1, "t4", 3000, now=NOW))
        retrieve.announce(callback.id, callback.zip)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(retrieve)
        )
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/RetrieveMMS"
        pool = HTTPConnectionPool(reactor, persistent=False)
        ok = yield treq.get(url, params={"user": "u", "pass": "p", "id": callback.id}, pool=pool)
        self.assertEqual(ok.code, 200)
        self.assertEqual((yield ok.content()), callback.zip)
        bad = yield treq.get(url, params={"user": "u", "pass": "x", "id": callback.id}, pool=pool)
        self.assertEqual(bad.code, 403)
        yield bad.content()
        missing = yield treq.get(url, params={"user": "u", "pass": "p", "id": "nope"}, pool=pool)
        self.assertEqual(missing.code, 404)
        yield missing.content()
        self.assertEqual(retrieve.retrieved, {callback.id: 1})
        yield retrieve.whenAllRetrieved()

    @inlineCallbacks
    def test_postMode(self) -> None:
        """
        POST-mode callbacks (multipart, each with its zip) are all accepted,
        and the simulator counts the bytes it sent.
        """
        summary = yield run(
            reactor, self.settings(mode="post", kind="mms", runId="t5", zipSize=20_000), self.out
        )
        self.assertEqual(summary.ok, 12, self.out.getvalue())
        self.assertGreater(summary.bytes, 12 * 19_000)
