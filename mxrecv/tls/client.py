# -*- test-case-name: tests.test_retrieve,tests.test_deliver_https -*-
"""
HTTPS from mxrecv to others (RetrieveMMS, the application's URL): servers
verified against the platform's CAs, plus a configured C{ca_file}, with
hostname checks.  There is deliberately no way to turn verification off.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from OpenSSL import SSL

# Not re-exported by twisted.internet.ssl, but the documented way to extend trust.
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.ssl import Certificate, platformTrust, trustRootFromCertificates
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


@implementer(IOpenSSLTrustRoot)
class _AllOf:
    """
    Trust what any of several trust roots trusts.
    """

    def __init__(self, *roots: Any) -> None:
        self._roots = roots

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        for root in self._roots:
            root._addCACertsToContext(context)


def tlsPolicy(caFile: Path | None = None) -> IPolicyForHTTPS:
    """
    Verify servers against the platform's CAs, plus the certificates in the
    PEM file C{caFile}, with hostname checks.

    @raise ValueError: if C{caFile} holds no certificate.
    @raise OSError: if it cannot be read.
    """
    if caFile is None:
        return BrowserLikePolicyForHTTPS(platformTrust())
    blocks = _PEM.findall(Path(caFile).read_bytes())
    if not blocks:
        raise ValueError(f"no PEM certificate in {caFile}")
    extra = trustRootFromCertificates([Certificate.loadPEM(b) for b in blocks])
    return BrowserLikePolicyForHTTPS(_AllOf(platformTrust(), extra))
