# -*- test-case-name: tests.test_complete -*-
"""
What each MMS in C{pending/} waits for: unpacking, if its zip is there (a
POST-mode upload, or a finished download), or retrieval from RetrieveMMS (a
GET-mode notification).  Called for each newly accepted MMS, at start-up
for everything a previous run left in C{pending/}, again after a short
backoff for an MMS whose step stopped on a local error (L{Recovery}), and
every L{SWEEP_SECONDS} for whatever is still there.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mxrecv.message.model import Message
from mxrecv.mms.complete import Completer
from mxrecv.mms.recover import Recovery, RecoveryMetrics
from mxrecv.spool.directory import MessageDirectory
from mxrecv.spool.layout import PENDING
from mxrecv.spool.store import Spool

log = Logger()

# How often pending/ is swept, for whatever nothing else took up (an MMS
# requeued by hand, one that met an error that is not a local one): every
# few minutes is soon enough, and cheap.
SWEEP_SECONDS = 300.0


class Retrieval(Protocol):
    """
    What takes up GET-mode MMS (L{mxrecv.mms.retrieve.Retriever}).
    """

    def __call__(self, name: str) -> None:
        """
        Download C{pending/NAME}'s zip and complete it.
        """

    def handles(self, name: str) -> bool:
        """
        Whether C{name} is being retrieved, installed or completed by it.
        """

    def whenDone(self, name: str) -> Deferred[Any]:
        """
        Fire once C{name} is in C{new/} or C{failed/}; fail with the error
        of a step that stopped (the disk, most likely), leaving it in
        C{pending/}.
        """


class PendingWork:
    """
    @param retrieve: takes up an MMS whose zip must be downloaded; L{None}
        while retrieval is not configured.
    @param clock: times the new tries of an MMS held up by a local error.
    @param metrics: told how many such MMS wait.
    """

    def __init__(
        self,
        spool: Spool,
        completer: Completer,
        retrieve: Retrieval | None = None,
        *,
        clock: IReactorTime,
        metrics: RecoveryMetrics | None = None,
    ) -> None:
        self._spool = spool
        self._completer = completer
        self.retrieve = retrieve
        self.recovery = Recovery(clock, self, metrics=metrics)

    def __call__(self, name: str) -> None:
        """
        Take up C{pending/NAME}; nothing happens if it is not there (already
        completed or failed) or already being completed or retrieved.  If
        its completion, or its retrieval's set-up, stops on a local error
        (an L{OSError}: a full disk, a failing one), it is taken up again on
        its own, with backoff (L{Recovery}).
        """
        pending = self._spool.message(PENDING, name)
        if not pending.exists():
            self.recovery.recovered(name)
            return
        if self.retrieve is not None and self.retrieve.handles(name):
            # Its zip may be in place already, with the retriever about to
            # complete it: completing it from here too would race that.
            return
        if pending.hasZip():
            self._completer.complete(name).addCallbacks(
                self._completed,
                self._notCompleted,
                callbackArgs=(name,),
                errbackArgs=(name,),
            )
        elif self.retrieve is not None:
            # Registered first: a step can fail at once.
            self.retrieve.whenDone(name).addCallbacks(
                lambda _: self.recovery.recovered(name), self._notRetrieved, errbackArgs=(name,)
            )
            self.retrieve(name)
        else:
            log.warn("MMS pending/{name} waits for retrieval, which is not configured", name=name)

    def _completed(self, message: Message, name: str) -> None:
        self.recovery.recovered(name)
        log.info(
            "MMS {id} complete in new/{name}: {parts} parts{error}",
            id=message.id,
            name=name,
            parts=len(message.parts),
            error=f" ({message.parts_error})" if message.parts_error else "",
        )

    def _notCompleted(self, reason: Failure, name: str) -> None:
        if not reason.check(OSError):
            log.failure("Completing pending/{name} failed", reason, name=name)
            return
        delay = self.recovery.failed(name)
        log.failure(
            "Completing pending/{name} stopped on a local error; taken up again in {delay} s",
            reason,
            name=name,
            delay=delay,
        )

    def _notRetrieved(self, reason: Failure, name: str) -> None:
        # The retriever has logged it.
        if reason.check(OSError):
            delay = self.recovery.failed(name)
            log.warn(
                "MMS pending/{name} stopped on a local error; taken up again in {delay} s",
                name=name,
                delay=delay,
            )

    def resume(self, *, sweep: bool = False) -> Deferred[int]:
        """
        Take up everything in C{pending/}, listed off the reactor.  Messages
        already being completed or retrieved are left alone.

        @param sweep: a periodic sweep, not the start-up: skip (rather than
            warn again about) notifications while retrieval is off.
        @return: fires with how many messages were taken up.
        """
        onlyZips = sweep and self.retrieve is None
        listed = self._spool.names(PENDING, MessageDirectory.hasZip if onlyZips else None)

        def takeUp(names: list[str]) -> int:
            for name in names:
                self(name)
            return len(names)

        return listed.addCallback(takeUp)


class PendingService(Service):
    """
    Takes up the MMS a previous run left in C{pending/} once we are running,
    then sweeps C{pending/} every C{interval} seconds on C{clock}.

    @ivar resumed: once started, fires when the start-up's listing of
        C{pending/} is done and what it found taken up (their completions
        and retrievals under way).
    """

    def __init__(
        self, pending: PendingWork, clock: IReactorTime, interval: float = SWEEP_SECONDS
    ) -> None:
        self.pending = pending
        self._sweeps = LoopingCall(self._sweep)
        self._sweeps.clock = clock
        self._interval = interval
        self.resumed: Deferred[None] = Deferred()

    def startService(self) -> None:
        super().startService()
        self.resumed = self.pending.resume().addCallbacks(self._resumed, self._cannotList)
        self._sweeps.start(self._interval, now=False)

    def _resumed(self, count: int) -> None:
        if count:
            log.info("Resumed {count} pending MMS", count=count)

    def stopService(self) -> Any:
        if self._sweeps.running:
            self._sweeps.stop()
        self.pending.recovery.stop()
        return super().stopService()

    def _sweep(self) -> Deferred[None]:
        return self.pending.resume(sweep=True).addCallbacks(lambda _: None, self._cannotList)

    def _cannotList(self, reason: Failure) -> None:
        # Logged either way, so that the sweeps go on.
        if reason.check(OSError):
            log.error("Cannot sweep pending/: {error}", error=reason.value.strerror)
        else:
            log.failure("Sweeping pending/ failed", reason)
