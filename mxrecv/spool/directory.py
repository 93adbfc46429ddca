# -*- test-case-name: tests.test_complete -*-
"""
A message's directory in the spool (C{new/NAME}, C{pending/NAME} or
C{failed/NAME}) and its files, by the names of L{mxrecv.spool.layout}: the
handle through which an MMS is retrieved, completed, failed or requeued,
so that no module builds those paths or documents by hand.

Blocking: used in worker threads and by the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mxrecv.message.model import Message, decodeJSON, encodeJSON
from mxrecv.spool.durable import fsyncPath, keepOnly, moveDir, replaceFile
from mxrecv.spool.layout import (
    MESSAGE_ENTRIES,
    MESSAGE_JSON,
    MMS_ZIP,
    PARTIAL_ZIP,
    PARTS,
    RETRIEVE_JSON,
    Attempts,
    Layout,
    RetrieveState,
    failedDocument,
    requeuedDocument,
)
from mxrecv.spool.mode import SpoolMode


class MessageDirectory:
    """
    The directory of one message.

    @ivar path: the directory.
    @ivar sync: fsync what is written (see C{[spool] fsync}).
    @ivar mode: the permissions of what is written (C{[spool] mode}).
    """

    def __init__(self, path: Path, sync: bool = True, mode: SpoolMode = SpoolMode()) -> None:
        self.path = path
        self.sync = sync
        self.mode = mode

    @classmethod
    def at(
        cls, root: Path, which: str, name: str, sync: bool = True, mode: SpoolMode = SpoolMode()
    ) -> MessageDirectory:
        """
        Message C{name} in directory C{which} of the spool at C{root}.
        """
        return cls(Layout(root).message(which, name), sync, mode)

    def __repr__(self) -> str:
        return f"<MessageDirectory {self.path}>"

    @property
    def name(self) -> str:
        return self.path.name

    # The files

    @property
    def zip(self) -> Path:
        """
        C{mms.zip}: an MMS's zip, once uploaded or downloaded whole.
        """
        return self.path / MMS_ZIP

    @property
    def partialZip(self) -> Path:
        """
        A download from RetrieveMMS in progress.
        """
        return self.path / PARTIAL_ZIP

    @property
    def parts(self) -> Path:
        """
        C{parts/}: the unpacked zip.
        """
        return self.path / PARTS

    def exists(self) -> bool:
        return self.path.is_dir()

    def hasZip(self) -> bool:
        return self.zip.is_file()

    # message.json

    def readMessage(self) -> Message:
        """
        @raise OSError: if it cannot be read.
        @raise ValueError: if it is not a message.
        """
        return Message.decode((self.path / MESSAGE_JSON).read_bytes())

    def writeMessage(self, message: Message) -> None:
        """
        Replace C{message.json}, durably and atomically.
        """
        replaceFile(self.path / MESSAGE_JSON, message.encode(), self.sync, self.mode.file)

    def readDocument(self) -> dict[str, Any]:
        """
        C{message.json} as it is (in C{failed/}, with the reason), or C{{}}
        if it cannot be read: for listings, which show what they can.
        """
        try:
            document = decodeJSON((self.path / MESSAGE_JSON).read_bytes())
        except (OSError, ValueError):
            return {}
        return document if isinstance(document, dict) else {}

    def _writeDocument(self, document: dict[str, Any]) -> None:
        replaceFile(self.path / MESSAGE_JSON, encodeJSON(document), self.sync, self.mode.file)

    # retrieve.json

    def readRetrieveState(self) -> RetrieveState | None:
        """
        The retrieval's history so far; L{None} if none was recorded.

        @raise ValueError: if C{retrieve.json} cannot be understood.
        @raise OSError: if it cannot be read.
        """
        try:
            data = (self.path / RETRIEVE_JSON).read_bytes()
        except FileNotFoundError:
            return None
        return RetrieveState.fromJSON(decodeJSON(data))

    def writeRetrieveState(self, state: RetrieveState) -> None:
        replaceFile(
            self.path / RETRIEVE_JSON, encodeJSON(state.toJSON()), self.sync, self.mode.file
        )

    def removeRetrieveState(self) -> None:
        (self.path / RETRIEVE_JSON).unlink(missing_ok=True)

    # Moves

    def fail(self, error: str, attempts: Attempts) -> None:
        """
        Record in C{message.json} why this message could not be completed
        (L{mxrecv.spool.layout.failedDocument}), before it moves to
        C{failed/}.

        @raise OSError: if C{message.json} cannot be read or replaced.
        @raise ValueError: if it is not JSON.
        """
        document = decodeJSON((self.path / MESSAGE_JSON).read_bytes())
        self._writeDocument(failedDocument(document, error, attempts))

    def requeue(self, now: str) -> None:
        """
        Take back what L{fail} recorded, and start a new retrieval window at
        C{now} (ISO 8601 UTC), before the message moves back to C{pending/}.
        """
        self._writeDocument(requeuedDocument(self.readDocument()))
        self.writeRetrieveState(RetrieveState(requeued=now))

    def moveTo(self, directory: Path) -> MessageDirectory:
        """
        Move this message into C{directory}, durably, as it is.

        @return: the message at its new place.
        """
        destination = directory / self.name
        moveDir(self.path, destination, self.sync)
        return MessageDirectory(destination, self.sync, self.mode)

    def finishIn(self, directory: Path) -> MessageDirectory:
        """
        Move this message out of C{pending/} into C{directory} (C{new/} or
        C{failed/}), durably, with only what the layout allows there
        (L{MESSAGE_ENTRIES}): whatever internal files a crash or a failed
        write left (C{retrieve.json}, a half-written replacement, a partial
        download) are removed first, durably.

        @return: the message at its new place.
        """
        if keepOnly(self.path, MESSAGE_ENTRIES):
            fsyncPath(self.path, self.sync)
        return self.moveTo(directory)
