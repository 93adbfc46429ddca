"""
Delivery in a whole running mxrecv (L{mxrecv.tap.makeService}) on real
ports, in real time: MX Telecom's callbacks in, the application stand-in on
127.0.0.1 out; a refused message made a dead letter, seen in the metrics,
/health and C{mxrecv list --undeliverable}, and put back with C{mxrecv
redeliver --admin} through the admin listener's token.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from mxrecv.config import AdminConfig, DeliverConfig
from mxrecv.deliver.signature import newSecret, parseSecret
from mxrecv.ops.cli import CommandError, listUndeliverable, main, redeliver
from mxrecv.testing.retrievemms import QuietSite

from .application import Answer, Application
from .running import ANY_PORT, SMS, client, run, runningConfig, scrape, value
from .support import turnsUntil

TOKEN = "t" * 32


class RunningTests(TestCase):
    timeout = 30

    def start(self, script, **deliver):
        self.app = Application(reactor, script)
        port = reactor.listenTCP(0, QuietSite(self.app), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        deliver.setdefault("backoff_initial", 0.05)
        deliver.setdefault("backoff_max", 0.05)
        config = runningConfig(
            self,
            admin=AdminConfig(listen=ANY_PORT, token=TOKEN),
            deliver=DeliverConfig(url=f"http://127.0.0.1:{port.getHost().port}/", **deliver),
        )
        self.running = run(self, config)
        self.http = client()

    @inlineCallbacks
    def send(self, *ids):
        for messageId in ids:
            response = yield self.http.get(self.running.url, params={**SMS, "id": messageId})
            self.assertEqual(response.code, 200)
            yield response.content()

    @inlineCallbacks
    def test_refusedThenRedelivered(self):
        """
        The application refuses b with 400 and takes the rest: a and c
        arrive; b, refused max_attempts times, is a dead letter, in the
        metrics, /health (which still answers 200) and the list, still in
        new/; redeliver --admin (with the admin token) brings it once the
        application takes it.
        """
        self.start({"b": [Answer(400, b"cannot parse b")] * 2}, max_attempts=2)
        yield self.send("a", "b", "c")
        yield self.app.whenReceived(4)
        record = self.running.spool / "state" / "undeliverable" / "url" / "b"
        yield turnsUntil(record.exists)
        # c may have arrived after b's last refusal: its delivery is over
        # once recorded.
        [deliverer] = self.running.service.delivery.deliverers
        yield turnsUntil(lambda: len(deliverer) == 0)
        self.assertEqual(self.app.accepted(), ["a", "c"])
        self.assertEqual([r.id for r in self.app.received].count("b"), 2)
        self.assertTrue((self.running.spool / "new" / "b" / "message.json").is_file())

        response = yield self.http.get(self.running.admin + "/health")
        self.assertEqual(response.code, 200)
        check = (yield response.json())["checks"]["delivery.url"]
        self.assertEqual(
            check, {"ok": False, "critical": False, "detail": "0 waiting; 1 undeliverable: b"}
        )
        samples = yield scrape(self.running)
        self.assertEqual(value(samples, "mxrecv_delivery_undeliverable", target="url"), 1)
        self.assertEqual(
            value(samples, "mxrecv_deliveries_total", target="url", outcome="permanent"), 2
        )
        self.assertEqual(value(samples, "mxrecv_deliveries_total", target="url", outcome="ok"), 2)

        out = io.StringIO()
        listUndeliverable(self.running.spool, out)
        [line] = out.getvalue().splitlines()
        fields = line.split("\t")
        self.assertEqual(
            fields[:3] + fields[5:],
            [
                "url",
                "b",
                "sms",
                "2 attempts",
                "refused 2 times; the last time: HTTP 400: cannot parse b",
            ],
        )

        # Without the token, the admin listener refuses, and nothing changes.
        response = yield self.http.post(self.running.admin + "/deliver/b")
        self.assertEqual(response.code, 401)
        yield response.content()
        self.assertTrue(record.exists())

        out = io.StringIO()
        yield self.cliInThread(
            redeliver, self.running.spool, "b", out, admin=self.running.admin, token=TOKEN
        )
        yield self.app.whenReceived(5)
        self.assertEqual(self.app.accepted(), ["a", "c", "b"])
        delivered = self.running.spool / "state" / "delivered" / "url" / "b"
        yield turnsUntil(delivered.exists)
        self.assertFalse(record.exists())
        response = yield self.http.get(self.running.admin + "/health")
        self.assertTrue((yield response.json())["checks"]["delivery.url"]["ok"])

    def cliInThread(self, f, *args, **kwargs):
        """
        Run a command-line function (which blocks on the admin listener)
        in a thread, while the reactor serves it.
        """
        from twisted.internet.threads import deferToThread

        return deferToThread(f, *args, **kwargs)

    @inlineCallbacks
    def test_redeliverWithoutAdmin(self):
        """
        mxrecv redeliver without --admin removes the record; the running
        server takes the message up at its next sweep; one that is no dead
        letter is an error.
        """
        self.start({"a": [Answer(422)]}, max_attempts=1)
        yield self.send("a")
        record = self.running.spool / "state" / "undeliverable" / "url" / "a"
        [deliverer] = self.running.service.delivery.deliverers
        yield turnsUntil(lambda: deliverer.undeliverable.get("a") is not None)
        self.assertTrue(record.exists())
        config = Path(self.mktemp())
        config.write_text(f'[spool]\ndir = "{self.running.spool}"\n')
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(main(["-c", str(config), "redeliver", "a"], out, err), 0)
        self.assertIn("within 5 minutes", out.getvalue())
        self.assertFalse(record.exists())
        self.assertRaises(CommandError, redeliver, self.running.spool, "a", io.StringIO())
        yield self.running.service.delivery.sweep()
        yield self.app.whenReceived(2)
        self.assertEqual(self.app.accepted(), ["a"])

    @inlineCallbacks
    def test_busyThenUp(self):
        """
        503 then 200: nothing is lost and the order is kept.
        """
        self.start({"a": [Answer(503), Answer(503)]})
        yield self.send("a", "b", "c")
        yield self.app.whenReceived(5)
        self.assertEqual([r.id for r in self.app.received], ["a", "a", "a", "b", "c"])
        self.assertEqual(self.app.accepted(), ["a", "b", "c"])

    @inlineCallbacks
    def test_retryAfter(self):
        """
        429 with Retry-After: 2: the next attempt comes 2 s later or more,
        though the backoff is 50 ms; the requests are signed.
        """
        secret = newSecret()
        self.start({"a": [Answer(429, b"", {b"Retry-After": b"2"})]}, secret=parseSecret(secret))
        yield self.send("a")
        yield self.app.whenReceived(2)
        first, second = self.app.received
        self.assertGreaterEqual(second.at - first.at, 2.0)
        self.assertEqual(self.app.accepted(), ["a"])
        from standardwebhooks import Webhook

        headers = {k.decode(): v.decode() for k, v in second.headers.items()}
        Webhook(secret).verify(second.body, headers, json_parse=False)
        self.assertEqual(json.loads(second.fields[b"message"][0])["id"], "a")
