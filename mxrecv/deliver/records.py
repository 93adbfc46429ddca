# -*- test-case-name: tests.test_deliver -*-
"""
What has been delivered where, on disk: C{state/delivered/TARGET/NAME}, the
durable record that C{new/NAME} was delivered to TARGET.  Never inside
C{new/NAME}, which is the application's.

Blocking: called in worker threads.
"""

from __future__ import annotations

from pathlib import Path

from mxrecv.spool.directory import MessageDirectory
from mxrecv.spool.durable import fsyncPath, removeTree, writeNew
from mxrecv.spool.layout import NEW, Layout
from mxrecv.spool.naming import isName
from mxrecv.spool.store import Spool


class Records:
    """
    The delivery records of a spool, per target.
    """

    def __init__(self, spool: Spool) -> None:
        self._root = Layout(spool.root).delivered()
        self._new = spool.dir(NEW)
        self._sync = spool.sync

    def mark(self, target: str, name: str) -> None:
        directory = self._root / target
        directory.mkdir(parents=True, exist_ok=True)
        try:
            writeNew(directory / name, b"", self._sync)
        except FileExistsError:
            return
        fsyncPath(directory, self._sync)

    def undelivered(self, target: str) -> list[str]:
        """
        The messages in C{new/} not delivered to C{target}, in order of
        arrival; forget records of messages no longer in C{new/}.
        """
        directory = self._root / target
        directory.mkdir(parents=True, exist_ok=True)
        present = {e.name for e in self._new.iterdir() if isName(e.name)}
        done = {e.name for e in directory.iterdir()}
        for gone in done - present:
            removeTree(directory / gone)
        return sorted(present - done, key=lambda n: (received(self._new / n), n))

    def isDelivered(self, target: str, name: str) -> bool:
        return (self._root / target / name).exists()


def received(directory: Path) -> str:
    """
    The C{received} of the message in C{directory}, by which queues are
    ordered; C{""} (first) if it cannot be read.
    """
    received = MessageDirectory(directory).readDocument().get("received")
    return received if isinstance(received, str) else ""
