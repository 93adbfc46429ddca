"""
The admin listener: /health says whether the spool is writable and the
listeners are up; /metrics is the Prometheus text format.
"""

from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from mxrecv.admin import AdminSite, Health, probeWritable
from mxrecv.metrics import Metrics

from .running import client, run, runningConfig
from .support import startedPool


class HealthTests(TestCase):
    def setUp(self):
        self.running = run(self, runningConfig(self))
        self.http = client()

    @inlineCallbacks
    def health(self, admin=None):
        response = yield self.http.get((admin or self.running.admin) + "/health")
        body = yield response.json()
        return response.code, body

    @inlineCallbacks
    def test_healthy(self):
        code, body = yield self.health()
        self.assertEqual(code, 200)
        self.assertEqual(
            body,
            {
                "ok": True,
                "checks": {
                    "spool": {"ok": True, "detail": "writable"},
                    "listeners": {"ok": True, "detail": "1 of 1 up"},
                },
            },
        )
        self.assertEqual(list((self.running.spool / "tmp").iterdir()), [])

    @inlineCallbacks
    def test_listenerDown(self):
        """
        Once the callback listener has stopped, /health answers 503.
        """
        yield self.running.service.listeners[0].stopService()
        code, body = yield self.health()
        self.assertEqual(code, 503)
        self.assertFalse(body["ok"])
        self.assertEqual(body["checks"]["listeners"], {"ok": False, "detail": "0 of 1 up"})
        self.assertTrue(body["checks"]["spool"]["ok"])

    @inlineCallbacks
    def test_spoolUnwritable(self):
        """
        A spool directory that cannot be written to makes /health 503.
        """
        missing = Path(self.mktemp())
        health = Health(
            directory=missing,
            sync=True,
            listening=lambda: 1,
            expected=1,
            reactor=reactor,
            pool=startedPool(self),
        )
        site = AdminSite(
            health=health, registry=Metrics().registry, reactor=reactor, pool=startedPool(self)
        )
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        code, body = yield self.health(f"http://127.0.0.1:{port.getHost().port}")
        self.assertEqual(code, 503)
        self.assertFalse(body["checks"]["spool"]["ok"])
        self.assertIn("cannot write", body["checks"]["spool"]["detail"])

    @inlineCallbacks
    def test_metricsFormat(self):
        response = yield self.http.get(self.running.admin + "/metrics")
        self.assertEqual(response.code, 200)
        self.assertTrue(
            response.headers.getRawHeaders("content-type")[0].startswith("text/plain; version=")
        )
        text = yield response.text()
        self.assertIn("# TYPE mxrecv_callbacks_total counter", text)

    @inlineCallbacks
    def test_unknownPath(self):
        response = yield self.http.get(self.running.admin + "/nothing")
        self.assertEqual(response.code, 404)
        yield response.content()


class ProbeTests(TestCase):
    def test_leavesNothing(self):
        directory = Path(self.mktemp())
        directory.mkdir()
        probeWritable(directory)
        self.assertEqual(list(directory.iterdir()), [])

    def test_raises(self):
        self.assertRaises(OSError, probeWritable, Path(self.mktemp()))
