# -*- test-case-name: tests.test_tls -*-
"""
When the HTTPS certificates are reloaded: on SIGHUP, optionally when their
files change, and a daily look at how soon they expire.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mxrecv.interfaces import IReactorTimeAndThreads
from mxrecv.tls.certificate import ReloadableCertificate

log = Logger()

EXPIRY_CHECK_INTERVAL = 86400.0


def canHandleSignals(reactor: object) -> bool:
    """
    Whether a SIGHUP handler makes sense: a real reactor (one that can be
    woken from a signal handler) in the main thread of a platform with SIGHUP.
    """
    return (
        hasattr(signal, "SIGHUP")
        and IReactorThreads.providedBy(reactor)
        and threading.current_thread() is threading.main_thread()
    )


class CertificateReloadService(Service):
    """
    Reloads every HTTPS certificate on SIGHUP and, when C{watch} is above 0,
    each time their files change (checked every C{watch} seconds).  A
    certificate that fails its checks is not put in service
    (L{ReloadableCertificate.reload}).

    @param handleSignal: install the SIGHUP handler while running; the
        handler in place before is restored on stop.
    """

    def __init__(
        self,
        certificates: Sequence[ReloadableCertificate],
        *,
        reactor: IReactorTimeAndThreads,
        watch: float = 0.0,
        handleSignal: bool = False,
    ) -> None:
        self.certificates = tuple(certificates)
        self._reactor = reactor
        self._watch = watch
        self._handleSignal = handleSignal
        self._previous: Any = None
        self._loops: list[LoopingCall] = []

    def reload(self) -> None:
        log.info("Reloading {count} certificate(s)", count=len(self.certificates))
        for certificate in self.certificates:
            certificate.reload()

    def _reloadChanged(self) -> None:
        for certificate in self.certificates:
            certificate.reloadIfChanged()

    def _checkExpiry(self) -> None:
        for certificate in self.certificates:
            certificate.checkExpiry()

    def _onSignal(self, signum: int, frame: Any) -> None:
        # Not safe to touch the reactor from a signal handler: hand over.
        self._reactor.callFromThread(self.reload)

    def startService(self) -> None:
        super().startService()
        if self._handleSignal:
            self._previous = signal.signal(signal.SIGHUP, self._onSignal)
        schedule = [(EXPIRY_CHECK_INTERVAL, self._checkExpiry)]
        if self._watch > 0:
            schedule.append((self._watch, self._reloadChanged))
        for interval, work in schedule:
            loop = LoopingCall(_logged, work)
            loop.clock = self._reactor
            loop.start(interval, now=False)
            self._loops.append(loop)

    def stopService(self) -> None:
        super().stopService()
        for loop in self._loops:
            loop.stop()
        self._loops = []
        if self._handleSignal:
            previous = self._previous
            signal.signal(signal.SIGHUP, signal.SIG_DFL if previous is None else previous)
            self._previous = None


def _logged(work) -> None:
    """
    Run C{work}; an error is logged and the loop keeps going.
    """
    try:
        work()
    except Exception:
        log.failure("Certificate check failed")
