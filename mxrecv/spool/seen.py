# -*- test-case-name: tests.test_spool -*-
"""
The index of message names already accepted, so that MX Telecom's retries are
not stored twice.

It must outlive the messages themselves (the application moves or deletes
them) and restarts, so it is a journal file, C{state/seen}, of lines
C{"<unix seconds> <name>"}, appended and fsynced with each group commit, and
rewritten without the old entries when it is pruned.  The whole index is held
in memory: a week of messages at a few dozen bytes each.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from mxrecv.spool.durable import replaceFile
from mxrecv.spool.naming import isName


class SeenIndex:
    """
    Names with the time they were accepted.  Blocking file methods are called
    in the spool's worker thread; L{__contains__} and L{add} on the reactor.
    """

    def __init__(self, path: Path, keepSeconds: float, sync: bool = True) -> None:
        self._path = path
        self._keep = keepSeconds
        self._sync = sync
        self._times: dict[str, float] = {}
        self._journal: int | None = None
        self._unjournaled: list[tuple[str, float]] = []

    def __contains__(self, name: str) -> bool:
        return name in self._times

    def __len__(self) -> int:
        return len(self._times)

    def add(self, name: str, when: float) -> None:
        self._times.setdefault(name, when)

    def load(self, now: float, alsoPresent: Iterable[str] = ()) -> None:
        """
        Read the journal, keep what is younger than the window, rewrite it, and
        open it for appending.  Names in C{alsoPresent} (the spool's message
        directories) count as seen now if the journal lacks them, which covers
        a crash between a rename and its journal line.
        """
        times = self._read()
        for name in alsoPresent:
            times.setdefault(name, now)
        cutoff = now - self._keep
        self._times = {n: t for n, t in times.items() if t >= cutoff}
        self._rewrite(self._times)

    def rewrite(self, now: float) -> float:
        """
        In the worker that appends: rewrite the journal without the names
        older than the window.  The journal file, not memory, is the source:
        memory learns of a group's names only after its commit.  On failure
        the journal in place (old or new) stays open for appending.

        @return: the cutoff, for L{forget}.
        """
        cutoff = now - self._keep
        self._rewrite({n: t for n, t in self._read().items() if t >= cutoff})
        return cutoff

    def forget(self, cutoff: float) -> int:
        """
        On the reactor, after L{rewrite}: forget the names older than it.

        @return: how many names were forgotten.
        """
        before = len(self._times)
        self._times = {n: t for n, t in self._times.items() if t >= cutoff}
        return before - len(self._times)

    def _read(self) -> dict[str, float]:
        times: dict[str, float] = {}
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            data = b""
        for line in data.split(b"\n"):
            fields = line.split(b" ")
            if len(fields) != 2:
                continue
            try:
                when = float(fields[0])
                name = fields[1].decode("ascii")
            except (ValueError, UnicodeDecodeError):
                continue
            if isName(name):
                times.setdefault(name, when)
        return times

    def _rewrite(self, times: dict[str, float]) -> None:
        try:
            replaceFile(self._path, _lines(times.items()), self._sync)
        finally:
            # Whether or not the new file replaced the old one, append to
            # the one now in place.
            self._closeJournal()
            self._journal = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def append(self, entries: Iterable[tuple[str, float]]) -> None:
        """
        Durably record C{entries} in the journal (not in memory: the reactor
        does that once the whole group commit succeeded).

        On failure (a full disk) the journal is cut back to its last whole
        line, so that the next append does not glue its first line to a
        fragment, and C{entries} are kept to be written with the next
        append.

        @raise OSError: if the entries could not be journaled (this time).
        """
        entries = self._unjournaled + list(entries)
        data = _lines(entries)
        if not data:
            return
        if self._journal is None:
            raise RuntimeError("seen index is not open")
        end = os.fstat(self._journal).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._journal, view) :]
            if self._sync:
                os.fsync(self._journal)
        except OSError:
            self._unjournaled = entries
            try:
                os.ftruncate(self._journal, end)
            except OSError:
                pass
            raise
        self._unjournaled = []

    def close(self) -> None:
        """
        Close the journal, after one more try at writing the entries a full
        disk kept out of it: once closed, they would be known only to memory.

        @raise OSError: if they still cannot be written (the journal is
            closed all the same).
        """
        if self._journal is None:
            return
        try:
            if self._unjournaled:
                self.append(())
        finally:
            self._closeJournal()

    def _closeJournal(self) -> None:
        if self._journal is not None:
            os.close(self._journal)
            self._journal = None


def _lines(entries: Iterable[tuple[str, float]]) -> bytes:
    return b"".join(f"{int(when)} {name}\n".encode("ascii") for name, when in entries)

