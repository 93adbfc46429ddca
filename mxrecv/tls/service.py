# -*- test-case-name: tests.test_tls -*-
"""
The HTTPS certificates of a running mxrecv (its callback and admin
listeners'): loaded and checked once at start-up, before the spool is
opened, and reloaded while it runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from twisted.application.service import IServiceCollection
from twisted.internet.interfaces import IReactorTime

from mxrecv.interfaces import IReactorTimeAndThreads
from mxrecv.tls.certificate import CertificateError, ReloadableCertificate, clockTime
from mxrecv.tls.description import TLSFiles, isTLS, parseTLS
from mxrecv.tls.reload import CertificateReloadService, canHandleSignals


def loadCertificates(
    listens: Mapping[str, Iterable[str]], *, warnDays: float, reactor: IReactorTime
) -> dict[TLSFiles, ReloadableCertificate]:
    """
    Load and check the certificate of each C{ssl:} listener among
    C{listens}, the listen strings (already validated) by the key that
    gives them (C{server.listen}, C{admin.listen}), once for listeners that
    share their files.

    @raise SystemExit: when a certificate or key cannot be used, naming the
        listener (C{server.listen[1]}) and the file.
    """
    certificates: dict[TLSFiles, ReloadableCertificate] = {}
    for key, descriptions in listens.items():
        for i, description in enumerate(descriptions):
            if not isTLS(description):
                continue
            files = parseTLS(description).files
            if files in certificates:
                continue
            try:
                certificates[files] = ReloadableCertificate(
                    files, now=clockTime(reactor), warnDays=warnDays
                )
            except CertificateError as e:
                raise SystemExit(f"mxrecv: {key}[{i}]: {e}") from None
    return certificates


def reloadCertificates(
    certificates: Iterable[ReloadableCertificate],
    *,
    watch: float,
    reactor: IReactorTimeAndThreads,
    parent: IServiceCollection,
) -> None:
    """
    Reload C{certificates} on SIGHUP and, when C{watch} is above 0, when
    their files change, while C{parent} runs; nothing without certificates.
    """
    certificates = list(certificates)
    if certificates:
        CertificateReloadService(
            certificates,
            reactor=reactor,
            watch=watch,
            handleSignal=canHandleSignals(reactor),
        ).setServiceParent(parent)
