# -*- test-case-name: tests.test_inbox_pages -*-
"""
What the inbox's pages ask of the spool (L{Inbox}), each answered from the
inbox's own thread pool: never on the reactor, and never in the pool that
writes and fsyncs callbacks, so an operator browsing a large spool does not
slow down acknowledgements.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import IO, Any, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from mxrecv.ops.cli import requeue
from mxrecv.ops.inbox.catalog import Catalog, CatalogBusy, Page
from mxrecv.ops.inbox.files import (
    NotFound,
    Shown,
    loadMessage,
    openMessageFile,
    readDocument,
)
from mxrecv.ops.inbox.media import PartView, partViews
from mxrecv.ops.inbox.query import Query
from mxrecv.spool.layout import MMS_ZIP, PARTS
from mxrecv.spool.mode import SpoolMode

log = Logger()

T = TypeVar("T")


class InboxUnavailable(Exception):
    """
    The catalog could not be opened (another process keeps it, or the
    disk failed); the message says why.
    """


@frozen
class OpenPart:
    """
    A part opened for sending, with what C{message.json} says of it.
    """

    part: PartView
    file: IO[bytes]
    size: int


class Inbox:
    """
    What the inbox's pages ask of the spool, each answer a L{Deferred} from
    the inbox's thread pool.

    @param takeUp: called on the reactor with the name of a message just
        requeued, to take it up at once (as C{POST /pending/NAME} does).
    """

    def __init__(
        self,
        root: Path,
        *,
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        sync: bool = True,
        takeUp: Callable[[str], object] = lambda name: None,
        mode: SpoolMode = SpoolMode(),
    ) -> None:
        self.root = Path(root)
        self._reactor = reactor
        self._pool = pool
        self._sync = sync
        self._mode = mode
        self._takeUp = takeUp
        self._catalog = Catalog(self.root)
        self._lock = threading.Lock()
        self._open = False
        self._unavailable: str | None = "the inbox is starting"
        self._ready: Deferred[None] = Deferred()

    def _inThread(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def start(self) -> Deferred[None]:
        """
        Open the catalog and bring it up to date, in the pool.  A catalog
        that cannot be opened is logged; the inbox then answers that it is
        unavailable, and the rest of mxrecv runs on.
        """
        d = self._inThread(self._start)

        def failed(f: Failure) -> None:
            if f.check(CatalogBusy):
                self._unavailable = f"{f.value}: the inbox is served there"
            else:
                self._unavailable = "the inbox's catalog could not be opened; see the log"
                log.failure("Opening the inbox's catalog {path}", f, path=str(self._catalog.path))

        d.addCallbacks(lambda _: setattr(self, "_unavailable", None), failed)
        d.addBoth(lambda _: self._ready.callback(None))
        return d

    def _start(self) -> None:
        with self._lock:
            self._catalog.open()
            self._open = True
            changes = self._catalog.refresh()
        log.info("Inbox catalog up to date ({changes} changes read)", changes=changes)

    def stop(self) -> Deferred[None]:
        def close() -> None:
            with self._lock:
                if self._open:
                    self._catalog.close()
                    self._open = False

        return self._whenReady().addCallback(lambda _: self._inThread(close))

    def _whenReady(self) -> Deferred[None]:
        """
        A new L{Deferred} that fires once L{start} has finished, however
        it went (the shared one keeps its own result).
        """
        d: Deferred[None] = Deferred()

        def fire(result: object) -> object:
            d.callback(None)
            return result

        self._ready.addBoth(fire)
        return d

    def page(self, query: Query) -> Deferred[Page]:
        """
        The page C{query} asks for, the catalog brought up to date first.

        @raise InboxUnavailable: (in the L{Deferred}) if there is no catalog.
        """

        def run(_: object) -> Deferred[Page]:
            if self._unavailable is not None:
                raise InboxUnavailable(self._unavailable)
            return self._inThread(self._page, query)

        return self._whenReady().addCallback(run)

    def _page(self, query: Query) -> Page:
        with self._lock:
            if not self._open:
                raise InboxUnavailable("the inbox has stopped")
            self._catalog.refresh()
            return self._catalog.page(query)

    def message(self, folder: str, name: str) -> Deferred[Shown]:
        """
        What the page of C{folder/name} shows (read afresh from the spool).

        @raise NotFound: (in the L{Deferred}) if there is no such message,
            saying where it is now if it moved.
        """
        return self._inThread(loadMessage, self.root, folder, name)

    def part(self, folder: str, name: str, file: str) -> Deferred[OpenPart]:
        """
        Open the part C{file} of C{folder/name}: only a part that its
        C{message.json} lists is served, with the type it records.

        @raise NotFound: (in the L{Deferred}) otherwise.
        """
        return self._inThread(self._openPart, folder, name, file)

    def _openPart(self, folder: str, name: str, file: str) -> OpenPart:
        # message.json only: not the SMIL, text parts and zip the page reads.
        document, _ = readDocument(self.root, folder, name)
        for part in partViews((document or {}).get("parts")):
            if part.file == file:
                opened = openMessageFile(self.root, folder, name, PARTS, file)
                return OpenPart(part, opened, _size(opened))
        raise NotFound(file)

    def zip(self, folder: str, name: str) -> Deferred[tuple[IO[bytes], int]]:
        def open() -> tuple[IO[bytes], int]:
            opened = openMessageFile(self.root, folder, name, MMS_ZIP)
            return opened, _size(opened)

        return self._inThread(open)

    def requeue(self, name: str) -> Deferred[None]:
        """
        Move C{failed/NAME} back to C{pending/}, as C{mxrecv requeue} does
        (the same code), then take it up at once.

        @raise mxrecv.ops.cli.CommandError: (in the L{Deferred}) if it is
            not in C{failed/} or cannot be moved.
        """
        d = self._inThread(
            partial(requeue, mode=self._mode), self.root, name, io.StringIO(), self._sync
        )

        def moved(_: object) -> None:
            log.info("Requeued failed/{name} from the inbox", name=name)
            self._takeUp(name)

        return d.addCallback(moved)

    @property
    def pool(self) -> ThreadPool:
        return self._pool

    @property
    def reactor(self) -> IReactorFromThreads:
        return self._reactor


def _size(opened: IO[bytes]) -> int:
    return os.fstat(opened.fileno()).st_size
