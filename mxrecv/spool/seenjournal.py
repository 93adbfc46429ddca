# -*- test-case-name: tests.test_seen -*-
"""
The seen-id journal of mxrecv before the SQLite index: C{state/seen}, lines
C{"<unix seconds> <name>"}.  On the first start after an upgrade it is
imported into the index once, then kept, renamed C{state/seen.imported}.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from mxrecv.spool.durable import fsyncPath
from mxrecv.spool.naming import isName
from mxrecv.spool.seen import SeenIndex

#: What the journal is renamed to once imported.
IMPORTED_SUFFIX = ".imported"


def readJournal(path: Path) -> Iterator[tuple[str, float]]:
    """
    The entries of a journal, one line at a time (a journal of millions of
    lines is never whole in memory); torn lines (the last one, without its
    newline) and foreign ones are skipped.
    """
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                continue
            fields = line[:-1].split(b" ")
            if len(fields) != 2:
                continue
            try:
                when = float(fields[0])
                name = fields[1].decode("ascii")
            except (ValueError, UnicodeDecodeError):
                continue
            if isName(name):
                yield name, when


def importJournal(
    index: SeenIndex,
    journal: Path,
    *,
    cutoff: float,
    alsoPresent: Iterable[str],
    now: float,
    sync: bool = True,
) -> int:
    """
    Import C{journal} into C{index}: its entries younger
    than C{cutoff}, and the names C{alsoPresent} (the messages in the
    spool's directories: the old order of operations journaled a name after
    its rename, so a crash could leave a message the journal lacks) as seen
    at C{now}.  Then rename it, so that this happens once.  Importing is
    idempotent: a crash before the rename imports it again.

    @return: how many names were added.
    @raise OSError: if the journal cannot be read or renamed.
    @raise mxrecv.spool.seen.SeenIndexError: if the index cannot be written.
    """
    added = index.add(entry for entry in readJournal(journal) if entry[1] >= cutoff)
    added += index.add((name, now) for name in alsoPresent)
    journal.rename(journal.with_name(journal.name + IMPORTED_SUFFIX))
    # What an interrupted rewrite of the old journal left.
    journal.with_name(journal.name + ".new").unlink(missing_ok=True)
    fsyncPath(journal.parent, sync)
    return added
