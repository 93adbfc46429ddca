# -*- test-case-name: tests.test_tls -*-
"""
HTTPS listeners: C{ssl:} descriptions, our TLS policy, certificates that can
be replaced while the server runs.

mxrecv faces MX Telecom without a proxy, so it terminates TLS itself.  An
C{ssl:} string in C{[server] listen} uses Twisted's syntax, but mxrecv builds
the listener: Twisted's own C{ssl:} endpoint cannot tighten the cipher list,
cannot refuse a client before the handshake, and cannot swap its certificate.

The policy (see C{docs/tls.md}): TLS 1.2 at least; forward-secret AEAD
ciphers only (ECDHE with AES-GCM or ChaCha20-Poly1305, and TLS 1.3's suites,
which all are); the server's cipher preference; no TLS compression; no
renegotiation; no session tickets or session cache (Twisted's default).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from pathlib import Path

from attrs import frozen
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IReactorTime
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.logger import Logger
from zope.interface import implementer

from mxrecv.tls.description import TLSFiles

log = Logger()

# ECDHE key exchange (forward secrecy) with an AEAD cipher.  TLS 1.3's suites
# are fixed by OpenSSL and all qualify.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
MINIMUM_VERSION = TLSVersion.TLSv1_2
# Warn when a certificate expires within this many days (at start-up, on each
# reload and once a day while running).
EXPIRY_WARNING_DAYS = 14



class CertificateError(Exception):
    """
    A certificate or key cannot be used; the message names the file.
    """


@frozen
class Loaded:
    """
    A key and certificate that passed the checks, ready to serve.

    @ivar subject: the server certificate's subject.
    @ivar notAfter: when the first of the certificates served (the server's
        or one of its chain) expires: past it, clients cannot verify the
        chain, whichever certificate it is.
    @ivar expiring: the subject of that certificate.
    """

    options: CertificateOptions
    subject: str
    notAfter: datetime.datetime
    fingerprint: str
    expiring: str


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CertificateError(f"cannot read the {what} {path}: {e.strerror}") from None


def _certificates(path: Path, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise CertificateError(f"the {what} {path} holds no PEM certificate")
    return certificates


def policy(**certificate) -> CertificateOptions:
    """
    Our TLS settings around a key and certificate chain (pyOpenSSL objects).
    """
    options = CertificateOptions(
        raiseMinimumTo=MINIMUM_VERSION,
        acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(CIPHERS),
        **certificate,
    )
    # CertificateOptions already sets no compression and server preference;
    # renegotiation has no switch, so set it on the context, which it caches.
    options.getContext().set_options(SSL.OP_NO_RENEGOTIATION)
    return options


def loadCertificate(files: TLSFiles, now: datetime.datetime) -> Loaded:
    """
    Read and check a key and its certificates.

    @param now: the time (aware, UTC) against which validity is checked.
    @raise CertificateError: unreadable or malformed file, a key that is not
        the certificate's, a certificate (the server's or one of its chain)
        that is expired or not valid yet, or a chain certificate that did
        not issue the one before it.
    """
    keyData = _read(files.privateKey, "private key")
    try:
        key = serialization.load_pem_private_key(keyData, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise CertificateError(
            f"the private key {files.privateKey} is not an unencrypted PEM key: {e}"
        ) from None
    leaf, *chain = _certificates(files.certKey, "certificate")
    sources = [files.certKey] * (1 + len(chain))
    if files.extraCertChain is not None:
        # The same intermediates both after the certificate (a fullchain.pem)
        # and in extraCertChain are served once, not refused.
        known = {c.fingerprint(hashes.SHA256()) for c in (leaf, *chain)}
        for c in _certificates(files.extraCertChain, "certificate chain"):
            if c.fingerprint(hashes.SHA256()) not in known:
                chain.append(c)
                sources.append(files.extraCertChain)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        raise CertificateError(
            f"the private key {files.privateKey} does not match the certificate {files.certKey}"
        )
    notAfter = leaf.not_valid_after_utc
    if notAfter <= now:
        raise CertificateError(
            f"the certificate {files.certKey} expired on {notAfter:%Y-%m-%d %H:%M:%S} UTC"
        )
    if leaf.not_valid_before_utc > now:
        raise CertificateError(
            f"the certificate {files.certKey} is not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
        )
    _checkChain([leaf, *chain], sources, now)
    try:
        options = policy(
            privateKey=crypto.PKey.from_cryptography_key(key),
            certificate=crypto.X509.from_cryptography(leaf),
            extraCertChain=[crypto.X509.from_cryptography(c) for c in chain],
        )
    except (SSL.Error, ValueError, TypeError) as e:
        raise CertificateError(f"OpenSSL refused {files.certKey} with {files.privateKey}: {e}") from None
    first = min([leaf, *chain], key=lambda c: c.not_valid_after_utc)
    return Loaded(
        options=options,
        subject=leaf.subject.rfc4514_string(),
        notAfter=first.not_valid_after_utc,
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
        expiring=first.subject.rfc4514_string(),
    )


def _checkChain(certificates: list[x509.Certificate], sources: list[Path], now: datetime.datetime) -> None:
    """
    Check that each certificate after the first (the chain) issued the one
    before it and is within its dates.  The chain may stop at an
    intermediate: clients have the root.

    @param sources: the file each certificate was read from.
    @raise CertificateError: naming the certificate and its file.
    """
    read = list(zip(certificates, sources))
    for (issued, issuedFrom), (issuer, path) in zip(read, read[1:]):
        name = issuer.subject.rfc4514_string()
        why = ""
        if issued.issuer != issuer.subject:
            why = f"its issuer is {issued.issuer.rfc4514_string()}"
        else:
            try:
                issued.verify_directly_issued_by(issuer)
            except InvalidSignature:
                why = "same name, but its signature is not from this key: an old intermediate?"
            except (ValueError, TypeError, UnsupportedAlgorithm) as e:
                why = f"its signature cannot be checked: {e}"
        if why:
            raise CertificateError(
                f"the chain certificate {name} in {path} did not issue "
                f"{issued.subject.rfc4514_string()} in {issuedFrom} ({why}); "
                f"each chain certificate must be the issuer of the one before it"
            )
        if issuer.not_valid_after_utc <= now:
            raise CertificateError(
                f"the chain certificate {name} in {path} expired on "
                f"{issuer.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
            )
        if issuer.not_valid_before_utc > now:
            raise CertificateError(
                f"the chain certificate {name} in {path} is not valid before "
                f"{issuer.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
            )


def _signature(files: TLSFiles) -> tuple:
    """
    What changes when one of the files is replaced or rewritten.
    """
    signature = []
    for path in files.paths:
        try:
            s = os.stat(path)
        except OSError:
            signature.append(None)
        else:
            signature.append((s.st_ino, s.st_size, s.st_mtime_ns))
    return tuple(signature)


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableCertificate:
    """
    The connection creator of an HTTPS listener, whose certificate can be
    replaced while it serves.

    Each new connection takes the context in service at the moment it
    arrives; a connection keeps its context to the end, so requests in flight
    finish on the certificate they started with.

    @param now: returns the current time (aware, UTC).
    @param warnDays: log a warning when the certificate expires within this
        many days.
    @raise CertificateError: when the first load fails.
    """

    def __init__(
        self,
        files: TLSFiles,
        *,
        now: Callable[[], datetime.datetime],
        warnDays: float = EXPIRY_WARNING_DAYS,
    ) -> None:
        self.files = files
        self._now = now
        self._warnDays = warnDays
        self._signature = _signature(files)
        self.current = loadCertificate(files, now())
        log.info(
            "Serving the certificate {certKey}: {subject} (expires {notAfter}{chainNote})",
            certKey=str(files.certKey),
            subject=self.current.subject,
            notAfter=self.current.notAfter.isoformat(),
            chainNote=_chainNote(self.current),
            fingerprint=self.current.fingerprint,
        )
        self.checkExpiry()

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        return self.current.options.serverConnectionForTLS(tlsProtocol)

    def reload(self) -> bool:
        """
        Load the files again; put the result in service if it passes the
        checks, else log why and keep the certificate in service.
        """
        self._signature = _signature(self.files)
        try:
            loaded = loadCertificate(self.files, self._now())
        except CertificateError as e:
            log.error(
                "Certificate not reloaded, still serving {subject} "
                "(expires {notAfter}{chainNote}): {error}",
                error=str(e),
                subject=self.current.subject,
                notAfter=self.current.notAfter.isoformat(),
                chainNote=_chainNote(self.current),
            )
            return False
        previous, self.current = self.current, loaded
        log.info(
            "Certificate reloaded from {certKey}: {subject} (expires {notAfter}{chainNote}){same}",
            certKey=str(self.files.certKey),
            subject=loaded.subject,
            notAfter=loaded.notAfter.isoformat(),
            chainNote=_chainNote(loaded),
            fingerprint=loaded.fingerprint,
            same=" (unchanged)" if loaded.fingerprint == previous.fingerprint else "",
        )
        self.checkExpiry()
        return True

    def reloadIfChanged(self) -> bool | None:
        """
        Reload if one of the files changed since the last attempt; L{None}
        if none did.
        """
        if _signature(self.files) == self._signature:
            return None
        return self.reload()

    def checkExpiry(self) -> None:
        left = self.current.notAfter - self._now()
        if left < datetime.timedelta(days=self._warnDays):
            log.warn(
                "The certificate {expiring} served from {certKey} ({subject}) expires in "
                "{days:.1f} days, on {notAfter}",
                certKey=str(self.files.certKey),
                subject=self.current.subject,
                expiring=self.current.expiring,
                days=left.total_seconds() / 86400,
                notAfter=self.current.notAfter.isoformat(),
            )


def _chainNote(loaded: Loaded) -> str:
    """
    For a log line giving C{loaded.notAfter} beside the server certificate's
    subject: which chain certificate that date is from, if not its own.
    """
    if loaded.expiring == loaded.subject:
        return ""
    return f", with its chain certificate {loaded.expiring}"


def clockTime(clock: IReactorTime) -> Callable[[], datetime.datetime]:
    """
    The current time, aware and in UTC, as C{clock} tells it.
    """
    return lambda: datetime.datetime.fromtimestamp(clock.seconds(), datetime.timezone.utc)
