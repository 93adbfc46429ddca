"""
HTTPS: real handshakes on 127.0.0.1 against certificates made here by a test
CA; reloading; start-up checks; the C{ssl:} syntax; C{mxrecv-selfsigned}.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import re
import signal
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from urllib.parse import urlencode

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.ssl import (
    AcceptableCiphers,
    TLSVersion,
    optionsForClientTLS,
)
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mxrecv.config import ConfigError, parseConfig, parseListen
from mxrecv.tap import Options, makeService
from mxrecv.tls import selfsigned
from mxrecv.tls.certificate import (
    CertificateError,
    ReloadableCertificate,
    clockTime,
    loadCertificate,
)
from mxrecv.tls.description import TLSFiles, TLSListen, parseTLS
from mxrecv.tls.reload import CertificateReloadService
from mxrecv.tls.selfsigned import certificatePEM, newKey
from mxrecv.web.access import AllowList, Gate
from mxrecv.web.listen import tlsEndpoint, tlsFactory
from mxrecv.web.service import buildSite

from .certificates import (
    CA,
    DAY,
    NOW,
    OTHER_CA,
    OldTLSClient,
    certNotAfter,
    commonName,
    connect,
    intermediate,
    issue,
    treqTrusting,
    trusting,
    trustRoot,
    writeFiles,
)
from .strategies import contentTypeFor, multipartBody
from .support import (
    BOUNDARY,
    LOOPBACK_ONLY,
    SMS,
    ChannelWatch,
    fileWriters,
    httpClient,
    mmsFields,
    openSpool,
    serverConfig,
)
from .twistd import runTwistd


def smsParams(id: str, text: str = "hello") -> dict[str, str]:
    return {**SMS, "id": id, "message": text}


class HTTPSServerMixin:
    """
    An HTTPS listener built as C{mxrecv.tap} builds it, on a spool of its
    own, on an ephemeral port of 127.0.0.1.
    """

    @inlineCallbacks
    def serve(self, files: TLSFiles, allow=LOOPBACK_ONLY, siteReactor=reactor, **writerLimits):
        spool = openSpool(self)
        self.spoolDir = spool.root
        config = serverConfig(allow=tuple(ipaddress.ip_network(a) for a in allow))
        site = self.site = buildSite(
            config, spool, siteReactor, writers=fileWriters(self, **writerLimits)
        )
        self.certificate = ReloadableCertificate(files, now=clockTime(reactor))
        factory = Gate(AllowList(config.server.allow)).wrap(tlsFactory(site, self.certificate))
        port = yield tlsEndpoint(reactor, TLSListen(0, files, "127.0.0.1")).listen(factory)
        self.addCleanup(self._closeAll, port, factory.wrapped)
        return port.getHost().port

    @inlineCallbacks
    def _closeAll(self, port, tlsFactory):
        yield port.stopListening()
        for protocol in list(tlsFactory.protocols):
            protocol.transport.abortConnection()
        # The server side of a closed connection goes on a later turn.
        for _ in range(200):
            if not tlsFactory.protocols:
                break
            yield deferLater(reactor, 0.01, lambda: None)

    def newMessages(self) -> list[dict]:
        new = self.spoolDir / "new"
        return [json.loads((d / "message.json").read_text()) for d in sorted(new.iterdir())]


class HTTPSTests(HTTPSServerMixin, TestCase):
    def setUp(self):
        key, cert = issue("server one")
        self.files = writeFiles(Path(self.mktemp()), key, cert)

    @inlineCallbacks
    def test_getCallback(self):
        """
        A client that trusts the CA completes a GET callback over HTTPS; the
        message is in new/ when the 200 arrives.
        """
        port = yield self.serve(self.files)
        response = yield treqTrusting(CA).get(
            f"https://127.0.0.1:{port}/?{urlencode(smsParams('tls-1', 'über'))}"
        )
        self.assertEqual(response.code, 200)
        self.assertEqual((yield response.content()), b"OK\n")
        [message] = self.newMessages()
        self.assertEqual((message["id"], message["message"]), ("tls-1", "über"))

    @inlineCallbacks
    def test_uploadPausedAndResumed(self):
        """
        An MMS upload over HTTPS whose writer is bounded to far less than
        the zip (so that the TLS connection is paused and resumed many
        times) arrives whole.
        """
        port = yield self.serve(self.files, fileLimit=32 * 1024, totalLimit=64 * 1024, batch=8192)
        zipData = os.urandom(2 * 1024 * 1024)
        fields = mmsFields("tls-mms")
        response = yield treqTrusting(CA).post(
            f"https://127.0.0.1:{port}/",
            data=multipartBody(BOUNDARY, fields, zipData),
            headers={b"Content-Type": [contentTypeFor(BOUNDARY)]},
        )
        self.assertEqual(response.code, 200, (yield response.text()))
        self.assertEqual((self.spoolDir / "pending" / "tls-mms" / "mms.zip").read_bytes(), zipData)

    @inlineCallbacks
    def test_policy(self):
        """
        The connection uses TLS 1.2 or later, an ECDHE AEAD cipher, and
        http/1.1 over ALPN.
        """
        port = yield self.serve(self.files)
        client = yield connect(port, trusting(CA))
        yield client.handshake
        connection = client.transport._tlsConnection
        self.assertIn(connection.get_protocol_version_name(), ("TLSv1.2", "TLSv1.3"))
        cipher = connection.get_cipher_name()
        self.assertTrue(cipher.startswith(("TLS_", "ECDHE-")) and ("GCM" in cipher or "CHACHA20" in cipher), cipher)
        self.assertEqual(connection.get_alpn_proto_negotiated(), b"")
        # A context cannot be changed (nor read) once used: check a fresh one.
        options = loadCertificate(self.files, NOW).options.getContext().set_options(0)
        for flag in (SSL.OP_NO_RENEGOTIATION, SSL.OP_NO_COMPRESSION, SSL.OP_CIPHER_SERVER_PREFERENCE):
            self.assertTrue(options & flag, flag)
        client.transport.loseConnection()
        yield client.lost

    @inlineCallbacks
    def test_tls12NonForwardSecret(self):
        """
        A TLS 1.2 client that offers only RSA key exchange (no forward
        secrecy), which Twisted's default list would accept, is refused.
        """
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        port = yield self.serve(writeFiles(Path(self.mktemp()), *issue("rsa", key=key)))
        client = yield connect(
            port,
            optionsForClientTLS(
                "127.0.0.1",
                trustRoot=trustRoot(CA),
                extraCertificateOptions={
                    "acceptableCiphers": AcceptableCiphers.fromOpenSSLCipherString(
                        "AES128-SHA:AES256-GCM-SHA384"
                    ),
                    "lowerMaximumSecurityTo": TLSVersion.TLSv1_2,
                },
            ),
        )
        failure = yield self.assertFailure(client.handshake, SSL.Error)
        self.assertIn("handshake failure", str(failure))

    @inlineCallbacks
    def test_oldTLSRefused(self):
        """
        A client limited to TLS 1.0 and 1.1 is refused by the server with a
        protocol version alert.
        """
        port = yield self.serve(self.files)
        client = yield connect(port, OldTLSClient())
        failure = yield self.assertFailure(client.handshake, SSL.Error)
        self.assertIn("alert protocol version", str(failure))

    @inlineCallbacks
    def test_untrustedCA(self):
        """
        A client that does not trust the CA gives up; nothing is stored.
        """
        port = yield self.serve(self.files)
        d = treqTrusting(OTHER_CA).get(f"https://127.0.0.1:{port}/?{urlencode(smsParams('tls-2'))}")
        failure = yield self.assertFailure(d, Exception)
        self.assertIn("certificate verify failed", repr(failure.reasons if hasattr(failure, "reasons") else failure))
        self.assertEqual(self.newMessages(), [])

    @inlineCallbacks
    def test_notAllowedDroppedBeforeHandshake(self):
        """
        A client outside C{allow} is disconnected as soon as it connects,
        without a byte from the server: no handshake is even attempted.
        """
        port = yield self.serve(self.files, allow=("10.0.0.0/8",))
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        client = yield connect(port)
        client.handshake.addErrback(lambda _: None)  # plain TCP: none expected
        yield client.lost
        self.assertEqual(client.received, b"")
        self.assertIn("127.0.0.1", [e.get("client") for e in events if "Dropped" in e["log_format"]])
        tlsClient = yield connect(port, trusting(CA))
        yield self.assertFailure(tlsClient.handshake, Exception)

    @inlineCallbacks
    def test_reloadOnSIGHUPKeepsUploadInFlight(self):
        """
        On SIGHUP new connections get the new certificate, while a POST whose
        body is still arriving on a connection made before finishes with a
        200 on the old one.
        """
        port = yield self.serve(self.files)
        reloads = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        before = signal.getsignal(signal.SIGHUP)
        service = CertificateReloadService([self.certificate], reactor=reactor, handleSignal=True)
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())

        slow = yield connect(port, trusting(CA))
        self.assertEqual(commonName((yield slow.handshake)), "server one")
        body = urlencode(smsParams("tls-slow", "in flight")).encode()
        slow.transport.write(
            b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(body)
        )
        yield slow.waitFor(b"100 Continue\r\n\r\n")
        slow.transport.write(body[:20])

        key, cert = issue("server two")
        writeFiles(self.files.privateKey.parent, key, cert)
        reloaded = Deferred()
        globalLogPublisher.addObserver(_whenLogged("Certificate reloaded", reloaded))
        os.kill(os.getpid(), signal.SIGHUP)
        yield reloaded

        fresh = yield connect(port, trusting(CA))
        self.assertEqual(commonName((yield fresh.handshake)), "server two")
        fresh.transport.loseConnection()
        service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)

        slow.transport.write(body[20:])
        answer = yield slow.waitFor(b"\r\n\r\nOK\n")
        self.assertIn(b"HTTP/1.1 200 OK", answer)
        self.assertEqual(commonName(slow.transport.getPeerCertificate()), "server one")
        slow.transport.loseConnection()
        yield fresh.lost
        yield slow.lost
        self.assertEqual([m["id"] for m in self.newMessages()], ["tls-slow"])
        self.assertTrue(any("Certificate reloaded" in e.get("log_format", "") for e in reloads))

    @inlineCallbacks
    def test_brokenReloadKeepsOldCertificate(self):
        """
        A new key that does not match the new certificate is refused with an
        error logged; clients keep getting the old certificate.
        """
        port = yield self.serve(self.files)
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        _, cert = issue("server two")
        writeFiles(self.files.privateKey.parent, newKey(), cert)
        self.assertFalse(self.certificate.reload())
        [error] = [e for e in events if e["log_level"].name == "error"]
        self.assertIn("does not match", error["error"])
        client = yield connect(port, trusting(CA))
        self.assertEqual(commonName((yield client.handshake)), "server one")
        client.transport.loseConnection()
        yield client.lost


class HTTPSHeaderDeadlineTests(HTTPSServerMixin, TestCase):
    """
    The header deadline on an HTTPS listener: it starts with the TCP
    connection, so it covers the TLS handshake.  The site's clock is driven
    by the test.
    """

    # Waits are on real connections: a failure should not take trial's
    # default two minutes.
    timeout = 30

    def setUp(self):
        key, cert = issue("server one")
        self.files = writeFiles(Path(self.mktemp()), key, cert)
        self.clock = Clock()

    @inlineCallbacks
    def serveWatched(self):
        port = yield self.serve(self.files, siteReactor=self.clock)
        self.watch = ChannelWatch(self.site)
        self.outcomes = []
        self.site.observe = self.outcomes.append
        return port

    @inlineCallbacks
    def test_noClientHello(self):
        """
        A client that connects and never sends its ClientHello is dropped,
        without an answer, once header_timeout has passed.
        """
        port = yield self.serveWatched()
        made = self.watch.connected()
        client = yield connect(port)
        client.handshake.addErrback(lambda _: None)  # plain TCP: none expected
        yield made
        self.clock.advance(self.site.headerTimeout - 1)
        self.assertEqual(self.outcomes, [])
        self.clock.advance(1)
        yield client.lost
        self.assertEqual(client.received, b"")
        [outcome] = self.outcomes
        self.assertEqual((outcome.status, outcome.client), (408, "127.0.0.1"))
        self.assertIn("dropped without an answer", outcome.reason)

    @inlineCallbacks
    def test_partialHeaders(self):
        """
        After the handshake, a client whose headers are not in within
        header_timeout of connecting gets a 408 over TLS and is cut off.
        """
        port = yield self.serveWatched()
        made = self.watch.connected()
        client = yield connect(port, trusting(CA))
        yield client.handshake
        yield made
        partial = b"GET / HTTP/1.1\r\nHo"
        client.transport.write(partial)
        yield self.watch.hasReceived(len(partial))
        self.clock.advance(self.site.headerTimeout)
        yield client.lost
        self.assertTrue(client.received.startswith(b"HTTP/1.1 408 "), client.received)
        self.assertEqual([o.status for o in self.outcomes], [408])


def _whenLogged(text: str, d: Deferred):
    def observer(event):
        if text in event.get("log_format", "") and not d.called:
            globalLogPublisher.removeObserver(observer)
            reactor.callLater(0, d.callback, event)

    return observer


class WatchTests(SynchronousTestCase):
    def test_watchReloadsChangedFiles(self):
        """
        With C{watch}, a replaced certificate is in service after the next
        check; files left alone are not reloaded.
        """
        clock = Clock()
        files = writeFiles(Path(self.mktemp()), *issue("server one"))
        current = ReloadableCertificate(files, now=lambda: NOW)
        service = CertificateReloadService([current], reactor=clock, watch=1.0)
        service.startService()
        self.addCleanup(service.stopService)
        before = current.current
        clock.advance(1)
        self.assertIs(current.current, before)
        self.assertIsNone(current.reloadIfChanged())
        writeFiles(files.privateKey.parent, *issue("server two"))
        clock.advance(1)
        self.assertEqual(current.current.subject, "CN=server two")

    def test_reloadRefusesChainNotIssuing(self):
        """
        A renewed certificate from a new intermediate, while the
        C{extraCertChain} file still holds the old one, is not put in
        service: the error names the chain file, and the certificate in
        service stays.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        base = Path(self.mktemp())
        oldKey, old = intermediate("R1")
        files = writeFiles(base, *issue("server one", by=(oldKey, old)))
        chain = base / "chain.pem"
        chain.write_bytes(certificatePEM(old))
        files = TLSFiles(files.privateKey, files.certKey, chain)
        current = ReloadableCertificate(files, now=lambda: NOW)
        before = current.current

        newKey_, new = intermediate("R2")
        writeFiles(base, *issue("server two", by=(newKey_, new)))
        self.assertFalse(current.reload())
        self.assertIs(current.current, before)
        [error] = [e for e in events if e["log_level"].name == "error"]
        self.assertEqual(error["subject"], "CN=server one")
        self.assertIn(f"the chain certificate CN=R1 in {chain} did not issue CN=server two", error["error"])

        chain.write_bytes(certificatePEM(new))
        self.assertTrue(current.reload())
        self.assertEqual(current.current.subject, "CN=server two")

    def test_expiryWarning(self):
        """
        A certificate that expires within the threshold is served with a
        warning; the daily check warns again.
        """
        clock = Clock()
        clock.advance(NOW.timestamp())
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        files = writeFiles(Path(self.mktemp()), *issue("soon", notAfter=NOW + 5 * DAY))
        current = ReloadableCertificate(files, now=clockTime(clock), warnDays=14)
        service = CertificateReloadService([current], reactor=clock)
        service.startService()
        self.addCleanup(service.stopService)
        warnings = lambda: [e for e in events if e["log_level"].name == "warn"]
        self.assertEqual(len(warnings()), 1)
        self.assertAlmostEqual(warnings()[0]["days"], 5.0, places=2)
        clock.advance(86400)
        self.assertEqual(len(warnings()), 2)
        self.assertAlmostEqual(warnings()[1]["days"], 4.0, places=2)

    def test_expiryWarningForChain(self):
        """
        The warning names an intermediate that expires first.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        base = Path(self.mktemp())
        by = intermediate("R1", notAfter=NOW + 5 * DAY)
        files = writeFiles(base, *issue("later", by=by, notAfter=NOW + 30 * DAY))
        chain = base / "chain.pem"
        chain.write_bytes(certificatePEM(by[1]))
        ReloadableCertificate(TLSFiles(files.privateKey, files.certKey, chain), now=lambda: NOW, warnDays=14)
        [warning] = [e for e in events if e["log_level"].name == "warn"]
        self.assertEqual((warning["expiring"], warning["subject"]), ("CN=R1", "CN=later"))
        self.assertAlmostEqual(warning["days"], 5.0, places=2)
        [serving] = [e for e in events if e["log_format"].startswith("Serving")]
        self.assertEqual(
            formatEvent(serving).split(": ", 1)[1],
            f"CN=later (expires {certNotAfter(by[1]).isoformat()}, with its chain certificate CN=R1)",
        )

    def test_noWarningFarFromExpiry(self):
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        files = writeFiles(Path(self.mktemp()), *issue("later", notAfter=NOW + 30 * DAY))
        ReloadableCertificate(files, now=lambda: NOW, warnDays=14)
        self.assertEqual([e for e in events if e["log_level"].name == "warn"], [])


class LoadTests(SynchronousTestCase):
    """
    What L{loadCertificate} refuses, each error naming the file.
    """

    def setUp(self):
        self.dir = Path(self.mktemp())
        self.key, self.cert = issue("server one")

    def assertRefused(self, files: TLSFiles, *fragments: str) -> None:
        e = self.assertRaises(CertificateError, loadCertificate, files, NOW)
        for fragment in fragments:
            self.assertIn(fragment, str(e))

    def test_missingKey(self):
        files = writeFiles(self.dir, self.key, self.cert)
        files.privateKey.unlink()
        self.assertRefused(files, str(files.privateKey), "cannot read")

    def test_unreadableKey(self):
        files = writeFiles(self.dir, self.key, self.cert)
        files.privateKey.unlink()
        files.privateKey.mkdir()
        self.assertRefused(files, str(files.privateKey), "cannot read")

    def test_notAKey(self):
        files = writeFiles(self.dir, self.key, self.cert, keyData=b"not a key\n")
        self.assertRefused(files, str(files.privateKey), "not an unencrypted PEM key")

    def test_mismatch(self):
        files = writeFiles(self.dir, newKey(), self.cert)
        self.assertRefused(files, str(files.privateKey), str(files.certKey), "does not match")

    def test_expired(self):
        files = writeFiles(self.dir, *issue("old", notBefore=NOW - 60 * DAY, notAfter=NOW - DAY))
        self.assertRefused(files, str(files.certKey), "expired on")

    def test_notYetValid(self):
        files = writeFiles(self.dir, *issue("future", notBefore=NOW + DAY))
        self.assertRefused(files, str(files.certKey), "not valid before")

    def test_notACertificate(self):
        files = writeFiles(self.dir, self.key, self.cert)
        files.certKey.write_text("garbage\n")
        self.assertRefused(files, str(files.certKey), "no PEM certificate")

    def test_chain(self):
        """
        A chain in its own file or after the certificate is sent along.
        """
        files = writeFiles(self.dir, self.key, self.cert)
        files.certKey.write_bytes(certificatePEM(self.cert, CA))
        self.assertEqual(loadCertificate(files, NOW).options.extraCertChain[0].get_subject().CN, "mxrecv test CA")
        chain = self.dir / "chain.pem"
        chain.write_bytes(certificatePEM(CA))
        files = TLSFiles(files.privateKey, files.certKey, chain)
        # Given in both places, it is sent once.
        self.assertEqual(len(loadCertificate(files, NOW).options.extraCertChain), 1)

    def withChain(self, cert, *chain) -> TLSFiles:
        """
        Our key, C{cert} in C{certKey}, C{chain} in C{extraCertChain}.
        """
        files = writeFiles(self.dir, self.key, cert)
        path = self.dir / "chain.pem"
        path.write_bytes(certificatePEM(*chain))
        return TLSFiles(files.privateKey, files.certKey, path)

    def test_chainEndingInIntermediate(self):
        """
        A chain that stops at the intermediate, without the root (as public
        CAs issue it), is accepted, in C{certKey} after the certificate or
        in C{extraCertChain}; so is one that goes on to the root.
        """
        by = intermediate("intermediate")
        _, cert = issue("server one", key=self.key, by=by)
        files = self.withChain(cert, by[1])
        self.assertEqual(len(loadCertificate(files, NOW).options.extraCertChain), 1)
        self.assertEqual(len(loadCertificate(self.withChain(cert, by[1], CA), NOW).options.extraCertChain), 2)
        files.certKey.write_bytes(certificatePEM(cert, by[1]))
        files = TLSFiles(files.privateKey, files.certKey)
        self.assertEqual(len(loadCertificate(files, NOW).options.extraCertChain), 1)

    def test_expiresWithChain(self):
        """
        What is served expires with the first of its certificates: an
        intermediate that expires before the server's certificate sets the
        date, and is named; otherwise the server's certificate does.
        """
        by = intermediate("R1", notAfter=NOW + 10 * DAY)
        _, cert = issue("server one", key=self.key, by=by, notAfter=NOW + 20 * DAY)
        loaded = loadCertificate(self.withChain(cert, by[1]), NOW)
        self.assertEqual((loaded.notAfter, loaded.expiring), (certNotAfter(by[1]), "CN=R1"))
        self.assertEqual(loaded.subject, "CN=server one")
        by = intermediate("R2", notAfter=NOW + 30 * DAY)
        _, cert = issue("server two", key=self.key, by=by, notAfter=NOW + 20 * DAY)
        loaded = loadCertificate(self.withChain(cert, by[1]), NOW)
        self.assertEqual((loaded.notAfter, loaded.expiring), (certNotAfter(cert), "CN=server two"))

    def test_intermediateGivenTwice(self):
        """
        The intermediate both after the certificate (a fullchain.pem) and in
        C{extraCertChain} is accepted and served once.
        """
        by = intermediate("intermediate")
        _, cert = issue("server one", key=self.key, by=by)
        files = self.withChain(cert, by[1])
        files.certKey.write_bytes(certificatePEM(cert, by[1]))
        self.assertEqual(len(loadCertificate(files, NOW).options.extraCertChain), 1)

    def test_chainNotTheIssuer(self):
        """
        A chain certificate that did not issue the one before it (an
        unrelated CA, or certificates out of order) is refused, naming it,
        its file, and the certificate's real issuer.
        """
        files = self.withChain(self.cert, OTHER_CA)
        self.assertRefused(
            files,
            f"the chain certificate CN=some other CA in {files.extraCertChain} did not issue "
            f"CN=server one in {files.certKey}",
            "its issuer is CN=mxrecv test CA",
        )
        by = intermediate("intermediate")
        _, cert = issue("server one", key=self.key, by=by)
        self.assertRefused(self.withChain(cert, CA, by[1]), "CN=mxrecv test CA", "did not issue CN=server one")
        self.assertRefused(self.withChain(cert, by[1], OTHER_CA), "CN=some other CA", "did not issue CN=intermediate")

    def test_staleIntermediate(self):
        """
        An intermediate with the right name but another key (the one that
        issued the previous certificate) is refused.
        """
        _, stale = intermediate("R1")
        by = intermediate("R1")
        _, cert = issue("server one", key=self.key, by=by)
        files = self.withChain(cert, stale)
        self.assertRefused(files, f"CN=R1 in {files.extraCertChain} did not issue CN=server one", "not from this key")

    def test_chainCertificateDates(self):
        """
        An expired or not yet valid intermediate is refused, naming it and
        its file.
        """
        for dates, refusal in [
            ({"notBefore": NOW - 60 * DAY, "notAfter": NOW - DAY}, "expired on"),
            ({"notBefore": NOW + DAY}, "is not valid before"),
        ]:
            by = intermediate("intermediate", **dates)
            _, cert = issue("server one", key=self.key, by=by)
            files = self.withChain(cert, by[1])
            self.assertRefused(files, f"the chain certificate CN=intermediate in {files.extraCertChain} {refusal}")


class StartupTests(TestCase):
    """
    twistd refuses to start on a certificate it could not serve.
    """

    def config(self, files: TLSFiles) -> Path:
        path = Path(self.mktemp() + ".toml").absolute()
        spool = Path(self.mktemp()).absolute()
        chain = f":extraCertChain={files.extraCertChain}" if files.extraCertChain else ""
        path.write_text(
            "[server]\n"
            f'listen = ["tcp:0:interface=127.0.0.1", '
            f'"ssl:0:interface=127.0.0.1:privateKey={files.privateKey}:certKey={files.certKey}{chain}"]\n'
            f'[spool]\ndir = "{spool}"\n'
        )
        return path

    def makeService(self, files: TLSFiles) -> str:
        options = Options()
        options.parseOptions(["--config", str(self.config(files))])
        return str(self.assertRaises(SystemExit, makeService, options, reactor))

    def test_mismatch(self):
        files = writeFiles(Path(self.mktemp()), newKey(), issue("one")[1])
        message = self.makeService(files)
        self.assertIn("server.listen[1]", message)
        self.assertIn(f"the private key {files.privateKey} does not match", message)

    def test_missingKey(self):
        files = writeFiles(Path(self.mktemp()), *issue("one"))
        files.privateKey.unlink()
        self.assertIn(f"cannot read the private key {files.privateKey}", self.makeService(files))

    def test_chainNotIssuing(self):
        """
        A chain file that did not issue the certificate stops start-up,
        naming the listener and the file.
        """
        files = writeFiles(Path(self.mktemp()), *issue("one"))
        chain = files.certKey.with_name("chain.pem")
        chain.write_bytes(certificatePEM(OTHER_CA))
        message = self.makeService(TLSFiles(files.privateKey, files.certKey, chain))
        self.assertIn("server.listen[1]", message)
        self.assertIn(f"the chain certificate CN=some other CA in {chain} did not issue CN=one", message)

    @inlineCallbacks
    def test_twistdExpired(self):
        """
        twistd exits non-zero, saying which certificate expired.
        """
        files = writeFiles(
            Path(self.mktemp()).absolute(), *issue("old", notBefore=NOW - 60 * DAY, notAfter=NOW - DAY)
        )
        twistd = runTwistd(self, "--config", str(self.config(files)))
        twistd.listening.addErrback(lambda _: None)
        ended = yield twistd.ended
        self.assertEqual(ended.exitCode, 1)
        self.assertIn(f"the certificate {files.certKey} expired on".encode(), twistd.output)


def outputMatching(twistd, pattern: bytes) -> Deferred:
    """
    Fires with the match once the twistd process has written C{pattern}.
    """
    d: Deferred = Deferred()
    received = twistd.outReceived

    def outReceived(data: bytes) -> None:
        received(data)
        match = re.search(pattern, twistd.output)
        if match and not d.called:
            d.callback(match)

    twistd.outReceived = twistd.errReceived = outReceived
    outReceived(b"")
    return d


class TwistdTests(TestCase):
    @inlineCallbacks
    def test_httpAndHTTPSWithReload(self):
        """
        Under twistd, HTTP and HTTPS listeners serve side by side, and a
        SIGHUP to the process puts a renewed certificate in service.
        """
        base = Path(self.mktemp()).absolute()
        files = writeFiles(base / "tls", *issue("server one"))
        config = base / "mxrecv.toml"
        config.write_text(
            "[server]\n"
            f'listen = ["ssl:0:interface=127.0.0.1:privateKey={files.privateKey}:certKey={files.certKey}", '
            '"tcp:0:interface=127.0.0.1"]\n'
            'allow = ["127.0.0.0/8"]\n'
            f'[spool]\ndir = "{base / "spool"}"\n'
        )
        twistd = runTwistd(self, "--config", str(config))
        tls = outputMatching(twistd, rb"CallbackSite \(TLS\) starting on (\d+)")
        httpPort = yield twistd.listening
        httpsPort = int((yield tls).group(1))

        response = yield treqTrusting(CA).get(f"https://127.0.0.1:{httpsPort}/", params=smsParams("over-https"))
        self.assertEqual(response.code, 200)
        yield response.content()
        response = yield httpClient(self).get(f"http://127.0.0.1:{httpPort}/", params=smsParams("over-http"))
        self.assertEqual(response.code, 200)
        self.assertEqual(
            sorted(p.name for p in (base / "spool" / "new").iterdir()), ["over-http", "over-https"]
        )

        writeFiles(files.privateKey.parent, *issue("server two"))
        reloaded = outputMatching(twistd, rb"Certificate reloaded from .*CN=server two")
        twistd.process.signalProcess("HUP")
        yield reloaded
        client = yield connect(httpsPort, trusting(CA))
        self.assertEqual(commonName((yield client.handshake)), "server two")
        client.transport.loseConnection()
        yield client.lost

        twistd.process.signalProcess("TERM")
        ended = yield twistd.ended
        self.assertEqual((ended.exitCode, ended.signal), (None, signal.SIGTERM), twistd.output.decode())


class DescriptionTests(SynchronousTestCase):
    def test_parse(self):
        self.assertEqual(
            parseTLS("ssl:8443:privateKey=k.pem:certKey=c.pem:extraCertChain=ch.pem:interface=\\:\\:1:backlog=10"),
            TLSListen(8443, TLSFiles(Path("k.pem"), Path("c.pem"), Path("ch.pem")), "::1", 10),
        )

    def test_defaults(self):
        """
        C{certKey} defaults to the key file (one file holding both), as in
        Twisted; the port may be given by name.
        """
        self.assertEqual(
            parseTLS("ssl:port=443:privateKey=both.pem"),
            TLSListen(443, TLSFiles(Path("both.pem"), Path("both.pem"))),
        )

    @settings(max_examples=50)
    @given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1))
    def test_escapedPaths(self, name):
        """
        Any file name survives Twisted's backslash escapes.
        """
        escaped = name.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")
        self.assertEqual(parseTLS(f"ssl:443:privateKey={escaped}").files.privateKey, Path(name))

    def test_configErrorsNameTheKey(self):
        for description, reason in [
            ("ssl:443:certKey=c.pem", "privateKey is required"),
            ("ssl:privateKey=k.pem", "port is required"),
            ("ssl:99999:privateKey=k.pem", "port must be a whole number"),
            ("ssl:443:privateKey=k.pem:sslmethod=TLSv1_METHOD", "unsupported option 'sslmethod'"),
            ("ssl:443:privateKey=k.pem:privateKey=j.pem", "privateKey given twice"),
        ]:
            e = self.assertRaises(
                ConfigError, parseConfig, {"server": {"listen": ["tcp:8080", description]}}
            )
            self.assertIn("server.listen[1]: bad endpoint", str(e))
            self.assertIn(reason, str(e))

    def test_otherEndpointsUnchanged(self):
        self.assertEqual(parseListen("tcp:8080:interface=127.0.0.1"), "tcp:8080:interface=127.0.0.1")
        self.assertIsInstance(parseListen("ssl:443:privateKey=k.pem"), TLSListen)

    def test_tlsConfig(self):
        config = parseConfig({"tls": {"watch": 5, "expiry_warning_days": 30}})
        self.assertEqual((config.tls.watch, config.tls.expiry_warning_days), (5.0, 30.0))
        e = self.assertRaises(ConfigError, parseConfig, {"tls": {"watch": -1}})
        self.assertIn("tls.watch", str(e))


class SelfSignedTests(HTTPSServerMixin, TestCase):
    @inlineCallbacks
    def test_selfSigned(self):
        """
        C{mxrecv-selfsigned} writes a private key (mode 0600) and a
        certificate that mxrecv serves and that a client trusting the
        certificate itself accepts; it does not overwrite them.
        """
        directory = Path(self.mktemp())
        files = TLSFiles(directory / "tls" / "key.pem", directory / "tls" / "cert.pem")
        argv = ["--out-key", str(files.privateKey), "--out-cert", str(files.certKey), "--host", "127.0.0.1"]
        with redirect_stdout(io.StringIO()) as out:
            self.assertEqual(selfsigned.main(argv), 0)
        self.assertIn(f"privateKey={files.privateKey}", out.getvalue())
        self.assertEqual(files.privateKey.stat().st_mode & 0o777, 0o600)
        with redirect_stderr(io.StringIO()) as err:
            self.assertEqual(selfsigned.main(argv), 1)
        self.assertIn("--force", err.getvalue())
        port = yield self.serve(files)
        cert = x509.load_pem_x509_certificate(files.certKey.read_bytes())
        response = yield treqTrusting(cert).get(f"https://127.0.0.1:{port}/?{urlencode(smsParams('self'))}")
        self.assertEqual(response.code, 200)
        yield response.content()

    def test_forceOverWorldReadableKey(self):
        """
        With C{--force}, a key file that was world-readable is replaced by
        a new file of mode 0600: the key is never written into the old
        file (which a hard link still shows unchanged).
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        key, cert = directory / "key.pem", directory / "cert.pem"
        key.write_text("placeholder\n")
        key.chmod(0o644)
        old = directory / "old-key.pem"
        os.link(key, old)
        with redirect_stdout(io.StringIO()):
            self.assertEqual(selfsigned.main(["--out-key", str(key), "--out-cert", str(cert), "--force"]), 0)
        self.assertIn(b"PRIVATE KEY", key.read_bytes())
        self.assertEqual(key.stat().st_mode & 0o777, 0o600)
        self.assertEqual(old.read_text(), "placeholder\n")
        self.assertEqual(sorted(p.name for p in directory.iterdir()), ["cert.pem", "key.pem", "old-key.pem"])
