# -*- test-case-name: tests.test_inbox_pages -*-
"""
A message's files, read for the inbox without ever leaving the message's
directory, and streamed to a request from a thread pool.

A request names a folder, a message and a file; only a fixed folder, a
spool name (L{isName}) and plain path components (L{safeComponent}) are
accepted, and each is opened relative to the one before it with
C{O_NOFOLLOW}, so neither C{..}, an encoded C{/}, nor a symbolic link
planted in a message directory leads anywhere else.  Only regular files
are served.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Request
from zope.interface import implementer

from mxrecv.mms.unpack import Limits, SmilReference, decodePart, smilReferences
from mxrecv.ops.inbox.catalog import LARGEST_DOCUMENT
from mxrecv.ops.inbox.media import (
    TEXT,
    PartView,
    partViews,
    presentationOrder,
    safeComponent,
    smilPart,
)
from mxrecv.ops.inbox.query import FOLDERS
from mxrecv.spool.layout import MESSAGE_JSON, MMS_ZIP, PARTS
from mxrecv.spool.naming import isName

#: Most of a text part shown on the page (the whole is a download away).
TEXT_SHOWN = 64 * 1024
#: Most text shown on one page, all its text parts together (a zip may
#: hold 500 of them).
TEXTS_SHOWN = 1024 * 1024
CHUNK = 64 * 1024
#: Why a message directory's C{message.json} could not be read, when it
#: is not there at all.
NO_DOCUMENT = "no message.json"


class NotFound(Exception):
    """
    No such message or file (or a name that could not be one).

    @ivar now: the folder that holds the message now, when it is not
        where it was looked for (L{readDocument} found it elsewhere).
    """

    def __init__(self, name: str, now: str | None = None) -> None:
        super().__init__(name)
        self.now = now


def openMessageFile(root: Path, folder: str, name: str, *path: str) -> IO[bytes]:
    """
    Open C{root/folder/name/path...} for reading, if it is a regular file
    inside the message's directory.  Blocking.

    @raise NotFound: if a name is not acceptable, something on the way is
        missing or a symbolic link, or the file is not a regular file.
    """
    if folder not in FOLDERS or not isName(name) or not all(safeComponent(p) for p in path):
        raise NotFound(name)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    opened: list[int] = []
    try:
        opened.append(os.open(root / folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        for component in (name, *path[:-1]):
            opened.append(os.open(component, flags | os.O_DIRECTORY, dir_fd=opened[-1]))
        # Non-blocking: a FIFO planted there must not hang the thread.
        fd = os.open(path[-1] if path else MESSAGE_JSON, flags | os.O_NONBLOCK, dir_fd=opened[-1])
    except OSError:
        raise NotFound(name) from None
    finally:
        for directory in opened:
            os.close(directory)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotFound(name)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def whereNow(root: Path, name: str) -> str | None:
    """
    The folder that holds message C{name} now, if any: a link from the list
    may be older than a move from C{new/} to C{cur/}.  Blocking.
    """
    if not isName(name):
        return None
    for folder in FOLDERS:
        if (root / folder / name).is_dir():
            return folder
    return None


@frozen
class Shown:
    """
    A message as its page shows it: C{message.json}, and for an MMS its
    parts in presentation order with the text of its text parts.

    @ivar document: C{message.json}, or L{None} if it could not be read
        (C{problem} says why).
    @ivar order: the parts to present, SMIL aside, in SMIL order if there is
        a SMIL part, else zip order.
    @ivar texts: the text of each text part shown, by file name, and
        whether it was cut.
    @ivar hasZip: whether C{mms.zip} is there.
    """

    folder: str
    name: str
    document: dict[str, Any] | None
    problem: str | None
    parts: tuple[PartView, ...]
    order: tuple[PartView, ...]
    texts: dict[str, tuple[str, bool]]
    hasZip: bool
    smil: bool


def readDocument(root: Path, folder: str, name: str) -> tuple[dict[str, Any] | None, str | None]:
    """
    The C{message.json} of C{folder/name}, or L{None} and why it could not
    be read.  Blocking.

    @raise NotFound: if there is no such message (saying where it is now,
        if it moved to another folder).
    """
    try:
        with openMessageFile(root, folder, name) as f:
            data = f.read(LARGEST_DOCUMENT + 1)
    except NotFound:
        now = whereNow(root, name)
        if now != folder:
            raise NotFound(name, now) from None
        return None, NO_DOCUMENT
    if len(data) > LARGEST_DOCUMENT:
        return None, "message.json is too large to show"
    try:
        document = json.loads(data.decode("utf-8", "surrogatepass"))
    except (ValueError, RecursionError):
        return None, "message.json is not valid JSON"
    if not isinstance(document, dict):
        return None, "message.json is not a JSON object"
    return document, None


def loadMessage(root: Path, folder: str, name: str) -> Shown:
    """
    Read what the page of C{folder/name} shows.  Blocking.

    @raise NotFound: if there is no such message (L{readDocument}).
    """
    document, problem = readDocument(root, folder, name)
    if problem == NO_DOCUMENT:
        return Shown(folder, name, None, problem, (), (), {}, False, False)
    parts = tuple(partViews(document.get("parts") if document else None))
    smil = smilPart(parts)
    references: Sequence[SmilReference] = ()
    if smil is not None:
        references = smilReferences(_head(root, folder, name, smil.file, Limits().smil))
    order = tuple(presentationOrder(parts, references))
    texts: dict[str, tuple[str, bool] | None] = {}
    room = TEXTS_SHOWN
    for part in order:
        if part.kind == TEXT and room > 0:
            texts[part.file] = _text(root, folder, name, part.file, min(room, TEXT_SHOWN))
            room -= min(part.size, TEXT_SHOWN)
    return Shown(
        folder=folder,
        name=name,
        document=document,
        problem=problem,
        parts=parts,
        order=order,
        texts={file: text for file, text in texts.items() if text is not None},
        hasZip=_exists(root, folder, name, MMS_ZIP),
        smil=smil is not None,
    )


def _head(root: Path, folder: str, name: str, file: str, size: int) -> bytes:
    try:
        with openMessageFile(root, folder, name, PARTS, file) as f:
            return f.read(size)
    except (NotFound, OSError):
        return b""


def _text(
    root: Path, folder: str, name: str, file: str, most: int
) -> tuple[str, bool] | None:
    try:
        with openMessageFile(root, folder, name, PARTS, file) as f:
            data = f.read(most + 1)
    except (NotFound, OSError):
        return None
    cut = len(data) > most
    text = decodePart(data[:most])
    if cut:
        # A character cut in two at the end.
        text = text.rstrip("\ufffd")
    return text, cut


def _exists(root: Path, folder: str, name: str, *path: str) -> bool:
    try:
        openMessageFile(root, folder, name, *path).close()
    except NotFound:
        return False
    return True


@implementer(IPushProducer)
class FileSender:
    """
    Writes an open file to a request, reading it a chunk at a time in a
    thread pool, and no faster than the client takes it (a push producer
    that the transport pauses).

    @ivar done: fires once the file is sent (or the client went); the file
        is closed by then.
    """

    def __init__(
        self, file: IO[bytes], request: Request, *, reactor: IReactorFromThreads, pool: ThreadPool
    ) -> None:
        self._file = file
        self._request = request
        self._reactor = reactor
        self._pool = pool
        self._paused = False
        self._reading = False
        self._stopped = False
        self.done: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self._next()
        return self.done

    def _next(self) -> None:
        if self._paused or self._reading or self._stopped:
            return
        self._reading = True
        d = deferToThreadPool(self._reactor, self._pool, self._file.read, CHUNK)
        d.addCallbacks(self._read, self._failed)

    def _read(self, data: bytes) -> None:
        self._reading = False
        if self._stopped:
            self._end()
            return
        if not data:
            self._request.unregisterProducer()
            self._request.finish()
            self._end()
            return
        self._request.write(data)
        self._next()

    def _failed(self, reason: Failure) -> None:
        self._reading = False
        if not self._stopped:
            # Headers are out: all that can be done is to cut the response.
            self._stopped = True
            self._request.unregisterProducer()
            transport = getattr(self._request, "transport", None)
            if transport is not None:
                transport.abortConnection()
        self._end(reason)

    def _end(self, reason: Failure | None = None) -> None:
        if self.done.called:
            return
        self._file.close()
        if reason is None:
            self.done.callback(None)
        else:
            self.done.errback(reason)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._next()

    def stopProducing(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if not self._reading:
            self._end()
