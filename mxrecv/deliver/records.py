# -*- test-case-name: tests.test_deliver -*-
"""
What has become of each message's delivery, on disk, per target:

    state/delivered/TARGET/NAME       new/NAME was delivered to TARGET (empty)
    state/undeliverable/TARGET/NAME   TARGET refused new/NAME for good: a dead
                                      letter, with its attempts (JSON)

Never inside C{new/NAME}, which is the application's.  Records of messages no
longer in C{new/} are removed by L{Records.scan}.

Blocking: called in worker threads, or by the C{mxrecv} command.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from attrs import frozen

from mxrecv.spool.durable import fsyncPath, removeTree, replaceFile, writeNew
from mxrecv.spool.layout import DELIVERED, MESSAGE_JSON, NEW, STATE, UNDELIVERABLE
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
        self._state = root / STATE
        self._new = root / NEW
        self._sync = sync

    def mark(self, target: str, name: str) -> None:
        """
        Record that C{new/NAME} was delivered to C{target}.
        """
        directory = self._directory(DELIVERED, target)
        try:
            writeNew(directory / name, b"", self._sync)
        except FileExistsError:
            return
        fsyncPath(directory, self._sync)

    def isDelivered(self, target: str, name: str) -> bool:
        return (self._state / DELIVERED / target / name).exists()

    def markUndeliverable(self, target: str, name: str, record: dict[str, Any]) -> None:
        """
        Record C{new/NAME} as a dead letter of C{target}, with C{record}
        (its error and attempts).
        """
        directory = self._directory(UNDELIVERABLE, target)
        data = json.dumps(record, ensure_ascii=False, indent=2).encode() + b"\n"
        replaceFile(directory / name, data, self._sync)

    def undeliverable(self, target: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
        """
        The dead letters, C{(target, name, record)}, of C{target} or of
        every target, by target and name.  A record that cannot be read is
        still listed (with an empty record).
        """
        root = self._state / UNDELIVERABLE
        targets = [target] if target is not None else _names(root)
        found = []
        for t in sorted(targets):
            for name in sorted(_names(root / t)):
                try:
                    record = json.loads((root / t / name).read_bytes())
                except (OSError, ValueError):
                    record = {}
                found.append((t, name, record if isinstance(record, dict) else {}))
        return found

    def redeliver(self, target: str, name: str) -> bool:
        """
        Forget that C{target} refused C{new/NAME}, so that it is delivered
        again.

        @return: whether there was such a dead letter.
        """
        path = self._state / UNDELIVERABLE / target / name
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        fsyncPath(path.parent, self._sync)
        return True

    def scan(self, target: str) -> Scan:
        """
        The messages in C{new/} neither delivered to C{target} nor refused
        by it, in order of arrival (C{received}, then name), and its dead
        letters; forget the records of messages no longer in C{new/}.
        """
        # Records first: a message is in new/ before it has a record, so one
        # whose record is listed but which is missing from new/ has left it.
        directories = [self._directory(kind, target) for kind in (DELIVERED, UNDELIVERABLE)]
        listed = [set(_names(d)) for d in directories]
        present = set(_names(self._new))
        for directory, names in zip(directories, listed, strict=True):
            for gone in names - present:
                removeTree(directory / gone)
        delivered, undeliverable = (names & present for names in listed)
        waiting = [(n, received(self._new / n)) for n in present - delivered - undeliverable]
        waiting.sort(key=lambda entry: (entry[1] is not None, entry[1] or 0.0, entry[0]))
        return Scan(waiting, sorted(undeliverable))

    def _directory(self, kind: str, target: str) -> Path:
        directory = self._state / kind / target
        directory.mkdir(parents=True, exist_ok=True)
        return directory


def received(directory: Path) -> float | None:
    """
    When the message in C{directory} was received, in POSIX seconds;
    L{None} if that cannot be read.
    """
    try:
        text = json.loads((directory / MESSAGE_JSON).read_bytes())["received"]
        return datetime.fromisoformat(text).timestamp()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _names(directory: Path) -> list[str]:
    try:
        return [e.name for e in directory.iterdir() if isName(e.name)]
    except FileNotFoundError:
        return []
