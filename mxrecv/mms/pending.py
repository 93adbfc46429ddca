# -*- test-case-name: tests.test_complete -*-
"""
What each MMS in C{pending/} waits for: unpacking, if its zip is there (a
POST-mode upload, or a finished download), or retrieval from RetrieveMMS (a
GET-mode notification).  Called for each newly accepted MMS, at start-up
for everything a previous run left in C{pending/}, and then every
L{SWEEP_SECONDS} for whatever is still there.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mxrecv.mms.complete import Completer
from mxrecv.spool.directory import MessageDirectory
from mxrecv.spool.layout import PENDING
from mxrecv.spool.store import Spool

log = Logger()

# How often pending/ is swept.  Once MX Telecom has its 200, nothing else
# takes up an MMS whose completion or retrieval stopped on a local error (a
# full disk): every few minutes is soon enough, and cheap.
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


class PendingWork:
    """
    @param retrieve: takes up an MMS whose zip must be downloaded; L{None}
        while retrieval is not configured.
    """

    def __init__(
        self,
        spool: Spool,
        completer: Completer,
        retrieve: Retrieval | None = None,
    ) -> None:
        self._spool = spool
        self._completer = completer
        self.retrieve = retrieve

    def __call__(self, name: str) -> None:
        """
        Take up C{pending/NAME}; nothing happens if it is not there (already
        completed or failed) or already being completed or retrieved.
        """
        pending = self._spool.message(PENDING, name)
        if not pending.exists():
            return
        if self.retrieve is not None and self.retrieve.handles(name):
            # Its zip may be in place already, with the retriever about to
            # complete it: completing it from here too would race that.
            return
        if pending.hasZip():
            self._completer.complete(name).addCallbacks(
                lambda message: log.info(
                    "MMS {id} complete in new/{name}: {parts} parts{error}",
                    id=message.id,
                    name=name,
                    parts=len(message.parts),
                    error=f" ({message.parts_error})" if message.parts_error else "",
                ),
                lambda f: log.failure("Completing pending/{name} failed", f, name=name),
            )
        elif self.retrieve is not None:
            self.retrieve(name)
        else:
            log.warn("MMS pending/{name} waits for retrieval, which is not configured", name=name)

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
        return super().stopService()

    def _sweep(self) -> Deferred[None]:
        return self.pending.resume(sweep=True).addCallbacks(lambda _: None, self._cannotList)

    def _cannotList(self, reason: Failure) -> None:
        # Logged either way, so that the sweeps go on.
        if reason.check(OSError):
            log.error("Cannot sweep pending/: {error}", error=reason.value.strerror)
        else:
            log.failure("Sweeping pending/ failed", reason)
