"""
Delivery to the application: a command that fails then succeeds, a URL that
is down then up, order of arrival, durable records, start-up scan.
"""

import json
import os
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import DeferredQueue, inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from mxrecv.deliver.command import CommandTarget
from mxrecv.deliver.interfaces import ITarget
from mxrecv.deliver.outcome import PermanentFailure
from mxrecv.deliver.queue import Deliverer
from mxrecv.deliver.records import Records
from mxrecv.deliver.service import DeliveryService
from mxrecv.deliver.webhook import WebhookTarget
from mxrecv.message.model import Message, Part

from .running import client
from .support import openSpool, startedPool


def sms(messageId: str, received: str = "2026-11-25T10:30:01.000Z") -> Message:
    return Message(
        id=messageId,
        type="sms",
        sender="447700900123",
        to=("80000",),
        date="2026-11-25 10:30:00",
        delivery="get",
        received=received,
        message="Hello",
        charset="utf-8",
    )


class DeliveryTests(TestCase):
    def setUp(self):
        self.spool = openSpool(self)
        self.pool = startedPool(self)
        self.records = Records(self.spool)
        self.clock = Clock()
        self.attempts = DeferredQueue()

    def deliverTo(self, target, backoffInitial=1.0):
        deliverer = Deliverer(
            target,
            spool=self.spool,
            records=self.records,
            reactor=reactor,
            pool=self.pool,
            backoffInitial=backoffInitial,
            backoffMax=8.0,
            onAttempt=lambda name, ok: self.attempts.put(ok),
            clock=self.clock,
        )
        service = DeliveryService(
            [deliverer], spool=self.spool, records=self.records, reactor=reactor, pool=self.pool
        )
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        return service

    def acceptMMS(self, message: Message, name: str, data: bytes, contentType: str):
        """
        Accept C{message} into new/ as an MMS with one part.
        """
        staging = self.spool.stage()
        (staging.path / "parts").mkdir()
        (staging.path / "parts" / name).write_bytes(data)
        part = Part(name=name, path=f"parts/{name}", size=len(data), content_type=contentType)
        message = message.replace(type="mms", message=None, charset=None, parts=(part,))
        return self.spool.accept(message, "new", staging)

    def command(self, script: str) -> CommandTarget:
        return CommandTarget(
            ["/bin/sh", "-c", script, "sh"], reactor=reactor, clock=reactor, timeout=10.0, env={}
        )

    @inlineCallbacks
    def test_commandFailsThenSucceeds(self):
        """
        A command that exits non-zero is retried after the backoff; the
        message is recorded as delivered only once the command succeeds.
        """
        flag, out = Path(self.mktemp()), Path(self.mktemp())
        service = self.deliverTo(
            self.command(f'test -e {flag} || {{ echo not yet >&2; exit 3; }}; echo "$1" >> {out}')
        )
        yield self.spool.accept(sms("a"))
        ok = yield self.attempts.get()
        self.assertFalse(ok)
        self.assertFalse(self.records.isDelivered("command", "a"))
        [retry] = self.clock.getDelayedCalls()
        self.assertEqual(retry.getTime(), 1.0)

        flag.touch()
        self.clock.advance(1.0)
        ok = yield self.attempts.get()
        self.assertTrue(ok)
        yield service.stopService()
        self.assertEqual(out.read_text(), f"{self.spool.dir('new') / 'a'}\n")
        self.assertTrue(self.records.isDelivered("command", "a"))
        self.assertTrue((self.spool.dir("state") / "delivered" / "command" / "a").is_file())
        self.assertEqual(
            sorted(p.name for p in (self.spool.dir("new") / "a").iterdir()), ["message.json"]
        )

    @inlineCallbacks
    def test_urlDownThenUp(self):
        """
        A URL that refuses connections is retried; once it is up it gets
        message.json and the parts as multipart/form-data.
        """
        closed = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        number = closed.getHost().port
        yield closed.stopListening()
        self.deliverTo(WebhookTarget(
                f"http://127.0.0.1:{number}/inbox", client=client(), clock=reactor, timeout=5.0
            ))

        yield self.acceptMMS(sms("m"), "hello.txt", b"hello", "text/plain")
        ok = yield self.attempts.get()
        self.assertFalse(ok)

        received = DeferredQueue()

        class Inbox(Resource):
            isLeaf = True

            def render_POST(self, request):
                received.put(request.args)
                return b"thanks"

        up = reactor.listenTCP(number, Site(Inbox()), interface="127.0.0.1")
        self.addCleanup(up.stopListening)
        self.clock.advance(1.0)
        ok = yield self.attempts.get()
        self.assertTrue(ok)
        args = yield received.get()
        self.assertEqual(json.loads(args[b"message"][0])["id"], "m")
        self.assertEqual(args[b"part"], [b"hello"])

    @inlineCallbacks
    def test_urlErrorStatus(self):
        """
        A 5xx answer is a failure, retried.
        """
        answers = [503, 200]

        class Flaky(Resource):
            isLeaf = True

            def render_POST(self, request):
                request.setResponseCode(answers.pop(0))
                return b"busy"

        port = reactor.listenTCP(0, Site(Flaky()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.deliverTo(
            WebhookTarget(
                f"http://127.0.0.1:{port.getHost().port}/",
                client=client(),
                clock=reactor,
                timeout=5.0,
            )
        )
        yield self.spool.accept(sms("a"))
        self.assertFalse((yield self.attempts.get()))
        self.clock.advance(1.0)
        self.assertTrue((yield self.attempts.get()))

    def test_urlPartMissingClosesOthers(self):
        """
        A message whose part file is gone (the application removed it) fails
        to deliver without leaving the parts already opened open: each retry
        would otherwise leak file descriptors.
        """
        directory = self.spool.dir("new") / "m"
        (directory / "parts").mkdir(parents=True)
        (directory / "parts" / "a.txt").write_bytes(b"a")
        parts = [
            {"name": n, "path": f"parts/{n}", "size": 1, "content_type": "text/plain"}
            for n in ("a.txt", "gone.txt")
        ]
        (directory / "message.json").write_text(json.dumps({"id": "m", "parts": parts}))
        target = WebhookTarget(
            "http://127.0.0.1:9/", client=client(), clock=reactor, timeout=5.0
        )
        before = set(os.listdir("/proc/self/fd"))
        for _ in range(3):
            outcome = self.successResultOf(target.deliver(directory))
            self.assertIsInstance(outcome, PermanentFailure)
            self.assertIn("FileNotFoundError", outcome.why)
        self.assertEqual(set(os.listdir("/proc/self/fd")) - before, set())

    def test_urlRequestNotMade(self):
        """
        An exception while the request is built (treq encodes the body's
        headers before it returns) fails the attempt, asynchronously, and
        closes the parts opened.
        """
        directory = self.spool.dir("new") / "m"
        (directory / "parts").mkdir(parents=True)
        (directory / "parts" / "a.txt").write_bytes(b"a")
        parts = [{"name": "a.txt", "path": "parts/a.txt", "size": 1, "content_type": "text/plain"}]
        (directory / "message.json").write_text(json.dumps({"id": "m", "parts": parts}))

        class Broken:
            def post(self, url, files, timeout):
                self.files = files
                raise UnicodeEncodeError("ascii", "\xe9", 0, 1, "ordinal not in range(128)")

        broken = Broken()
        d = WebhookTarget(
            "http://127.0.0.1:9/", client=broken, clock=reactor, timeout=5.0
        ).deliver(directory)
        outcome = self.successResultOf(d)
        self.assertIsInstance(outcome, PermanentFailure)
        self.assertIn("UnicodeEncodeError", outcome.why)
        self.assertTrue(broken.files[1][1][2].closed)

    def test_urlRequestBugLogged(self):
        """
        An exception nothing foresees while the request is built (a bug) is
        logged with its traceback, and the attempt fails permanently like
        any other that cannot be sent.
        """
        directory = self.spool.dir("new") / "m"
        directory.mkdir(parents=True)
        (directory / "message.json").write_text(json.dumps({"id": "m", "parts": []}))

        class Broken:
            def post(self, url, files, timeout):
                raise RuntimeError("a bug")

        d = WebhookTarget(
            "http://127.0.0.1:9/", client=Broken(), clock=reactor, timeout=5.0
        ).deliver(directory)
        outcome = self.successResultOf(d)
        self.assertIsInstance(outcome, PermanentFailure)
        self.assertEqual(outcome.why, "cannot make the request: internal error (logged)")
        [logged] = self.flushLoggedErrors(RuntimeError)
        self.assertIn("a bug", logged.getTraceback())

    @inlineCallbacks
    def test_urlContentTypeNotAscii(self):
        """
        A part whose recorded content_type is not a plain ASCII media type
        (C{image/jpég}, taken from a SMIL by an older mxrecv) is sent as
        application/octet-stream: it is delivered, and so is the message
        queued behind it, instead of every attempt failing.
        """
        received = DeferredQueue()

        class Inbox(Resource):
            isLeaf = True

            def render_POST(self, request):
                received.put(request.content.read())
                return b"thanks"

        port = reactor.listenTCP(0, Site(Inbox()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.deliverTo(
            WebhookTarget(
                f"http://127.0.0.1:{port.getHost().port}/",
                client=client(),
                clock=reactor,
                timeout=5.0,
            )
        )
        yield self.acceptMMS(
            sms("m", received="2026-11-25T10:30:01.000Z"), "photo.jpg", b"\xff\xd8\xff", "image/jpég"
        )
        yield self.spool.accept(sms("next", received="2026-11-25T10:30:02.000Z"))
        self.assertTrue((yield self.attempts.get()))
        body = yield received.get()
        self.assertIn(b"Content-Type: application/octet-stream\r\n", body)
        self.assertIn("image/jpég".encode(), body)  # message.json keeps it
        self.assertTrue((yield self.attempts.get()))
        self.assertIn(b'"id": "next"', (yield received.get()))

    @inlineCallbacks
    def test_startUpScanInOrder(self):
        """
        At start-up, messages in new/ not yet delivered are delivered in
        order of arrival, before anything that lands later; those delivered
        before are not delivered again.
        """
        yield self.spool.accept(sms("late", received="2026-11-25T10:00:03.000Z"))
        yield self.spool.accept(sms("early", received="2026-11-25T10:00:01.000Z"))
        yield self.spool.accept(sms("done", received="2026-11-25T10:00:02.000Z"))
        self.records.mark("command", "done")
        out = Path(self.mktemp())
        service = self.deliverTo(self.command(f'basename "$1" >> {out}'))
        yield self.spool.accept(sms("newest", received="2026-11-25T10:00:04.000Z"))
        for _ in range(3):
            self.assertTrue((yield self.attempts.get()))
        yield service.stopService()
        self.assertEqual(out.read_text().split(), ["early", "late", "newest"])

    @inlineCallbacks
    def test_takenByApplication(self):
        """
        A message the application moved out of new/ before its delivery is
        skipped, and the queue goes on.
        """
        out = Path(self.mktemp())
        service = self.deliverTo(self.command(f'basename "$1" >> {out}'))
        self.spool.landed("gone")
        yield self.spool.accept(sms("here"))
        self.assertTrue((yield self.attempts.get()))
        yield service.stopService()
        self.assertEqual(out.read_text().split(), ["here"])


class InterfaceTests(TestCase):
    def test_targets(self):
        """
        Both targets provide ITarget, which the queue drives.
        """
        verifyObject(
            ITarget,
            CommandTarget(["/bin/true"], reactor=reactor, clock=reactor, timeout=1.0, env={}),
        )
        verifyObject(
            ITarget, WebhookTarget("http://127.0.0.1:9/", client=client(), clock=reactor, timeout=1.0)
        )
