"""
The admin listener: /health says whether the spool is writable, the
listeners are up and the HTTPS certificates unexpired; /metrics is the
Prometheus text format.
"""

import ipaddress
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.ssl import (
    AcceptableCiphers,
    Certificate,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from mxrecv.config import AdminConfig
from mxrecv.ops.admin import AdminSite, Health, localErrorCheck, probeWritable
from mxrecv.ops.metrics import Metrics
from mxrecv.spool.layout import PENDING
from mxrecv.tap import Options, makeService
from mxrecv.tls.certificate import ReloadableCertificate
from mxrecv.tls.selfsigned import certificatePEM, newKey

from .certificates import CA, DAY, NOW, connect, issue, treqTrusting, writeFiles
from .running import ANY_PORT, client, rawConnection, run, runningConfig
from .support import ChannelWatch, connectPeer, startedPool


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
                    "mms": {"ok": True, "detail": "none held up by a local error", "waiting": 0},
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

    def adminFor(self, directory: Path, **health) -> str:
        """
        An admin listener of its own for a L{Health} on C{directory}, with
        one callback listener up; its URL.
        """
        health = Health(
            directory=directory,
            sync=True,
            listening=lambda: 1,
            expected=1,
            reactor=reactor,
            pool=startedPool(self),
            **health,
        )
        site = AdminSite(
            health=health, registry=Metrics().registry, reactor=reactor, pool=startedPool(self)
        )
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    @inlineCallbacks
    def test_spoolUnwritable(self):
        """
        A spool directory that cannot be written to makes /health 503.
        """
        code, body = yield self.health(self.adminFor(Path(self.mktemp())))
        self.assertEqual(code, 503)
        self.assertFalse(body["checks"]["spool"]["ok"])
        self.assertIn("cannot write", body["checks"]["spool"]["detail"])

    @inlineCallbacks
    def test_certificateExpiredInService(self):
        """
        A certificate in service past its notAfter (put in service the day
        before it expired, never renewed) makes /health 503, naming it.
        """
        fresh = writeFiles(Path(self.mktemp()), *issue("fresh", notAfter=NOW + 30 * DAY))
        old = writeFiles(Path(self.mktemp()), *issue("old", notBefore=NOW - 60 * DAY, notAfter=NOW - DAY))
        certificates = [
            ReloadableCertificate(fresh, now=lambda: NOW),
            ReloadableCertificate(old, now=lambda: NOW - 2 * DAY),
        ]
        code, body = yield self.health(
            self.adminFor(self.running.spool / "tmp", certificates=certificates)
        )
        self.assertEqual(code, 503)
        self.assertFalse(body["ok"])
        self.assertEqual(
            body["checks"]["tls"],
            {
                "ok": False,
                "detail": f"1 of 2 valid; expired: CN=old served from {old.certKey} on "
                f"{NOW - DAY:%Y-%m-%d %H:%M:%S} UTC",
            },
        )
        self.assertTrue(body["checks"]["spool"]["ok"])

    @inlineCallbacks
    def test_certificateValid(self):
        """
        With an HTTPS listener whose certificate has not expired, /health
        answers 200 and says when the first certificate expires.
        """
        files = writeFiles(Path(self.mktemp()).absolute(), *issue("server", notAfter=NOW + 30 * DAY))
        https = f"ssl:0:interface=127.0.0.1:privateKey={files.privateKey}:certKey={files.certKey}"
        running = run(self, runningConfig(self, server_listen=ANY_PORT + (https,)))
        code, body = yield self.health(running.admin)
        self.assertEqual(code, 200)
        self.assertEqual(
            body["checks"]["tls"],
            {"ok": True, "detail": f"1 of 1 valid; the first expires on {NOW + 30 * DAY:%Y-%m-%d %H:%M:%S} UTC"},
        )
        self.assertEqual(body["checks"]["listeners"], {"ok": True, "detail": "2 of 2 up"})

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


class LocalErrorCheckTests(TestCase):
    @inlineCallbacks
    def test_countsWhatWaits(self):
        """
        The C{mms} check says how many MMS wait after a local error, as the
        metrics count them; it never fails /health.
        """
        metrics = Metrics()
        check = localErrorCheck(metrics.registry, reactor, startedPool(self))
        self.assertEqual(
            (yield check()).toJSON(),
            {"ok": True, "detail": "none held up by a local error", "waiting": 0},
        )
        metrics.waitingAfterLocalError(3)
        self.assertEqual(
            (yield check()).toJSON(),
            {"ok": True, "detail": "3 held up by a local error, taken up again with backoff",
             "waiting": 3},
        )
        self.assertEqual(
            metrics.registry.get_sample_value("mxrecv_mms_local_error_waiting"), 3
        )


class ProbeTests(TestCase):
    def test_leavesNothing(self):
        directory = Path(self.mktemp())
        directory.mkdir()
        probeWritable(directory)
        self.assertEqual(list(directory.iterdir()), [])

    def test_raises(self):
        self.assertRaises(OSError, probeWritable, Path(self.mktemp()))


class AdminAccessTests(TestCase):
    """
    Who may use the admin listener: clients in [admin] allow (others are
    dropped at accept, before anything is read), with the bearer token for
    what is not a GET; and no client may take long over its headers.
    """

    TOKEN = "s3cret-admin-token-0123"
    timeout = 30

    def setUp(self):
        self.running = run(
            self,
            runningConfig(
                self,
                admin=AdminConfig(
                    listen=ANY_PORT,
                    allow=(ipaddress.ip_network("127.0.0.1/32"),),
                    token=self.TOKEN,
                ),
            ),
        )
        self.port = int(self.running.admin.rsplit(":", 1)[1])
        self.http = client()

    @inlineCallbacks
    def test_outsideAllowDropped(self):
        """
        A client outside [admin] allow is disconnected without an answer,
        even to a whole request; one inside gets its answer.
        """
        outside = yield rawConnection(self.port, source="127.0.0.2")
        outside.transport.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        yield outside.lost
        self.assertEqual(outside.received, b"")
        inside = yield rawConnection(self.port, source="127.0.0.1")
        inside.transport.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        yield inside.lost
        self.assertTrue(inside.received.startswith(b"HTTP/1.1 200 "), inside.received)

    @inlineCallbacks
    def test_postNeedsToken(self):
        """
        POST /pending/NAME without the token, or with another, is refused
        with 401 and takes nothing up; with it, it is served.
        """
        (self.running.spool / PENDING / "m1").mkdir()
        url = self.running.admin + "/pending/m1"
        for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": self.TOKEN}]:
            response = yield self.http.post(url, headers=headers)
            body = yield response.text()
            self.assertEqual(response.code, 401, body)
            self.assertEqual(response.headers.getRawHeaders("WWW-Authenticate"), ['Bearer realm="mxrecv"'])
            self.assertIn("bearer token", body)
        response = yield self.http.post(url, headers={"Authorization": f"Bearer {self.TOKEN}"})
        self.assertEqual(response.code, 202)
        self.assertEqual((yield response.json()), {"taken": "m1"})

    @inlineCallbacks
    def test_largeBodyRefusedFromHeaders(self):
        """
        A request whose Content-Length is over what the admin site takes
        (its forms are small) is answered 413 from its headers, before any
        of its body is read: a client without the token cannot make the
        server buffer and parse a body.
        """
        peer = yield rawConnection(self.port, source="127.0.0.1")
        peer.transport.write(
            b"POST /pending/m1 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        answer = yield peer.headers
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)
        self.assertIn(b"body over the limit of 65536 bytes", answer)
        yield peer.lost

    @inlineCallbacks
    def test_largeChunkedBodyRefused(self):
        """
        A chunked body is refused with 413 as soon as it is over the limit,
        without waiting for its end.
        """
        peer = yield rawConnection(self.port, source="127.0.0.1")
        chunk = b"%x\r\n%s\r\n" % (16384, b"x" * 16384)
        peer.transport.write(
            b"POST /pending/m1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\n" + chunk * 5
        )
        answer = yield peer.headers
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)
        yield peer.lost

    @inlineCallbacks
    def test_getWithoutToken(self):
        """
        GET /health and /metrics need no token (scrapers and health checks).
        """
        for path in ("/health", "/metrics"):
            response = yield self.http.get(self.running.admin + path)
            self.assertEqual(response.code, 200)
            yield response.content()


class AdminHeaderDeadlineTests(TestCase):
    """
    The admin listener's requests get the callback listeners' header
    deadline (on a real connection, with the site's clock driven here).
    """

    timeout = 30

    @inlineCallbacks
    def test_halfRequestCutOff(self):
        clock = Clock()
        site = AdminSite(
            health=None,
            registry=Metrics().registry,
            reactor=clock,
            pool=None,
            headerTimeout=10.0,
        )
        watch = ChannelWatch(site)
        port = reactor.listenTCP(0, site.gate().wrap(site), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        peer = yield connectPeer(port)
        yield watch.connected()
        peer.transport.write(b"GET /heal")
        yield watch.hasReceived(9)
        clock.advance(9)
        self.assertFalse(peer.lost.called)
        clock.advance(1)
        yield peer.lost
        self.assertTrue(peer.received.startswith(b"HTTP/1.1 408 "), peer.received)


class ServerHeaderTests(TestCase):
    @inlineCallbacks
    def test_adminAnswers(self):
        """
        The admin listener's answers name the server "mxrecv", without a
        version; its error pages too.
        """
        running = run(self, runningConfig(self))
        for path in ("/health", "/nothing"):
            response = yield client().get(running.admin + path)
            yield response.content()
            self.assertEqual(response.headers.getRawHeaders("Server"), ["mxrecv"])


class AdminHostTests(TestCase):
    """
    The inbox answers only under the admin listener's own names (DNS
    rebinding: a page of another site, its name pointed at 127.0.0.1,
    would otherwise read it); /health and /metrics answer scrapers under
    any name, and hold no message.
    """

    @inlineCallbacks
    def get(self, port, path, host):
        raw = yield rawConnection(port)
        raw.transport.write(
            b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
        )
        yield raw.lost
        return raw.received

    @inlineCallbacks
    def test_inboxUnderOwnNamesOnly(self):
        running = run(
            self, runningConfig(self, admin=AdminConfig(listen=ANY_PORT, hosts=("ops.example",)))
        )
        port = int(running.admin.rsplit(":", 1)[1])
        address = b"127.0.0.1:%d" % (port,)
        for host in (b"rebind.attacker.example:%d" % (port,), b"localhost.attacker.example"):
            received = yield self.get(port, b"/inbox", host)
            self.assertTrue(received.startswith(b"HTTP/1.1 421 "), received)
            self.assertNotIn(b"<table", received)
            for path in (b"/health", b"/metrics"):
                received = yield self.get(port, path, host)
                self.assertTrue(received.startswith(b"HTTP/1.1 200 "), received)
        for host in (address, b"localhost:%d" % (port,), b"ops.example"):
            received = yield self.get(port, b"/inbox", host)
            self.assertTrue(received.startswith(b"HTTP/1.1 200 "), received[:200])


def clientHello() -> bytes:
    """
    The first flight of a TLS client: what it sends before the server has
    said anything.
    """
    connection = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    connection.set_connect_state()
    try:
        connection.do_handshake()
    except SSL.WantReadError:
        pass
    return connection.bio_read(65536)


class AdminTLSTests(TestCase):
    """
    An C{ssl:} admin listener is built as the callback ones are: a client
    outside [admin] allow is dropped before any TLS work, the others get
    mxrecv's TLS policy and reloadable certificate.
    """

    timeout = 30

    @inlineCallbacks
    def test_outsideAllowNoHandshake(self):
        """
        A client outside [admin] allow that sends its ClientHello gets
        nothing back (no ServerHello: no TLS work done) and is
        disconnected; nothing is logged as an error.  A client inside
        completes its handshake and is served.
        """
        files = writeFiles(Path(self.mktemp()).absolute(), *issue("admin"))
        https = f"ssl:0:interface=127.0.0.1:privateKey={files.privateKey}:certKey={files.certKey}"
        allow = (ipaddress.ip_network("127.0.0.1/32"),)
        running = run(self, runningConfig(self, admin=AdminConfig(listen=(https,), allow=allow)))
        port = running.service.adminListeners[0].port.getHost().port
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        outside = yield rawConnection(port, source="127.0.0.2")
        outside.transport.write(clientHello())
        yield outside.lost
        self.assertEqual(outside.received, b"")
        self.assertEqual([e for e in events if e.get("log_failure") or e.get("isError")], [])
        response = yield treqTrusting(CA).get(f"https://127.0.0.1:{port}/health")
        self.assertEqual(response.code, 200)
        yield response.content()

    @inlineCallbacks
    def test_policy(self):
        """
        The admin listener's TLS is mxrecv's: a TLS 1.2 client offering only
        RSA key exchange (no forward secrecy), which Twisted's default list
        would accept, is refused.
        """
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        files = writeFiles(Path(self.mktemp()).absolute(), *issue("rsa", key=key))
        https = f"ssl:0:interface=127.0.0.1:privateKey={files.privateKey}:certKey={files.certKey}"
        running = run(self, runningConfig(self, admin=AdminConfig(listen=(https,))))
        port = running.service.adminListeners[0].port.getHost().port
        client = yield connect(
            port,
            optionsForClientTLS(
                "127.0.0.1",
                trustRoot=trustRootFromCertificates([Certificate.loadPEM(certificatePEM(CA))]),
                extraCertificateOptions={
                    "acceptableCiphers": AcceptableCiphers.fromOpenSSLCipherString("AES128-SHA"),
                    "lowerMaximumSecurityTo": TLSVersion.TLSv1_2,
                },
            ),
        )
        failure = yield self.assertFailure(client.handshake, SSL.Error)
        self.assertIn("handshake failure", str(failure))

    def test_badCertificateStopsStartup(self):
        """
        An admin certificate that cannot be served stops start-up before
        anything listens, naming the listener, as a callback listener's
        does.
        """
        files = writeFiles(Path(self.mktemp()).absolute(), newKey(), issue("admin")[1])
        https = f"ssl:0:interface=127.0.0.1:privateKey={files.privateKey}:certKey={files.certKey}"
        options = Options()
        options["settings"] = runningConfig(self, admin=AdminConfig(listen=(https,)))
        message = str(self.assertRaises(SystemExit, makeService, options, reactor))
        self.assertIn("admin.listen[0]", message)
        self.assertIn(f"the private key {files.privateKey} does not match", message)
