"""
Certificates for the HTTPS tests: a test CA, server certificates it issues
(valid, expired, not yet valid, from another CA), files written as a
renewal writes them, and TLS clients that trust what a test says.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from zope.interface import implementer

from mxrecv.tls.description import TLSFiles
from mxrecv.tls.selfsigned import certificate, certificatePEM, keyPEM, newKey

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)
HOSTS = ("127.0.0.1", "localhost")


def _ca(name: str):
    key = newKey()
    cert = certificate(key, commonName=name, notBefore=NOW - DAY, notAfter=NOW + 30 * DAY, ca=True)
    return key, cert


CA_KEY, CA = _ca("mxrecv test CA")
OTHER_CA_KEY, OTHER_CA = _ca("some other CA")


def issue(name: str, *, notBefore=NOW - DAY, notAfter=NOW + 30 * DAY, key=None, by=(CA_KEY, CA)):
    """
    A server certificate from the test CA, or from the C{(key, certificate)}
    of another issuer.
    """
    key = key or newKey()
    issuerKey, issuer = by
    cert = certificate(
        key, hosts=HOSTS, commonName=name, notBefore=notBefore, notAfter=notAfter,
        issuer=issuer, issuerKey=issuerKey,
    )
    return key, cert


def certNotAfter(cert: x509.Certificate) -> datetime.datetime:
    return cert.not_valid_after_utc


def intermediate(name: str, *, notBefore=NOW - DAY, notAfter=NOW + 30 * DAY):
    """
    An intermediate CA issued by the test CA, as C{(key, certificate)}.
    """
    key = newKey()
    cert = certificate(
        key, commonName=name, notBefore=notBefore, notAfter=notAfter,
        issuer=CA, issuerKey=CA_KEY, ca=True,
    )
    return key, cert


def writeFiles(directory: Path, key, cert, *, keyData: bytes | None = None) -> TLSFiles:
    """
    Put a key and certificate in place atomically (as a renewal should).
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(directory / "key.pem", directory / "cert.pem")
    for path, data in ((files.privateKey, keyData or keyPEM(key)), (files.certKey, certificatePEM(cert))):
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return files


def commonName(x509cert) -> str:
    return x509cert.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def trusting(*cas: x509.Certificate):
    return optionsForClientTLS("127.0.0.1", trustRoot=trustRoot(*cas))


def trustRoot(*cas):
    return trustRootFromCertificates([Certificate.loadPEM(certificatePEM(c)) for c in cas])


def treqTrusting(*cas) -> HTTPClient:
    pool = HTTPConnectionPool(reactor, persistent=False)
    return HTTPClient(Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot(*cas)), pool=pool))


@implementer(IOpenSSLClientConnectionCreator)
class OldTLSClient:
    """
    A client that offers only TLS 1.0 and 1.1 (with the security level that
    OpenSSL needs to send them at all).
    """

    def clientConnectionForTLS(self, tlsProtocol):
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_VERSION)
        context.set_max_proto_version(SSL.TLS1_1_VERSION)
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        connection = SSL.Connection(context, None)
        connection.set_app_data(tlsProtocol)
        return connection


@implementer(IHandshakeListener)
class RawClient(Protocol):
    """
    Records what the server sends; C{handshake} fires with the server's
    certificate, or fails with why the connection went.
    """

    def __init__(self) -> None:
        self.received = b""
        self.handshake: Deferred = Deferred()
        self.lost: Deferred = Deferred()
        self._waiting: list[tuple[bytes, Deferred]] = []

    def handshakeCompleted(self) -> None:
        self.handshake.callback(self.transport.getPeerCertificate())

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for marker, d in list(self._waiting):
            if marker in self.received:
                self._waiting.remove((marker, d))
                d.callback(self.received)

    def waitFor(self, marker: bytes) -> Deferred:
        d: Deferred = Deferred()
        self._waiting.append((marker, d))
        self.dataReceived(b"")
        return d

    def connectionLost(self, reason) -> None:
        if not self.handshake.called:
            self.handshake.errback(reason)
        for _, d in self._waiting:
            d.errback(reason)
        self.reason = reason
        self.lost.callback(None)


def connect(port: int, creator=None) -> Deferred:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    if creator is not None:
        endpoint = wrapClientTLS(creator, endpoint)
    return connectProtocol(endpoint, RawClient())


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
