# -*- test-case-name: tests.test_complete -*-
"""
What each MMS in C{pending/} waits for: unpacking, if its zip is there (a
POST-mode upload, or a finished download), or retrieval from RetrieveMMS (a
GET-mode notification).  Called for each newly accepted MMS and, at start-up,
for everything a previous run left in C{pending/}.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from .complete import MMS_ZIP, Completer
from .naming import isName
from .spool import PENDING, Spool

log = Logger()


class PendingWork:
    """
    @param retrieve: called with the name of an MMS whose zip must be
        downloaded; L{None} while retrieval is not configured.
    """

    def __init__(
        self,
        spool: Spool,
        completer: Completer,
        retrieve: Callable[[str], None] | None = None,
    ) -> None:
        self._spool = spool
        self._completer = completer
        self.retrieve = retrieve

    def __call__(self, name: str) -> None:
        """
        Take up C{pending/NAME}; nothing happens if it is not there (already
        completed or failed) or already being completed or retrieved.
        """
        directory = self._spool.dir(PENDING) / name
        if not directory.is_dir():
            return
        if (directory / MMS_ZIP).is_file():
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

    def resume(self) -> int:
        """
        Take up everything in C{pending/}; blocking (a directory listing).

        @return: how many messages were taken up.
        """
        names = sorted(
            entry.name for entry in self._spool.dir(PENDING).iterdir() if isName(entry.name)
        )
        for name in names:
            self(name)
        return len(names)
