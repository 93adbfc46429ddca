# -*- test-case-name: tests.test_tls -*-
"""
Make a key and a self-signed certificate, to try HTTPS on a local machine:

    mxrecv-selfsigned --out-key etc/tls/key.pem --out-cert etc/tls/cert.pem --host localhost

Clients then trust the certificate itself (C{curl --cacert etc/tls/cert.pem}).
Not for MX Telecom: in production use a certificate from a public CA.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mxrecv.spool.durable import replaceFile

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
DEFAULT_DAYS = 90


def newKey() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _altName(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def certificate(
    key,
    *,
    hosts: Sequence[str] = (),
    commonName: str | None = None,
    notBefore: datetime.datetime,
    notAfter: datetime.datetime,
    issuer: x509.Certificate | None = None,
    issuerKey=None,
    ca: bool = False,
) -> x509.Certificate:
    """
    A certificate for C{key}: self-signed unless C{issuer} and C{issuerKey}
    are given; a server certificate for C{hosts} unless C{ca}.
    """
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, commonName or (hosts[0] if hosts else "mxrecv"))]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notAfter)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_altName(h) for h in hosts]), critical=False
        ).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),
            critical=False,
        )
    return builder.sign(issuerKey if issuer is not None else key, hashes.SHA256())


def keyPEM(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificatePEM(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def _write(path: Path, data: bytes, mode: int) -> None:
    """
    Write C{path} as a new file with C{mode}, renamed over any file there: a
    mode given to C{open} applies only to a file it creates, so writing into
    an existing world-readable file would leave the new key readable.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    replaceFile(path, data, mode=mode)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mxrecv-selfsigned",
        description="Make a private key and a self-signed certificate for trying "
        "mxrecv's HTTPS locally (not for production).",
    )
    parser.add_argument("--out-key", required=True, type=Path, help="private key file to write (mode 0600)")
    parser.add_argument("--out-cert", required=True, type=Path, help="certificate file to write")
    parser.add_argument(
        "--host",
        action="append",
        help="host name or IP address the certificate is for; repeatable "
        f"(default: {', '.join(DEFAULT_HOSTS)})",
    )
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS, help=f"validity (default {DEFAULT_DAYS})")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error("--days must be at least 1")
    hosts = args.host or list(DEFAULT_HOSTS)
    existing = [str(p) for p in (args.out_key, args.out_cert) if p.exists()]
    if existing and not args.force:
        print(f"mxrecv-selfsigned: {' and '.join(existing)} exist(s); --force replaces", file=sys.stderr)
        return 1
    key = newKey()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = certificate(
        key,
        hosts=hosts,
        notBefore=now - datetime.timedelta(minutes=5),
        notAfter=now + datetime.timedelta(days=args.days),
    )
    try:
        _write(args.out_key, keyPEM(key), 0o600)
        _write(args.out_cert, certificatePEM(cert), 0o644)
    except OSError as e:
        print(f"mxrecv-selfsigned: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    print(
        f"Wrote {args.out_key} and {args.out_cert} for {', '.join(hosts)}, "
        f"valid {args.days} days. Listen with:\n"
        f"  ssl:8443:interface=127.0.0.1:privateKey={args.out_key}:certKey={args.out_cert}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
