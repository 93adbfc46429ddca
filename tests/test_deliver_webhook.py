"""
The url target as the application meets it on a real loopback port:
Standard Webhooks headers checked with the specification's own library
(standardwebhooks), HTTPS verified against a CA of the test's own, a body
that changed while it was sent, the answer's first bytes only.
"""

from __future__ import annotations

import time
from pathlib import Path

from standardwebhooks import Webhook, WebhookVerificationError
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, Cooperator
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from mxrecv.config import DeliverConfig
from mxrecv.deliver.form import FormBody, FormField, closing
from mxrecv.deliver.outcome import Delivered, PermanentFailure, TemporaryFailure
from mxrecv.deliver.policy import ANSWER_HEAD
from mxrecv.deliver.service import webhookTarget
from mxrecv.deliver.signature import KEY_SIZE, newSecret, parseSecret
from mxrecv.deliver.webhook import BodyChanged, SignedBodyProducer, readBody
from mxrecv.testing.retrievemms import QuietSite

from .application import Answer, Application
from .certificates import TestCA
from .support import acceptMMS, exampleMessage, openSpool, serveLoopback, startedPool

SECRET = newSecret(bytes(range(KEY_SIZE)))


class Setting:
    """
    A spool with an SMS and an MMS in new/, and the application stand-in.
    """

    def setUpSpool(self, case):
        case.spool = openSpool(case)
        case.pool = startedPool(case)
        case.app = Application(reactor)

    def listen(self, case, tls=None, names=("127.0.0.1",)):
        return serveLoopback(case, QuietSite(case.app), tls, names) + "/inbox"


class SignatureTests(TestCase, Setting):
    def setUp(self):
        self.setUpSpool(self)
        self.url = self.listen(self)

    def target(self, secret=SECRET, clock=reactor, **config):
        config = DeliverConfig(
            url=self.url, secret=None if secret is None else parseSecret(secret), **config
        )
        target = webhookTarget(config, reactor=reactor, pool=self.pool)
        target._clock = clock
        return target

    @inlineCallbacks
    def deliverBoth(self, target):
        """
        Deliver an SMS and a two-part MMS; the requests the application got.
        """
        yield self.spool.accept(exampleMessage(id="sms-1"))
        yield acceptMMS(
            self.spool,
            exampleMessage(id="mms-1"),
            {"a.txt": (b"hello", "text/plain"), "b.jpg": (b"\xff\xd8" * 50_000, "image/jpeg")},
        )
        outcomes = []
        for name in ("sms-1", "mms-1"):
            outcomes.append((yield target.deliver(self.spool.dir("new") / name)))
        self.assertEqual(outcomes, [Delivered(), Delivered()])
        return self.app.received

    @inlineCallbacks
    def test_verifiedAsIs(self):
        """
        The reference verifier accepts mxrecv's requests as they arrive, an
        SMS and an MMS alike: webhook-id is the MX id, the timestamp now.
        """
        before = int(time.time())
        received = yield self.deliverBoth(self.target())
        verifier = Webhook(SECRET)
        for request, messageId in zip(received, ("sms-1", "mms-1"), strict=True):
            headers = {k.decode(): v.decode() for k, v in request.headers.items()}
            self.assertIsNone(verifier.verify(request.body, headers, json_parse=False))
            self.assertEqual(headers["webhook-id"], messageId)
            self.assertLessEqual(before, int(headers["webhook-timestamp"]))
            self.assertLessEqual(int(headers["webhook-timestamp"]), int(time.time()))
            self.assertTrue(headers["webhook-signature"].startswith("v1,"))
        self.assertEqual(received[1].fields[b"part"], [b"hello", b"\xff\xd8" * 50_000])

    @inlineCallbacks
    def test_changedBodyRejected(self):
        """
        A body changed by a byte is rejected, and so is another secret.
        """
        received = yield self.deliverBoth(self.target())
        for request in received:
            headers = {k.decode(): v.decode() for k, v in request.headers.items()}
            changed = bytearray(request.body)
            changed[len(changed) // 2] ^= 1
            self.assertRaises(
                WebhookVerificationError,
                Webhook(SECRET).verify,
                bytes(changed),
                headers,
                json_parse=False,
            )
            self.assertRaises(
                WebhookVerificationError,
                Webhook(newSecret()).verify,
                request.body,
                headers,
                json_parse=False,
            )

    @inlineCallbacks
    def test_oldTimestampRejected(self):
        """
        A request signed ten minutes ago is refused by the verifier (a
        replay): the timestamp is part of what is signed.
        """
        clock = Clock()
        clock.advance(time.time() - 600)
        received = yield self.deliverBoth(self.target(clock=clock))
        for request in received:
            headers = {k.decode(): v.decode() for k, v in request.headers.items()}
            self.assertRaisesRegex(
                WebhookVerificationError,
                "too old",
                Webhook(SECRET).verify,
                request.body,
                headers,
                json_parse=False,
            )

    @inlineCallbacks
    def test_unsigned(self):
        """
        Without a secret_file, the id and timestamp are still sent (the
        idempotency key), without a signature.
        """
        received = yield self.deliverBoth(self.target(secret=None))
        headers = received[0].headers
        self.assertEqual(headers[b"webhook-id"], b"sms-1")
        self.assertIn(b"webhook-timestamp", headers)
        self.assertNotIn(b"webhook-signature", headers)

    @inlineCallbacks
    def test_answerHead(self):
        """
        Only the first bytes of a long answer are kept in the outcome.
        """
        self.app.script["sms-1"] = [Answer(400, b"x" * (10 * ANSWER_HEAD))]
        yield self.spool.accept(exampleMessage(id="sms-1"))
        outcome = yield self.target().deliver(self.spool.dir("new") / "sms-1")
        self.assertEqual(outcome, PermanentFailure("HTTP 400: " + "x" * ANSWER_HEAD))


class SecretTests(TestCase):
    def test_newSecret(self):
        """
        A new secret is a whsec_ key of 32 random bytes, which the reference
        library takes.
        """
        a, b = newSecret(), newSecret()
        self.assertNotEqual(a, b)
        self.assertEqual(len(parseSecret(a)), KEY_SIZE)
        Webhook(a)

    def test_badSecrets(self):
        for text, why in [
            ("abc", "not a whsec_ secret"),
            ("whsec_!!!", "not base64"),
            ("whsec_" + "QUFB", "3 bytes"),
        ]:
            self.assertRaisesRegex(ValueError, why, parseSecret, text)


class BodyChangedTests(TestCase):
    def test_changedWhileSent(self):
        """
        A file that changes between the signing and the sending fails the
        sending with BodyChanged, before the body's last piece (the closing
        boundary) goes: the application never gets it whole.
        """
        path = Path(self.mktemp())
        path.write_bytes(b"a" * 100_000)
        body = FormBody.withRandomBoundary([FormField("part", "a", "text/plain", path=path)])
        length, digest = readBody(body, None)
        steps = []
        producer = SignedBodyProducer(
            body, length, digest, Cooperator(scheduler=steps.append).cooperate
        )
        consumer = StringTransport()
        d = producer.startProducing(consumer)
        path.write_bytes(b"b" * 100_000)
        while steps:
            steps.pop(0)()
        self.failureResultOf(d, BodyChanged)
        self.assertEqual(len(consumer.value()), length - len(closing(body.boundary)))


class HTTPSTests(TestCase, Setting):
    """
    An https:// url is verified against the system's CAs and [deliver]
    ca_file; there is no way to turn that off.
    """

    def setUp(self):
        self.setUpSpool(self)
        self.ca = TestCA.make()
        self.caFile = Path(self.mktemp())
        self.caFile.write_bytes(self.ca.pem)

    @inlineCallbacks
    def attempt(self, **config):
        yield self.spool.accept(exampleMessage(id="sms-1"))
        target = webhookTarget(
            DeliverConfig(url=self.url, **config), reactor=reactor, pool=self.pool
        )
        return (yield target.deliver(self.spool.dir("new") / "sms-1"))

    @inlineCallbacks
    def test_caFile(self):
        self.url = self.listen(self, tls=self.ca)
        self.assertEqual((yield self.attempt(ca_file=self.caFile)), Delivered())
        self.assertEqual(self.app.accepted(), ["sms-1"])

    @inlineCallbacks
    def test_unknownCA(self):
        """
        A certificate from a CA neither the system nor ca_file trusts is a
        temporary failure; nothing reaches the application.
        """
        self.url = self.listen(self, tls=self.ca)
        outcome = yield self.attempt(ca_file=None)
        self.assertIsInstance(outcome, TemporaryFailure)
        self.assertIn("certificate verify failed", outcome.why)
        self.assertEqual(self.app.received, [])

    @inlineCallbacks
    def test_wrongName(self):
        """
        A certificate for another name is refused, even from a trusted CA.
        """
        self.url = self.listen(self, tls=self.ca, names=("app.example.com",))
        outcome = yield self.attempt(ca_file=self.caFile)
        self.assertIsInstance(outcome, TemporaryFailure)
        self.assertEqual(self.app.received, [])
