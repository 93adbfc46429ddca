"""
Delivery to the application: a command that fails then succeeds, a URL that
is down then up, order of arrival, durable records, start-up scan.
"""

import email.utils
import json
import os
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import DeferredQueue, inlineCallbacks, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mxrecv.deliver.command import COMMAND_GRACE, CommandTarget
from mxrecv.deliver.deadletters import TargetHealth
from mxrecv.deliver.interfaces import ITarget
from mxrecv.deliver.outcome import Delivered, PermanentFailure, TemporaryFailure
from mxrecv.deliver.queue import Deliverer
from mxrecv.deliver.records import Records, Scan
from mxrecv.deliver.schedule import Policy
from mxrecv.deliver.service import SWEEP_INTERVAL, DeliveryService
from mxrecv.deliver.webhook import WebhookTarget
from mxrecv.message.model import Message
from mxrecv.testing.memory import DrivenThreadPool, MemoryReactor
from mxrecv.testing.retrievemms import QuietSite

from .application import Answer, Application
from .running import client
from .support import (
    acceptMMS,
    openSpool,
    reactorTurns,
    runJobs,
    sms,
    startedPool,
    turnsUntil,
)


class DeliveryTests(TestCase):
    timeout = 15
    def setUp(self):
        self.spool = openSpool(self)
        self.pool = startedPool(self)
        self.records = Records(self.spool.root)
        self.clock = Clock()
        self.attempts = DeferredQueue()

    def deliverTo(self, target, backoffInitial=1.0, **policy):
        deliverer = Deliverer(
            target,
            policy=Policy(backoffInitial=backoffInitial, backoffMax=8.0, **policy),
            new=self.spool.dir("new"),
            records=self.records,
            reactor=reactor,
            pool=self.pool,
            clock=self.clock,
            onAttempt=lambda name, outcome: self.attempts.put(outcome),
        )
        service = DeliveryService(
            [deliverer], records=self.records, reactor=reactor, pool=self.pool, clock=self.clock
        )
        self.spool.observeNew(service.landed)
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        return service

    def acceptMMS(self, message: Message, name: str, data: bytes, contentType: str):
        return acceptMMS(self.spool, message, {name: (data, contentType)})

    def command(self, script: str) -> CommandTarget:
        return CommandTarget(
            ["/bin/sh", "-c", script, "sh"],
            reactor=reactor,
            clock=reactor,
            timeout=10.0,
            env={},
            spool=self.spool.root,
        )

    def retryAt(self):
        """
        When the next attempt is due (the sweep of new/ is due later).
        """
        return min(c.getTime() for c in self.clock.getDelayedCalls())

    @inlineCallbacks
    def test_commandTemporaryThenDelivered(self):
        """
        A command that exits 75 (EX_TEMPFAIL) is retried after the backoff
        and the message behind it waits; the first is recorded as delivered
        only once the command succeeds, then the second goes.
        """
        flag, out = Path(self.mktemp()), Path(self.mktemp())
        service = self.deliverTo(
            self.command(
                f'test -e {flag} || {{ echo not yet >&2; exit 75; }}; basename "$1" >> {out}'
            )
        )
        yield self.spool.accept(sms("a", received="2026-11-25T10:30:01.000Z"))
        yield self.spool.accept(sms("b", received="2026-11-25T10:30:02.000Z"))
        self.assertEqual((yield self.attempts.get()), "temporary")
        self.assertFalse(self.records.isDelivered("command", "a"))
        self.assertEqual(self.retryAt(), 1.0)
        self.clock.advance(0.5)
        self.assertEqual(self.retryAt(), 1.0)
        self.assertEqual(self.attempts.pending, [])

        flag.touch()
        self.clock.advance(0.5)
        self.assertEqual((yield self.attempts.get()), "ok")
        self.assertEqual((yield self.attempts.get()), "ok")
        yield service.stopService()
        self.assertEqual(out.read_text().split(), ["a", "b"])
        self.assertTrue(self.records.isDelivered("command", "a"))
        self.assertTrue((self.spool.dir("state") / "delivered" / "command" / "a").is_file())
        self.assertEqual(
            sorted(p.name for p in (self.spool.dir("new") / "a").iterdir()), ["message.json"]
        )

    @inlineCallbacks
    def test_commandRefuses(self):
        """
        A command that exits 1 for one message is retried max_attempts
        times, each after its backoff, while the messages behind it are
        delivered; then it is a dead letter with every attempt's exit
        status and the end of its stderr, and the message stays in new/.
        """
        out = Path(self.mktemp())
        service = self.deliverTo(
            self.command(
                'case "$1" in */bad) echo "line 1: bad input" >&2; exit 1;; esac; '
                f'basename "$1" >> {out}'
            ),
            maxAttempts=2,
        )
        yield self.spool.accept(sms("bad", received="2026-11-25T10:30:01.000Z"))
        yield self.spool.accept(sms("good", received="2026-11-25T10:30:02.000Z"))
        self.assertEqual((yield self.attempts.get()), "permanent")
        self.assertEqual((yield self.attempts.get()), "ok")
        self.assertEqual(out.read_text().split(), ["good"])
        self.assertEqual(self.retryAt(), 1.0)
        self.clock.advance(1.0)
        self.assertEqual((yield self.attempts.get()), "permanent")
        [deliverer] = service.deliverers
        self.assertEqual(set(deliverer.undeliverable), {"bad"})
        yield service.stopService()
        [(target, name, record)] = self.records.undeliverable()
        self.assertEqual((target, name), ("command", "bad"))
        outcome = "exit status 1; stderr: line 1: bad input"
        self.assertEqual(record["error"], f"refused 2 times; the last time: {outcome}")
        self.assertEqual(record["attempt_count"], 2)
        self.assertEqual([a["outcome"] for a in record["attempts"]], [outcome, outcome])
        self.assertEqual(self.records.scan("command").undeliverable, ["bad"])
        self.assertEqual(self.records.scan("command").undelivered, [])
        self.assertTrue((self.spool.dir("new") / "bad" / "message.json").is_file())

    @inlineCallbacks
    def test_commandTimeout(self):
        """
        A command still running at the timeout is killed: a temporary
        failure, with the end of its stderr.
        """
        yield self.spool.accept(sms("a"))
        clock = Clock()
        target = CommandTarget(
            ["/bin/sh", "-c", "echo working >&2; exec sleep 60", "sh"],
            reactor=reactor,
            clock=clock,
            timeout=30.0,
            env={},
            spool=self.spool.root,
        )
        d = target.deliver(self.spool.dir("new") / "a")
        yield reactorTurns(20)
        self.assertNoResult(d)
        clock.advance(30.0)
        outcome = yield d
        self.assertIsInstance(outcome, TemporaryFailure)
        self.assertTrue(outcome.why.startswith("killed after 30s (the timeout)"), outcome.why)

    @inlineCallbacks
    def test_commandChildHoldsStderr(self):
        """
        What a command leaves running with its stderr (a job in the
        background, or the child of a shell script killed at the timeout)
        does not hold up the attempt: it ends once the command has, after a
        short grace for the rest of its stderr.
        """
        yield self.spool.accept(sms("a"))
        pids = Path(self.mktemp())
        self.addCleanup(self.killListed, pids)
        for script, timeout in (
            (f"sleep 60 & echo $! >> {pids}; exit 0", None),
            (f"sleep 60 & echo $! >> {pids}; wait", 30.0),
        ):
            clock = Clock()
            target = CommandTarget(
                ["/bin/sh", "-c", script, "sh"],
                reactor=reactor,
                clock=clock,
                timeout=30.0,
                env={},
                spool=self.spool.root,
            )
            d = target.deliver(self.spool.dir("new") / "a")
            timers = 2
            if timeout is not None:
                yield turnsUntil(lambda: len(pids.read_text().split()) == 2)
                clock.advance(timeout)
                timers = 1
            # The command has ended: only the grace is left to wait for.
            yield turnsUntil(lambda: len(clock.getDelayedCalls()) == timers)
            self.assertNoResult(d)
            clock.advance(COMMAND_GRACE)
            outcome = yield d
            if timeout is None:
                self.assertEqual(outcome, Delivered())
            else:
                self.assertIsInstance(outcome, TemporaryFailure)
                self.assertTrue(outcome.why.startswith("killed after 30s"), outcome.why)

    def killListed(self, pids: Path) -> None:
        for pid in pids.read_text().split() if pids.exists() else ():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass

    @inlineCallbacks
    def test_commandEnvironment(self):
        """
        The command gets the message's id (as the webhook-id header has
        it: percent-encoded, as it holds spaces), name and directory, and
        the spool's, in its environment, beside its own.
        """
        out = Path(self.mktemp())
        self.deliverTo(
            CommandTarget(
                ["/bin/sh", "-c", f"env > {out}"],
                reactor=reactor,
                clock=reactor,
                timeout=10.0,
                env={"PATH": "/usr/bin:/bin", "KEEP": "kept"},
                spool=self.spool.root,
            )
        )
        yield self.spool.accept(sms("id with spaces"))
        self.assertEqual((yield self.attempts.get()), "ok")
        env = dict(line.split("=", 1) for line in out.read_text().splitlines())
        name = "id=20with=20spaces"
        self.assertEqual(env["MXRECV_ID"], "id%20with%20spaces")
        self.assertEqual(env["MXRECV_NAME"], name)
        self.assertEqual(env["MXRECV_PATH"], str(self.spool.dir("new") / name))
        self.assertEqual(env["MXRECV_SPOOL"], str(self.spool.root))
        self.assertEqual(env["KEEP"], "kept")

    @inlineCallbacks
    def test_urlDownThenUp(self):
        """
        A URL that refuses connections is retried; once it is up it gets
        message.json and the parts as multipart/form-data.
        """
        closed = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        number = closed.getHost().port
        yield closed.stopListening()
        self.deliverTo(
            WebhookTarget(
                f"http://127.0.0.1:{number}/inbox",
                client=client(),
                clock=reactor,
                timeout=5.0,
                reactor=reactor,
                pool=self.pool,
            )
        )

        yield self.acceptMMS(sms("m"), "hello.txt", b"hello", "text/plain")
        self.assertEqual((yield self.attempts.get()), "temporary")

        received = DeferredQueue()

        class Inbox(Resource):
            isLeaf = True

            def render_POST(self, request):
                received.put(request.args)
                return b"thanks"

        up = reactor.listenTCP(number, Site(Inbox()), interface="127.0.0.1")
        self.addCleanup(up.stopListening)
        self.clock.advance(1.0)
        self.assertEqual((yield self.attempts.get()), "ok")
        args = yield received.get()
        self.assertEqual(json.loads(args[b"message"][0])["id"], "m")
        self.assertEqual(args[b"part"], [b"hello"])

    def application(self, script=None, **target):
        """
        The application stand-in on a fresh port of 127.0.0.1, with its
        script of answers by message id, and a url target for it.
        """
        app = Application(self.clock, script)
        port = reactor.listenTCP(0, QuietSite(app), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/inbox"
        target.setdefault("client", client())
        return app, WebhookTarget(
            url, clock=self.clock, timeout=5.0, reactor=reactor, pool=self.pool, **target
        )

    @inlineCallbacks
    def acceptAll(self, *ids):
        for i, messageId in enumerate(ids):
            yield self.spool.accept(sms(messageId, received=f"2026-11-25T10:30:0{i}.000Z"))

    @inlineCallbacks
    def test_urlBusyThenUp(self):
        """
        A 503 is temporary: the message is tried again after the backoff,
        the ones behind it wait, and all arrive in order.
        """
        app, target = self.application({"a": [Answer(503, b"busy")]})
        self.deliverTo(target)
        yield self.acceptAll("a", "b", "c")
        self.assertEqual((yield self.attempts.get()), "temporary")
        self.assertEqual(self.retryAt(), 1.0)
        self.assertEqual([r.id for r in app.received], ["a"])
        self.clock.advance(1.0)
        for _ in range(3):
            self.assertEqual((yield self.attempts.get()), "ok")
        self.assertEqual([r.id for r in app.received], ["a", "a", "b", "c"])
        self.assertEqual(app.accepted(), ["a", "b", "c"])

    @inlineCallbacks
    def test_urlRetryAfter(self):
        """
        A 429 with Retry-After: 2 makes the next attempt wait 2 s, though
        the backoff is 1 s; a Retry-After as an HTTP-date counts from now.
        """
        app, target = self.application(
            {
                "a": [
                    Answer(429, b"slow down", {b"Retry-After": b"2"}),
                    Answer(
                        503,
                        b"",
                        {b"Retry-After": email.utils.formatdate(7.0, usegmt=True).encode()},
                    ),
                ]
            }
        )
        self.deliverTo(target, backoffInitial=1.0)
        yield self.acceptAll("a")
        self.assertEqual((yield self.attempts.get()), "temporary")
        self.assertEqual(self.retryAt(), 2.0)
        self.clock.advance(1.999)
        self.assertEqual(len(app.received), 1)
        self.clock.advance(0.001)
        self.assertEqual((yield self.attempts.get()), "temporary")
        self.assertEqual(self.retryAt(), 7.0)
        self.clock.advance(5.0)
        self.assertEqual((yield self.attempts.get()), "ok")
        self.assertEqual([r.at for r in app.received], [0.0, 2.0, 7.0])

    @inlineCallbacks
    def test_urlRefusedThenRedelivered(self):
        """
        A message the application refuses with 400 is tried max_attempts
        times while the others are delivered; it is then a dead letter, with
        each attempt's status and answer, named in the health check and
        left in new/; redelivered, it arrives once the application takes it.
        """
        app, target = self.application({"b": [Answer(400, b"cannot parse b")] * 3})
        service = self.deliverTo(target, maxAttempts=3)
        yield self.acceptAll("a", "b", "c", "d")
        outcomes = []
        for _ in range(4):
            outcomes.append((yield self.attempts.get()))
        self.assertEqual(outcomes, ["ok", "permanent", "ok", "ok"])
        self.assertEqual(app.accepted(), ["a", "c", "d"])
        self.clock.advance(1.0)
        self.assertEqual((yield self.attempts.get()), "permanent")
        self.clock.advance(2.0)
        self.assertEqual((yield self.attempts.get()), "permanent")
        self.assertEqual([r.id for r in app.received], ["a", "b", "c", "d", "b", "b"])
        [check] = [c() for c in service.checks()]
        self.assertEqual(
            check, TargetHealth("url", False, "0 waiting; 1 undeliverable: b")
        )
        yield turnsUntil(lambda: self.records.undeliverable())
        [(_, name, record)] = self.records.undeliverable("url")
        self.assertEqual(name, "b")
        self.assertEqual(
            [a["outcome"] for a in record["attempts"]], ["HTTP 400: cannot parse b"] * 3
        )
        self.assertTrue((self.spool.dir("new") / "b" / "message.json").is_file())

        # After a restart, it is still a dead letter.
        yield service.stopService()
        service.startService()
        yield turnsUntil(lambda: service.deliverers[0].undeliverable)
        self.assertEqual(len(service.deliverers[0]), 0)
        self.assertEqual((yield service.redeliver("b")), ["url"])
        self.assertEqual((yield self.attempts.get()), "ok")
        self.assertEqual(app.accepted(), ["a", "c", "d", "b"])
        self.assertEqual(self.records.undeliverable(), [])
        self.assertTrue(self.records.isDelivered("url", "b"))
        self.assertEqual((yield service.redeliver("b")), [])
        self.assertEqual(service.checks()[0]().ok, True)

    @inlineCallbacks
    def test_redeliverBySweep(self):
        """
        A dead letter whose record was removed (mxrecv redeliver without
        --admin) is delivered again at the next sweep of new/.
        """
        app, target = self.application({"a": [Answer(400)]})
        service = self.deliverTo(target, maxAttempts=1)
        yield self.acceptAll("a")
        self.assertEqual((yield self.attempts.get()), "permanent")
        yield turnsUntil(lambda: service.deliverers[0].undeliverable.get("a") is not None)
        self.clock.advance(1.0)
        self.assertTrue(self.records.redeliver("url", "a"))
        self.assertEqual(self.attempts.pending, [])
        self.clock.advance(SWEEP_INTERVAL)
        self.assertEqual((yield self.attempts.get()), "ok")
        self.assertEqual(app.accepted(), ["a"])
        self.assertEqual(service.deliverers[0].undeliverable, {})

    @inlineCallbacks
    def test_deadLetterNotRecorded(self):
        """
        A dead letter whose record cannot be written (a full disk) is not
        kept out of delivery for good: the next sweep takes it up again, and
        once it is refused again its record is written.
        """
        app, target = self.application({"a": [Answer(400)] * 2})
        service = self.deliverTo(target, maxAttempts=1)
        broken = self.spool.dir("state") / "undeliverable" / "url"
        yield turnsUntil(broken.is_dir)
        broken.rmdir()
        broken.write_bytes(b"in the way")
        yield self.acceptAll("a")
        self.assertEqual((yield self.attempts.get()), "permanent")
        yield turnsUntil(lambda: self.flushLoggedErrors(FileExistsError))
        broken.unlink()
        self.clock.advance(SWEEP_INTERVAL)
        self.assertEqual((yield self.attempts.get()), "permanent")
        yield turnsUntil(lambda: self.records.undeliverable())
        self.assertEqual([name for _, name, _ in self.records.undeliverable()], ["a"])
        self.assertEqual(list(service.deliverers[0].undeliverable), ["a"])

    @inlineCallbacks
    def test_stopWaitsForAttempt(self):
        """
        Stopping waits for the attempt under way (its answer, then its
        record), however its request was made.
        """
        app, target = self.application()
        app.hold = True
        service = self.deliverTo(target)
        yield self.acceptAll("a")
        yield app.whenReceived(1)
        stopped = service.stopService()
        yield reactorTurns(10)
        self.assertNoResult(stopped)
        app.release()
        yield stopped
        self.assertTrue(self.records.isDelivered("url", "a"))

    @inlineCallbacks
    def test_sweepFindsUnannounced(self):
        """
        A message in new/ that no queue was told of (another process put it
        there) is delivered at the next sweep, after those queued.
        """
        app, target = self.application()
        app.hold = True
        service = self.deliverTo(target)
        yield self.acceptAll("a")
        yield app.whenReceived(1)
        directory = self.spool.dir("new") / "quiet"
        directory.mkdir()
        document = sms("quiet", received="2026-11-25T09:00:00.000Z").encode()
        (directory / "message.json").write_bytes(document)
        yield service.sweep()
        self.assertEqual(len(service.deliverers[0]), 2)
        app.release()
        yield app.whenReceived(2)
        self.assertEqual(app.accepted(), ["a", "quiet"])

    @inlineCallbacks
    def test_concurrency(self):
        """
        With concurrency 3, three messages are in flight at once.
        """
        app, target = self.application()
        app.hold = True
        self.deliverTo(target, concurrency=3)
        yield self.acceptAll("a", "b", "c", "d")
        yield app.whenReceived(3)
        yield reactorTurns(10)
        self.assertEqual(sorted(r.id for r in app.received), ["a", "b", "c"])
        app.release()
        for _ in range(4):
            self.assertEqual((yield self.attempts.get()), "ok")
        self.assertEqual(sorted(app.accepted()), ["a", "b", "c", "d"])

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
        pool = DrivenThreadPool()
        target = WebhookTarget(
            "http://127.0.0.1:9/",
            client=client(),
            clock=reactor,
            timeout=5.0,
            reactor=MemoryReactor(),
            pool=pool,
        )
        before = set(os.listdir("/proc/self/fd"))
        for _ in range(3):
            d = target.deliver(directory)
            pool.runNext()
            outcome = self.successResultOf(d)
            self.assertIsInstance(outcome, PermanentFailure)
            self.assertIn("FileNotFoundError", outcome.why)
        self.assertEqual(set(os.listdir("/proc/self/fd")) - before, set())

    def test_urlRequestBugLogged(self):
        """
        An exception nothing foresees while the request is built (a bug) is
        logged with its traceback, and the attempt fails permanently like
        any other that cannot be sent, leaving no file of the message open.
        """
        directory = self.spool.dir("new") / "m"
        (directory / "parts").mkdir(parents=True)
        (directory / "parts" / "a.txt").write_bytes(b"a")
        parts = [{"name": "a.txt", "path": "parts/a.txt", "size": 1, "content_type": "text/plain"}]
        (directory / "message.json").write_text(json.dumps({"id": "m", "parts": parts}))

        class Broken:
            def request(self, method, url, data, **kwargs):
                raise RuntimeError("a bug")

        pool = DrivenThreadPool()
        before = set(os.listdir("/proc/self/fd"))
        d = WebhookTarget(
            "http://127.0.0.1:9/",
            client=Broken(),
            clock=reactor,
            timeout=5.0,
            reactor=MemoryReactor(),
            pool=pool,
        ).deliver(directory)
        pool.runNext()
        outcome = self.successResultOf(d)
        self.assertIsInstance(outcome, PermanentFailure)
        self.assertEqual(outcome.why, "cannot make the request: internal error (logged)")
        [logged] = self.flushLoggedErrors(RuntimeError)
        self.assertIn("a bug", logged.getTraceback())
        self.assertEqual(set(os.listdir("/proc/self/fd")) - before, set())

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
                reactor=reactor,
                pool=self.pool,
            )
        )
        yield self.acceptMMS(
            sms("m", received="2026-11-25T10:30:01.000Z"),
            "photo.jpg",
            b"\xff\xd8\xff",
            "image/jpég",
        )
        yield self.spool.accept(sms("next", received="2026-11-25T10:30:02.000Z"))
        self.assertEqual((yield self.attempts.get()), "ok")
        body = yield received.get()
        self.assertIn(b"Content-Type: application/octet-stream\r\n", body)
        self.assertIn("image/jpég".encode(), body)  # message.json keeps it
        self.assertEqual((yield self.attempts.get()), "ok")
        self.assertIn(b'"id": "next"', (yield received.get()))

    @inlineCallbacks
    def test_checkFails(self):
        """
        When new/NAME cannot be looked at before its attempt (here its name
        is too long for the filesystem; an I/O error would do the same), the
        attempt is a temporary failure, retried after the backoff, rather
        than an attempt that never ends and holds up the queue.
        """
        self.deliverTo(self.command("exit 0"))
        self.spool.landed("x" * 300)
        self.assertEqual((yield self.attempts.get()), "temporary")
        self.clock.advance(1.0)
        self.assertEqual((yield self.attempts.get()), "temporary")

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
            self.assertEqual((yield self.attempts.get()), "ok")
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
        self.assertEqual((yield self.attempts.get()), "ok")
        yield service.stopService()
        self.assertEqual(out.read_text().split(), ["here"])


    @inlineCallbacks
    def test_scanFails(self):
        """
        When the start-up scan fails (a full disk, an I/O error), delivery
        starts all the same: what lands is delivered, and what new/ held is
        found by the next sweep, once the disk is back.
        """
        yield self.spool.accept(sms("before"))
        # Landed before delivery starts: not announced to it.
        yield reactorTurns(1)
        broken = self.spool.dir("state") / "delivered"
        broken.write_bytes(b"in the way")
        out = Path(self.mktemp())
        self.deliverTo(self.command(f'basename "$1" >> {out}'))
        yield turnsUntil(lambda: self.flushLoggedErrors(NotADirectoryError))
        broken.unlink()
        yield self.spool.accept(sms("after"))
        self.assertEqual((yield self.attempts.get()), "ok")
        self.clock.advance(SWEEP_INTERVAL)
        self.assertEqual((yield self.attempts.get()), "ok")
        self.assertEqual(out.read_text().split(), ["after", "before"])

    @inlineCallbacks
    def test_stoppedBeforeScanEnds(self):
        """
        A service stopped while its start-up scan runs does not start its
        queues when the scan ends.
        """
        yield self.spool.accept(sms("a"))
        pool = DrivenThreadPool()
        deliverer = Deliverer(
            self.command("exit 0"),
            policy=Policy(),
            new=self.spool.dir("new"),
            records=self.records,
            reactor=reactor,
            pool=self.pool,
            clock=self.clock,
        )
        service = DeliveryService(
            [deliverer], records=self.records, reactor=reactor, pool=pool, clock=self.clock
        )
        service.startService()
        yield service.stopService()
        yield runJobs(pool, "scan")
        yield reactorTurns(2)
        self.assertEqual(deliverer.queued(), frozenset())
        self.assertEqual(self.clock.getDelayedCalls(), [])


    def test_stoppedWhileLooking(self):
        """
        A queue stopped while it looks at a message before its attempt (a
        job in its pool) makes no attempt when the look ends.
        """
        (self.spool.dir("new") / "a").mkdir()
        pool = DrivenThreadPool()
        attempted = []

        @implementer(ITarget)
        class Target:
            name = "command"

            def deliver(self, directory):
                attempted.append(directory)
                return succeed(Delivered())

        deliverer = Deliverer(
            Target(),
            policy=Policy(),
            new=self.spool.dir("new"),
            records=self.records,
            reactor=MemoryReactor(),
            pool=pool,
            clock=self.clock,
        )
        deliverer.start(Scan([("a", None)], []), 0.0)
        self.assertEqual(pool.pending, ["_look"])
        stopped = deliverer.stop()
        pool.runNext()
        self.assertEqual(attempted, [])
        self.successResultOf(stopped)


class InterfaceTests(TestCase):
    def test_targets(self):
        """
        Both targets provide ITarget, which the queue drives.
        """
        verifyObject(
            ITarget,
            CommandTarget(
                ["/bin/true"], reactor=reactor, clock=reactor, timeout=1.0, env={}, spool=Path(".")
            ),
        )
        verifyObject(
            ITarget,
            WebhookTarget(
                "http://127.0.0.1:9/",
                client=client(),
                clock=reactor,
                timeout=1.0,
                reactor=reactor,
                pool=DrivenThreadPool(),
            ),
        )
