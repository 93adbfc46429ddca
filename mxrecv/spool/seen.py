# -*- test-case-name: tests.test_seen -*-
"""
The index of message names already accepted, so that MX Telecom's retries are
not stored twice.

It must outlive the messages (the application moves or deletes them) and
restarts, hold tens of millions of names (a shortcode running a TV vote) in
bounded memory, and be shared by every process that takes callbacks for the
spool: an SQLite database in WAL mode, C{state/seen.sqlite}.

    seen(name, t)   every name accepted within the dedupe window, with when
                    (unix seconds); rows are appended in the order the names
                    are accepted, so the prune walks the rowids from the
                    oldest and stops at the first young ones
    staged(dir, name, target)
                    the claims whose message may still be in C{dir} (a
                    staging directory under C{tmp/}), to be renamed to
                    C{target/name}: what start-up recovery rolls forward

Every write is one transaction (L{SeenIndex.claim}): a group commit's names
(C{INSERT OR IGNORE ... RETURNING}: the names returned are new, the others
were accepted before), their staged rows, the clearing of the staged rows of
groups now settled, and at most one small chunk of a prune.  So a prune never
makes an insert wait for more than one chunk, in the same transaction.

Between processes, writers queue on C{state/seen.lock} (a blocking C{flock})
before they begin a transaction, rather than on SQLite's busy handler, which
polls with sleeps of up to 100 ms and lets a writer that comes back quickly
take the lock again and again: a waiter in C{flock} is woken as soon as the
lock is released.

Start-up reads nothing in proportion to the number of names: it opens the
database and reads the staged rows (a group or two).

The methods block: they are called in worker threads (or before the reactor
runs), one at a time per L{SeenIndex} (a lock makes sure).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from attrs import frozen

from mxrecv.spool.layout import SEEN_DB, SEEN_LOCK, STATE
from mxrecv.spool.mode import DEFAULT_MODE

#: Rows deleted per transaction by a prune.  Deleting a row touches a random
#: leaf of the name index, so a chunk costs about one page written per row,
#: and the group commit that carries it is that much slower: small enough
#: that callbacks answered during the hourly prune stay within about twice
#: the usual latency (docs/benchmarks.md), large enough that a prune of a
#: busy hour's ids is over in seconds.
PRUNE_CHUNK = 32

# Names per INSERT statement (two bound variables each), well under
# SQLite's limit of 32,766 variables.
_BATCH = 1000

# The database's page cache, per connection: room for the interior pages of
# the name index at 20 M names (about 4 MiB), so that a lookup reads one
# leaf page, from the operating system's cache.
_CACHE_KIB = 8192

# Waiting for SQLite's own locks, which writers do not contend for (they
# queue on the lock file first): a reader opening a database whose WAL must
# be recovered, a checkpoint.
_BUSY_MS = 10_000

# After a checkpoint the WAL is cut back to this size; a prune of a big
# backlog can make it grow.
_WAL_LIMIT = 64 * 1024 * 1024

TABLES = """
CREATE TABLE IF NOT EXISTS seen (name TEXT NOT NULL, t INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS staged (
    dir TEXT PRIMARY KEY, name TEXT NOT NULL, target TEXT NOT NULL
) WITHOUT ROWID;
"""
INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS seen_name ON seen (name);
"""
#: The schema's version, in SQLite's C{user_version}.
VERSION = 1


class SeenIndexError(Exception):
    """
    The index could not be read or written (a full disk, an I/O error, a
    damaged database).
    """


@frozen
class Claim:
    """
    A name to mark seen, with where its message is staged: C{dir}, relative
    to the spool's root, is to be renamed to C{target/name} once the name is
    durably seen.
    """

    name: str
    dir: str
    target: str
    received: float


@frozen
class PruneStep:
    """
    Where a prune is: forget the names older than C{cutoff} (unix seconds)
    whose rowid is above C{after}.
    """

    cutoff: float
    after: int = 0


@frozen
class Pruned:
    """
    What one chunk of a prune did: C{forgotten} names, up to rowid C{after};
    C{done} when no older name is left to forget.
    """

    forgotten: int
    after: int
    done: bool

    def next(self, step: PruneStep) -> PruneStep:
        return PruneStep(step.cutoff, self.after)


def connectIndex(path: Path) -> sqlite3.Connection:
    """
    A connection to the database at C{path} in autocommit mode (transactions
    are begun by hand), usable from any thread (one at a time).
    """
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


class SeenIndex:
    """
    The seen names of a spool, in C{path} (an SQLite database), with writers
    queued on C{lockPath}.

    @param sync: with C{True}, a transaction is durable when it commits
        (C{synchronous=FULL}: the WAL is fsynced at each commit).  With
        C{False} (C{[spool] fsync = false}) it is not fsynced until a
        checkpoint (C{synchronous=NORMAL}): a crash of the machine can forget
        the last names, like the messages that were not fsynced either, but
        the database stays whole.
    @param pruneChunk: rows deleted per transaction by a prune.
    @param mode: the permissions of the database file when it is created
        (less the umask); SQLite gives its WAL the same.
    @param connect: opens the database (L{connectIndex}); tests pass one that
        counts what SQLite does.
    """

    def __init__(
        self,
        path: Path,
        lockPath: Path,
        *,
        sync: bool = True,
        pruneChunk: int = PRUNE_CHUNK,
        mode: int = DEFAULT_MODE,
        connect: Callable[[Path], sqlite3.Connection] = connectIndex,
    ) -> None:
        self.path = path
        self._connect = connect
        self._lockPath = lockPath
        self._sync = sync
        self._chunk = pruneChunk
        self._mode = mode
        self._db: sqlite3.Connection | None = None
        self._lockFile: int | None = None
        self._busy = threading.Lock()

    @classmethod
    def inSpool(cls, root: Path, **kwargs: Any) -> SeenIndex:
        """
        The index of the spool at C{root}: C{state/seen.sqlite}, its writers
        queued on C{state/seen.lock} (L{mxrecv.spool.layout}).

        @param kwargs: as for L{SeenIndex}.
        """
        return cls(root / STATE / SEEN_DB, root / STATE / SEEN_LOCK, **kwargs)

    # Opening and closing

    def open(self) -> None:
        """
        Open (and create, the first time) the database.

        @raise SeenIndexError: if it cannot be opened or is not an index.
        """
        with self._busy:
            try:
                self._open()
            except (OSError, sqlite3.Error) as e:
                self._close()
                raise SeenIndexError(f"cannot open {self.path}: {errorReason(e)}") from e

    def _open(self) -> None:
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self._mode))
        self._lockFile = os.open(
            self._lockPath, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self._mode
        )
        db = self._db = self._connect(self.path)
        db.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise sqlite3.OperationalError(f"journal mode is {mode}, not wal")
        db.execute(f"PRAGMA synchronous = {'FULL' if self._sync else 'NORMAL'}")
        db.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        db.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == VERSION:
            return
        if version != 0:
            raise sqlite3.DatabaseError(f"schema version {version}, not {VERSION}")
        with self._transaction():
            # Not executescript: it commits first.
            for statement in f"{TABLES}{INDEXES}".split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {VERSION}")

    def close(self) -> None:
        with self._busy:
            self._close()

    def _close(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None
        if self._lockFile is not None:
            os.close(self._lockFile)
            self._lockFile = None

    # Reading

    def __contains__(self, name: str) -> bool:
        with self._busy:
            try:
                row = self._connection().execute(
                    "SELECT 1 FROM seen WHERE name = ?", (name,)
                ).fetchone()
            except sqlite3.Error as e:
                raise SeenIndexError(f"cannot read {self.path}: {errorReason(e)}") from e
        return row is not None

    def staged(self) -> list[Claim]:
        """
        The claims whose messages may still be staged: those of the last
        groups committed before a crash, and of any whose rename failed.
        """
        with self._busy:
            try:
                rows = self._connection().execute(
                    "SELECT dir, name, target FROM staged ORDER BY dir"
                ).fetchall()
            except sqlite3.Error as e:
                raise SeenIndexError(f"cannot read {self.path}: {errorReason(e)}") from e
        return [Claim(name, directory, target, 0.0) for directory, name, target in rows]

    # Writing

    def claim(
        self,
        claims: Sequence[Claim],
        settled: Iterable[str] = (),
        prune: PruneStep | None = None,
    ) -> tuple[set[str], Pruned | None]:
        """
        In one durable transaction: mark the names of C{claims} seen, each
        with a staged row; delete the staged rows of the directories
        C{settled} (their messages are durably in place, or gone); and
        forget one chunk of C{prune}.

        @return: the names of C{claims} that were not seen before (the
            others were: their staged rows are not written), and what the
            prune did.
        @raise SeenIndexError: if the transaction failed; nothing changed.
        """
        settled = list(settled)

        def write(db: sqlite3.Connection) -> tuple[set[str], Pruned | None]:
            if settled:
                db.executemany("DELETE FROM staged WHERE dir = ?", ((d,) for d in settled))
            won: set[str] = set()
            for start in range(0, len(claims), _BATCH):
                batch = claims[start : start + _BATCH]
                won.update(
                    row[0]
                    for row in db.execute(
                        "INSERT OR IGNORE INTO seen (name, t) VALUES "
                        + ",".join("(?, ?)" for _ in batch)
                        + " RETURNING name",
                        [v for c in batch for v in (c.name, int(c.received))],
                    )
                )
            db.executemany(
                "INSERT OR REPLACE INTO staged (dir, name, target) VALUES (?, ?, ?)",
                ((c.dir, c.name, c.target) for c in claims if c.name in won),
            )
            pruned = self._pruneChunk(db, prune) if prune is not None else None
            return won, pruned

        return self._write(write)

    def settle(self, dirs: Iterable[str]) -> None:
        """
        Delete the staged rows of C{dirs}, durably: their messages are in
        place (or were never staged).

        @raise SeenIndexError: if the transaction failed.
        """
        dirs = list(dirs)
        if dirs:
            self._write(
                lambda db: db.executemany(
                    "DELETE FROM staged WHERE dir = ?", ((d,) for d in dirs)
                )
            )

    def add(self, entries: Iterable[tuple[str, float]]) -> int:
        """
        Mark names seen with the times given (the import of an old journal),
        in transactions of a few thousand names.

        @return: how many were not seen before.
        @raise SeenIndexError: if a transaction failed (those before it
            stay).
        """
        added = 0
        batch: list[tuple[str, float]] = []

        def write(db: sqlite3.Connection) -> int:
            cursor = db.executemany(
                "INSERT OR IGNORE INTO seen (name, t) VALUES (?, ?)",
                ((name, int(when)) for name, when in batch),
            )
            return cursor.rowcount

        for entry in entries:
            batch.append(entry)
            if len(batch) == 10 * _BATCH:
                added += self._write(write)
                batch = []
        if batch:
            added += self._write(write)
        return added

    def prune(self, step: PruneStep) -> Pruned:
        """
        Forget one chunk of names older than the step's cutoff, in a
        transaction of its own.
        """
        return self._write(lambda db: self._pruneChunk(db, step))

    def _pruneChunk(self, db: sqlite3.Connection, step: PruneStep) -> Pruned:
        """
        Forget the names older than the cutoff among the next chunk of rows.
        The rows are in the order the names were accepted, which is the
        order of their times, but for clock steps and processes a few
        milliseconds apart: a chunk with no old row means that the rest is
        young.  A name is never forgotten early, at worst a little late.
        """
        rows = db.execute(
            "SELECT rowid, t FROM seen WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (step.after, self._chunk),
        ).fetchall()
        cutoff = int(step.cutoff)
        if not rows or all(t >= cutoff for _, t in rows):
            return Pruned(0, step.after, done=True)
        last = rows[-1][0]
        forgotten = db.execute(
            "DELETE FROM seen WHERE rowid > ? AND rowid <= ? AND t < ?",
            (step.after, last, cutoff),
        ).rowcount
        return Pruned(forgotten, last, done=len(rows) < self._chunk)

    def _write(self, write):
        with self._busy:
            try:
                with self._transaction():
                    return write(self._connection())
            except (OSError, sqlite3.Error) as e:
                raise SeenIndexError(f"cannot write {self.path}: {errorReason(e)}") from e

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """
        A write transaction, queued behind other processes' on the lock
        file; rolled back if it fails.
        """
        db = self._connection()
        assert self._lockFile is not None
        fcntl.flock(self._lockFile, fcntl.LOCK_EX)
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise
        finally:
            fcntl.flock(self._lockFile, fcntl.LOCK_UN)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise SeenIndexError(f"{self.path} is not open")
        return self._db


def errorReason(e: BaseException) -> str:
    """
    What went wrong, for an error message: an L{OSError}'s C{strerror}
    (without its errno and path), else the exception's text.
    """
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e)
