# -*- test-case-name: tests.test_spool -*-
"""
Start-up recovery of the spool (docs/spool.md): what a crash left between
an id durably marked seen and its message's rename into place is rolled
forward, what was never acknowledged is cleared from C{tmp/}, and the
seen-id journal of an older mxrecv is imported once.

A message staged in C{tmp/} whose id is marked seen has a I{staged row} in
the seen-id index (L{mxrecv.spool.seen}); rolling it forward renames it to
C{new/} or C{pending/} and fsyncs the parent before the row goes, so that
an id marked seen always has its message stored.  The group commit
(L{mxrecv.spool.commit}) rolls forward the same way what it could not put
in place.

Blocking: called before the reactor runs, or in a worker thread.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

from attrs import frozen
from twisted.logger import Logger

from mxrecv.spool.durable import fsyncPath, removeTree
from mxrecv.spool.layout import FAILED, NEW, PENDING, SEEN_JOURNAL, STATE, TMP
from mxrecv.spool.naming import isName
from mxrecv.spool.seen import Claim, SeenIndex
from mxrecv.spool.seenjournal import importJournal

log = Logger()


@frozen
class Placed:
    """
    What became of staged messages rolled forward: the names now in place
    (C{landed}, as C{(target, name)}), the staging directories whose staged
    rows can go (C{settled}), and the claims still staged (C{stuck}).
    """

    landed: list[tuple[str, str]]
    settled: list[str]
    stuck: list[Claim]


def importOldJournal(
    root: Path, index: SeenIndex, now: float, dedupeSeconds: float, sync: bool
) -> None:
    """
    Import the seen-id journal of an older mxrecv, if it is there.
    """
    journal = root / STATE / SEEN_JOURNAL
    if not journal.is_file():
        return
    present = [
        entry.name
        for which in (NEW, PENDING, FAILED)
        for entry in (root / which).iterdir()
        if isName(entry.name)
    ]
    added = importJournal(
        index, journal, cutoff=now - dedupeSeconds, alsoPresent=present, now=now, sync=sync
    )
    log.info(
        "Imported {count} ids from the seen-id journal {journal} into {index}",
        count=added,
        journal=str(journal),
        index=str(index.path),
    )


def recoverStaged(root: Path, index: SeenIndex, prefix: str, sync: bool) -> list[Claim]:
    """
    Blocking, at start-up: roll forward the staged messages of the process
    whose staging names start with C{prefix} (all of them for C{""}), and
    delete their staged rows.

    @return: the claims that could not be rolled forward (logged): their
        staging directories are kept, to be tried again.
    """
    # A crash between a rename and its directory's fsync leaves a message
    # visible but not durable: make it durable before its staged row goes.
    for which in (NEW, PENDING, FAILED):
        fsyncPath(root / which, sync)
    claims = [c for c in index.staged() if Path(c.dir).name.startswith(prefix)]
    placed = rollForward(root, claims, sync)
    index.settle(placed.settled)
    for target, name in placed.landed:
        log.info("Moved the staged message {name} to {target}/", name=name, target=target)
    for claim in placed.stuck:
        log.error(
            "Cannot move the staged message {dir} to {target}/{name}: its id is "
            "marked seen; will try again with each group commit",
            dir=claim.dir,
            target=claim.target,
            name=claim.name,
        )
    return placed.stuck


def emptyTmp(root: Path, prefix: str, keep: Sequence[Claim]) -> None:
    """
    Remove what a previous run of the process left in C{tmp/} (its staging
    names start with C{prefix}; C{""} for all), but for the staging
    directories of C{keep}.
    """
    kept = {root / c.dir for c in keep}
    for entry in (root / TMP).iterdir():
        if entry.name.startswith(prefix) and entry not in kept:
            removeTree(entry)


def rollForward(root: Path, claims: Sequence[Claim], sync: bool) -> Placed:
    """
    Blocking: rename the messages of C{claims} (marked seen, with their
    staging directories) into place, and fsync the parents.  A claim whose
    staging directory is gone was renamed already: its parent is fsynced
    too (that rename's own fsync may have failed) before its row goes.
    """
    landed: list[tuple[str, str]] = []
    settled: list[str] = []
    stuck: list[Claim] = []
    parents: dict[Path, list[tuple[Claim, bool]]] = {}
    for claim in claims:
        source = _stagedPath(root, claim)
        if source is None:
            settled.append(claim.dir)
            continue
        destination = root / claim.target / claim.name
        moved = source.exists()
        if moved:
            try:
                moved = putInPlace(source, destination)
            except OSError:
                stuck.append(claim)
                continue
        parents.setdefault(destination.parent, []).append((claim, moved))
    for parent, placed in parents.items():
        try:
            fsyncPath(parent, sync)
        except OSError:
            # In place, not yet durable: their rows stay, for the next try.
            stuck += [claim for claim, _ in placed]
            continue
        settled += [claim.dir for claim, _ in placed]
        landed += [(claim.target, claim.name) for claim, moved in placed if moved]
    return Placed(landed, settled, stuck)


def putInPlace(source: Path, destination: Path) -> bool:
    """
    Blocking: rename the staged message C{source} to C{destination}; the
    caller fsyncs the parent.  If a message is there already (put by hand,
    or by an earlier try), the staged copy is removed instead.

    @return: whether C{source} was renamed.
    @raise OSError: if it could be neither renamed nor found in place.
    """
    try:
        os.rename(source, destination)
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        removeTree(source)
        return False
    return True


def _stagedPath(root: Path, claim: Claim) -> Path | None:
    """
    The staging directory of a claim read from the index, or C{None} if the
    row is not one this spool could have written.
    """
    parts = Path(claim.dir).parts
    if (
        len(parts) != 2
        or parts[0] != TMP
        or parts[1] in ("", ".", "..")
        or claim.target not in (NEW, PENDING)
        or not isName(claim.name)
    ):
        return None
    return root / claim.dir
