"""
A RetrieveMMS stand-in for tests and benchmarks: a twisted.web resource that
serves zips, or fails in the ways a script tells it to; and a throwaway test
CA for serving it over HTTPS.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import zipfile
from collections.abc import Callable

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.ssl import CertificateOptions, PrivateCertificate
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer


def makeZip(size: int = 1024, name: str = "image.jpg") -> bytes:
    """
    A zip holding a SMIL-less MMS: one text part and one binary part of
    about C{size} bytes (stored, so the zip is about that big).
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        z.writestr("text.txt", "hello")
        z.writestr(name, bytes(i % 251 for i in range(size)))
    return buffer.getvalue()


# What the stand-in does with one request.


@frozen
class Serve:
    """
    Answer with C{body}; C{chunked}: without a Content-Length.
    """

    body: bytes
    status: int = 200
    headers: tuple[tuple[bytes, bytes], ...] = ()
    chunked: bool = False


@frozen
class Truncate:
    """
    Announce C{body}'s length, send its first C{sent} bytes, hang up.
    """

    body: bytes
    sent: int


@frozen
class Stream:
    """
    Answer C{body} with its length, written as fast as the connection takes
    it and no faster: a push producer, paused while the client does not read
    (the stand-in's C{sent} says how far it got).
    """

    body: bytes
    chunk: int = 65536


@frozen
class Hang:
    """
    Never answer.
    """


@frozen
class Trickle:
    """
    Answer 200, then send a byte every C{interval} seconds, forever.
    """

    interval: float = 0.02


@frozen
class Redirect:
    """
    Answer 302 with the C{Location} that C{location} makes of the request's
    URI (its path and query, our credentials included): a server that
    sends us to a login page with C{return_to=} our own URL, say.
    """

    location: Callable[[bytes], bytes]


Behaviour = Serve | Truncate | Stream | Hang | Trickle | Redirect


class RetrieveMMS(Resource):
    """
    The stand-in.  Each request takes the next behaviour of C{script}; once
    it is empty, each gets C{default} (a zip of C{zipSize} bytes).

    @ivar requests: the query arguments of each request, decoded (a byte
        that is not UTF-8 as an escape).
    @ivar ids: the C{id} of each request, as sent.
    @ivar sent: the bytes of body written by the last L{Stream} so far.
    """

    isLeaf = True

    def __init__(self, reactor, script: list[Behaviour] | None = None, zipSize: int = 1024):
        super().__init__()
        self._reactor = reactor
        self.script = list(script or [])
        self.default = Serve(makeZip(zipSize))
        self.requests: list[dict[str, str]] = []
        self.ids: list[bytes] = []
        self._waiting: list[tuple[int, Deferred[None]]] = []
        self.active = 0
        self.peakActive = 0
        self.sent = 0
        self._idle: list[Deferred[None]] = []

    def whenIdle(self) -> Deferred[None]:
        """
        Fire once no request is being answered (a client that went away
        counts as answered once its connection is closed here too).
        """
        d: Deferred[None] = Deferred()
        if self.active:
            self._idle.append(d)
        else:
            d.callback(None)
        return d

    def whenRequested(self, count: int) -> Deferred[None]:
        """
        Fire once C{count} requests in all have arrived.
        """
        d: Deferred[None] = Deferred()
        self._waiting.append((count, d))
        self._notify()
        return d

    def _notify(self) -> None:
        due = [(n, d) for n, d in self._waiting if n <= len(self.requests)]
        self._waiting = [(n, d) for n, d in self._waiting if n > len(self.requests)]
        for _, d in due:
            d.callback(None)

    def render_GET(self, request: Request):
        self.requests.append(
            {k.decode(): v[0].decode("utf-8", "surrogateescape") for k, v in request.args.items()}
        )
        self.ids.append(request.args.get(b"id", [b""])[0])
        behaviour = self.script.pop(0) if self.script else self.default
        self.active += 1
        self.peakActive = max(self.peakActive, self.active)

        def finished(_):
            self.active -= 1
            if not self.active:
                idle, self._idle = self._idle, []
                for d in idle:
                    d.callback(None)

        request.notifyFinish().addBoth(finished)
        self._reactor.callLater(0, self._notify)
        if isinstance(behaviour, Serve):
            request.setResponseCode(behaviour.status)
            for name, value in behaviour.headers:
                request.setHeader(name, value)
            request.setHeader(b"Content-Type", b"application/zip")
            if behaviour.chunked:
                request.write(behaviour.body)
                request.finish()
                return NOT_DONE_YET
            return behaviour.body
        if isinstance(behaviour, Truncate):
            request.setHeader(b"Content-Length", b"%d" % len(behaviour.body))
            request.write(behaviour.body[: behaviour.sent])
            request.transport.loseConnection()
            return NOT_DONE_YET
        if isinstance(behaviour, Stream):
            request.setHeader(b"Content-Length", b"%d" % len(behaviour.body))
            _Streamer(self, request, behaviour)
            return NOT_DONE_YET
        if isinstance(behaviour, Redirect):
            request.setResponseCode(302)
            request.setHeader(b"Location", behaviour.location(request.uri))
            return b""
        if isinstance(behaviour, Trickle):
            self._trickle(request, behaviour.interval)
            return NOT_DONE_YET
        return NOT_DONE_YET

    def _trickle(self, request: Request, interval: float, sent: int = 0) -> None:
        request.write(b"PK\x03\x04"[sent : sent + 1] or b"x")
        call = self._reactor.callLater(interval, self._trickle, request, interval, sent + 1)
        if sent == 0:
            self._trickling = call
            request.notifyFinish().addBoth(lambda _: self._trickling.cancel())
        else:
            self._trickling = call


@implementer(IPushProducer)
class _Streamer:
    """
    Writes a L{Stream}'s body one chunk per turn of the reactor while the
    connection is not paused.
    """

    def __init__(self, resource: RetrieveMMS, request: Request, stream: Stream) -> None:
        self._resource = resource
        self._request = request
        self._stream = stream
        self._paused = False
        self._done = False
        self._call = None
        resource.sent = 0
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(lambda _: self.stopProducing())
        self._schedule()

    def _schedule(self) -> None:
        if self._call is None and not (self._paused or self._done):
            self._call = self._resource._reactor.callLater(0, self._write)

    def _write(self) -> None:
        self._call = None
        sent = self._resource.sent
        piece = self._stream.body[sent : sent + self._stream.chunk]
        self._resource.sent += len(piece)
        if self._resource.sent >= len(self._stream.body):
            self._done = True
            self._request.unregisterProducer()
            self._request.write(piece)
            self._request.finish()
            return
        self._request.write(piece)
        self._schedule()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self._done = True
        if self._call is not None:
            self._call.cancel()
            self._call = None


class QuietSite(Site):
    """
    A site without an access log: the stand-in plays MX Telecom's side, and
    its access log would show the password that the tests check mxrecv
    never logs.
    """

    noisy = False

    def log(self, request: Request) -> None:
        pass


# Test certificates


@frozen
class TestCA:
    """
    A throwaway CA: C{pem} is its certificate, for C{[retrieve] ca_file}.
    """

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def make(cls, name: str = "mxrecv test CA") -> TestCA:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            _builder(subject, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def serverOptions(self, *names: str) -> CertificateOptions:
        """
        TLS server options with a certificate from this CA for C{names}
        (host names or IP addresses).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        alternatives: list[x509.GeneralName] = []
        for n in names:
            try:
                alternatives.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alternatives.append(x509.DNSName(n))
        cert = (
            _builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]),
                self.cert.subject,
                key.public_key(),
            )
            .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return PrivateCertificate.loadPEM(pem).options()


def _builder(subject: x509.Name, issuer: x509.Name, public) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )

