# -*- test-case-name: tests.test_deliver -*-
"""
What has become of each message's delivery, on disk, per target
(L{mxrecv.spool.layout.Layout.delivered} and C{undeliverable}):

    state/delivered/TARGET/NAME       new/NAME was delivered to TARGET (empty)
    state/undeliverable/TARGET/NAME   TARGET refused new/NAME for good: a dead
                                      letter, with its attempts
                                      (L{mxrecv.spool.layout.undeliverableDocument})

Never inside C{new/NAME}, which is the application's.  Records of messages no
longer in C{new/} are removed by L{Records.scan}.

Blocking: called in worker threads, or by the C{mxrecv} command.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from attrs import frozen

from mxrecv.message.model import decodeJSON, encodeJSON
from mxrecv.spool.directory import MessageDirectory
from mxrecv.spool.durable import fsyncPath, removeTree, replaceFile, writeNew
from mxrecv.spool.layout import NEW, Layout
from mxrecv.spool.naming import isName


@frozen
class Scan:
    """
    C{new/} as one target sees it.

    @ivar undelivered: C{(name, received)} of the messages to deliver, in
        order of arrival; C{received} in POSIX seconds, L{None} if unknown.
    @ivar undeliverable: the names of its dead letters.
    """

    undelivered: Sequence[tuple[str, float | None]]
    undeliverable: Sequence[str]


class Records:
    """
    The delivery records of the spool at C{root}.
    """

    def __init__(self, root: Path, sync: bool = True) -> None:
        layout = Layout(root)
        self._delivered = layout.delivered()
        self._undeliverable = layout.undeliverable()
        self._new = layout.dir(NEW)
        self._sync = sync

    def mark(self, target: str, name: str) -> None:
        """
        Record that C{new/NAME} was delivered to C{target}.
        """
        directory = _made(self._delivered / target)
        try:
            writeNew(directory / name, b"", self._sync)
        except FileExistsError:
            return
        fsyncPath(directory, self._sync)

    def isDelivered(self, target: str, name: str) -> bool:
        return (self._delivered / target / name).exists()

    def markUndeliverable(self, target: str, name: str, document: dict[str, Any]) -> None:
        """
        Record C{new/NAME} as a dead letter of C{target}, with C{document}
        (L{mxrecv.spool.layout.undeliverableDocument}).
        """
        directory = _made(self._undeliverable / target)
        replaceFile(directory / name, encodeJSON(document), self._sync)

    def isUndeliverable(self, target: str, name: str) -> bool:
        return (self._undeliverable / target / name).exists()

    def undeliverableNames(self, target: str) -> list[str]:
        """
        The names of C{target}'s dead letters, without reading them.
        """
        return sorted(_names(self._undeliverable / target))

    def undeliverable(self, target: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
        """
        The dead letters, C{(target, name, document)}, of C{target} or of
        every target, by target and name.  A record that cannot be read is
        still listed (with an empty document).
        """
        targets = [target] if target is not None else _names(self._undeliverable)
        found = []
        for t in sorted(targets):
            for name in sorted(_names(self._undeliverable / t)):
                try:
                    document = decodeJSON((self._undeliverable / t / name).read_bytes())
                except (OSError, ValueError):
                    document = {}
                found.append((t, name, document if isinstance(document, dict) else {}))
        return found

    def redeliver(self, target: str, name: str) -> bool:
        """
        Forget that C{target} refused C{new/NAME}, so that it is delivered
        again.

        @return: whether there was such a dead letter.
        """
        path = self._undeliverable / target / name
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        fsyncPath(path.parent, self._sync)
        return True

    def scan(self, target: str, known: Container[str] = frozenset()) -> Scan:
        """
        The messages in C{new/} neither delivered to C{target} nor refused
        by it, in order of arrival (C{received}, then name), and its dead
        letters; forget the records of messages no longer in C{new/}.

        @param known: messages to leave out of C{undelivered} (those already
            queued: their C{message.json} is not read again).
        """
        # Records first: a message is in new/ before it has a record, so one
        # whose record is listed but which is missing from new/ has left it.
        directories = [_made(root / target) for root in (self._delivered, self._undeliverable)]
        listed = [set(_names(d)) for d in directories]
        present = set(_names(self._new))
        for directory, names in zip(directories, listed, strict=True):
            for gone in names - present:
                removeTree(directory / gone)
        delivered, undeliverable = (names & present for names in listed)
        waiting = [
            (n, received(self._new / n))
            for n in present - delivered - undeliverable
            if n not in known
        ]
        waiting.sort(key=lambda entry: (entry[1] is not None, entry[1] or 0.0, entry[0]))
        return Scan(waiting, sorted(undeliverable))


def received(directory: Path) -> float | None:
    """
    When the message in C{directory} was received, in POSIX seconds;
    L{None} if that cannot be read.
    """
    text = MessageDirectory(directory).readDocument().get("received")
    try:
        return datetime.fromisoformat(text).timestamp() if isinstance(text, str) else None
    except ValueError:
        return None


def _made(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _names(directory: Path) -> list[str]:
    try:
        return [e.name for e in directory.iterdir() if isName(e.name)]
    except FileNotFoundError:
        return []
