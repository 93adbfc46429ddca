# -*- test-case-name: tests.test_inbox_catalog -*-
"""
The inbox's catalog: one row per message of C{new/}, C{cur/}, C{pending/}
and C{failed/}, in SQLite (C{state/inbox.sqlite}), so that a page of the
inbox is an indexed query, not a listing and a parse of every
C{message.json} in the spool.

The spool stays the truth; the catalog is a cache of it, brought up to date
before each query (L{Catalog.refresh}):

  - A folder whose modification time has not changed since it was last
    listed has the same entries: it is not listed again.  Anything that
    adds, removes or renames an entry changes its folder's time, whoever
    does it: mxrecv, or the application moving C{new/NAME} to C{cur/} or
    deleting it behind mxrecv's back.
  - A changed folder is listed (names only: about 30 ms for 100,000
    entries) and compared with what the catalog holds; only the entries
    that appeared are read and parsed, and those that went are dropped.
  - In C{pending/} and C{failed/}, where mxrecv rewrites a message's
    C{message.json} (a failure recorded, a requeue), each entry's own
    modification time is compared too, so a message that left and came
    back between two refreshes is read again.
  - A folder's time is only trusted when it is older than the listing by
    a margin (2 s, as git's "racy" index entries): a change made in the
    same clock tick as the listing, which would leave the time as it was,
    is then caught by the next refresh, which lists the folder again.
  - A message whose C{message.json} could not be read (one copied into
    C{cur/} file by file rather than renamed, caught half-written) is
    listed with the reason, and read again at each refresh until it can
    be.

The catalog is written by one process only, the one serving the admin
listener, which holds C{state/inbox.lock}.  It can be removed at any time
(with mxrecv stopped): it is rebuilt from the spool, as it is when its
schema changes or SQLite finds it corrupt.

Blocking throughout: called from one thread at a time (the inbox's pool).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from attrs import evolve, frozen

from mxrecv.ops.inbox.query import FOLDERS, Cursor, Query
from mxrecv.ops.inbox.summary import Row, summarize, unreadable
from mxrecv.spool.layout import FAILED, INBOX_DB, INBOX_LOCK, MESSAGE_JSON, PENDING, STATE
from mxrecv.spool.naming import isName, nameForId

#: Bumped whenever the schema or what a row holds changes: an older
#: catalog is then rebuilt.
SCHEMA_VERSION = 2
#: How much older than the listing a folder's time must be to be trusted.
RACY_MARGIN_NS = 2_000_000_000
#: Largest message.json read for a row (an SMS or MMS text is at most 1 MiB).
LARGEST_DOCUMENT = 8 * 1024 * 1024
#: Rows written per transaction while a big folder is first read.
BATCH = 2000

#: The stamp of a message whose message.json could not be read: it is
#: read again at each refresh.
UNREADABLE = -1

# Folders whose messages mxrecv rewrites in place.
_REWRITTEN = frozenset({PENDING, FAILED})

_SCHEMA = """
CREATE TABLE message (
    folder TEXT NOT NULL,
    name TEXT NOT NULL,
    stamp INTEGER NOT NULL,
    received TEXT NOT NULL,
    id TEXT NOT NULL,
    type TEXT NOT NULL,
    sender TEXT NOT NULL,
    sender_key TEXT NOT NULL,
    recipients TEXT NOT NULL,
    summary TEXT NOT NULL,
    parts INTEGER NOT NULL,
    problem TEXT,
    PRIMARY KEY (folder, name)
);
CREATE INDEX message_recent ON message (received, folder, name);
CREATE INDEX message_folder ON message (folder, received, name);
CREATE INDEX message_name ON message (name);
CREATE TABLE folder (folder TEXT PRIMARY KEY, mtime INTEGER);
"""

_COLUMNS = "folder, name, received, id, type, sender, recipients, summary, parts, problem"


class CatalogBusy(Exception):
    """
    Another process keeps the catalog of this spool (it serves the admin
    listener).
    """


@frozen
class Page:
    """
    A page of the inbox.

    @ivar older: where the next older page starts, if there is one.
    @ivar newer: where the next newer page starts, if there is one.
    @ivar total: how many messages match the filters, in all pages.
    @ivar counts: how many messages each folder holds, filters aside.
    """

    rows: tuple[Row, ...]
    older: Cursor | None
    newer: Cursor | None
    total: int
    counts: dict[str, int]


class Catalog:
    """
    The catalog of the spool at C{root}.

    @param now: the wall clock in nanoseconds (the clock that stamps the
        folders' modification times).
    """

    def __init__(self, root: Path, *, now: Callable[[], int] = time.time_ns) -> None:
        self._root = Path(root)
        self._now = now
        self._db: sqlite3.Connection | None = None
        self._lock: int | None = None
        self._known: dict[str, dict[str, int]] = {}
        self._mtimes: dict[str, int | None] = {}
        # Entries that are not message directories (a stray file): not
        # rows, and not read again until their folder changes.
        self._ignored: dict[str, set[str]] = {}
        # Messages whose message.json could not be read (one copied in
        # place, not renamed, say): listed with the reason, read again
        # until they can be.
        self._unreadable: dict[str, set[str]] = {}

    @property
    def path(self) -> Path:
        return self._root / STATE / INBOX_DB

    def open(self) -> None:
        """
        Take the catalog's lock and open it, rebuilding it if it is missing,
        of another schema, or corrupt.

        @raise CatalogBusy: if another process has it.
        """
        lock = os.open(
            self._root / STATE / INBOX_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            raise CatalogBusy(f"another process keeps {self.path}") from None
        self._lock = lock
        try:
            try:
                self._db = self._connect()
            except sqlite3.DatabaseError:
                self._removeFiles()
                self._db = self._connect()
            self._load()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # A cache: a transaction lost in a power cut is read again
            # from the spool; WAL keeps the file itself sound.
            db.execute("PRAGMA synchronous=NORMAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                with _transaction(db):
                    db.execute("DROP TABLE IF EXISTS message")
                    db.execute("DROP TABLE IF EXISTS folder")
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("SELECT count(*) FROM folder").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def _removeFiles(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")

    def _load(self) -> None:
        db = self._database()
        self._known = {folder: {} for folder in FOLDERS}
        self._ignored = {folder: set() for folder in FOLDERS}
        self._unreadable = {folder: set() for folder in FOLDERS}
        for folder, name, stamp in db.execute("SELECT folder, name, stamp FROM message"):
            if folder in self._known:
                self._known[folder][name] = stamp
                if stamp == UNREADABLE:
                    self._unreadable[folder].add(name)
        self._mtimes = dict(db.execute("SELECT folder, mtime FROM folder"))

    def _database(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the catalog is not open")
        return self._db

    # Bringing it up to date

    def refresh(self) -> int:
        """
        Bring the catalog up to date with the spool's folders.

        @return: how many rows were added, changed or removed.
        """
        return sum(self._refreshFolder(folder) for folder in FOLDERS)

    def _refreshFolder(self, folder: str) -> int:
        path = self._root / folder
        started = self._now()
        try:
            mtime: int | None = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime is not None and self._mtimes.get(folder) == mtime:
            return 0
        known = self._known[folder]
        ignored = self._ignored[folder]
        unreadable = self._unreadable[folder]
        if folder in _REWRITTEN:
            listing = self._stamped(path) if mtime is not None else {}
            gone = known.keys() - listing.keys()
            fresh = [
                (name, stamp)
                for name, stamp in listing.items()
                if known.get(name) != stamp and name not in ignored
            ]
            ignored.intersection_update(listing)
        else:
            # The big folders: set operations on the names, in C; only the
            # names that appeared are checked and read.
            names = self._names(path) if mtime is not None else set()
            gone = known.keys() - names
            fresh = [(name, 0) for name in names - known.keys() - ignored if isName(name)]
            fresh.extend((name, 0) for name in unreadable & names)
            ignored.intersection_update(names)
        db = self._database()
        changes = 0
        if gone:
            with _transaction(db):
                db.executemany(
                    "DELETE FROM message WHERE folder = ? AND name = ?",
                    [(folder, name) for name in gone],
                )
            for name in gone:
                del known[name]
            unreadable.difference_update(gone)
            changes += len(gone)
        for batch in _batches(fresh, BATCH):
            rows = []
            for name, stamp in batch:
                read = self._read(folder, path / name)
                if read is None:
                    ignored.add(name)
                else:
                    row, readable = read
                    rows.append((row, stamp if readable else UNREADABLE))
            with _transaction(db):
                db.executemany(
                    f"INSERT OR REPLACE INTO message (stamp, sender_key, {_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(stamp, senderKey(row.sender), *_record(row)) for row, stamp in rows],
                )
            for row, stamp in rows:
                known[row.name] = stamp
                if stamp == UNREADABLE:
                    unreadable.add(row.name)
                else:
                    unreadable.discard(row.name)
            changes += len(rows)
        trusted = mtime if mtime is not None and mtime < started - RACY_MARGIN_NS else None
        if unreadable:
            # Listed again next time, to read them again.
            trusted = None
        if self._mtimes.get(folder, -1) != trusted:
            with _transaction(db):
                db.execute(
                    "INSERT OR REPLACE INTO folder (folder, mtime) VALUES (?, ?)",
                    (folder, trusted),
                )
            self._mtimes[folder] = trusted
        return changes

    def _names(self, path: Path) -> set[str]:
        """
        The names in C{path}, messages or not.
        """
        try:
            return set(os.listdir(path))
        except FileNotFoundError:
            return set()

    def _stamped(self, path: Path) -> dict[str, int]:
        """
        The message names in C{path}, each with its stamp: its directory's
        modification time (where mxrecv rewrites messages in place).
        """
        try:
            listing = {}
            with os.scandir(path) as entries:
                for entry in entries:
                    if isName(entry.name):
                        try:
                            listing[entry.name] = entry.stat().st_mtime_ns
                        except FileNotFoundError:
                            continue
            return listing
        except FileNotFoundError:
            return {}

    def _read(self, folder: str, directory: Path) -> tuple[Row, bool] | None:
        """
        The row of the message in C{directory} and whether its
        C{message.json} could be read, or L{None} if there is no message
        there (it went, or it is not a directory).
        """
        try:
            with open(directory / MESSAGE_JSON, "rb") as f:
                data = f.read(LARGEST_DOCUMENT + 1)
        except (FileNotFoundError, NotADirectoryError):
            if directory.is_dir():
                return unreadable(folder, directory.name, "no message.json"), False
            return None
        except OSError as e:
            return unreadable(folder, directory.name, f"message.json: {e.strerror}"), False
        if len(data) > LARGEST_DOCUMENT:
            return unreadable(folder, directory.name, "message.json is too large to list"), True
        try:
            document = json.loads(data.decode("utf-8", "surrogatepass"))
        except (ValueError, RecursionError):
            return unreadable(folder, directory.name, "message.json is not valid JSON"), False
        return summarize(folder, directory.name, document), True

    # Reading it

    def page(self, query: Query) -> Page:
        """
        The page of rows that C{query} asks for, newest first.
        """
        db = self._database()
        where, params = _filters(query)
        size = query.size
        if query.after is not None:
            rows = self._select(db, where, params, query.after, ">", "ASC", size + 1)
            if len(rows) <= size:
                # Up to the newest: the first page, full.
                return self.page(evolve(query, after=None))
            rows = rows[:size]
            rows.reverse()
            newer: Cursor | None = _cursor(rows[0])
            older: Cursor | None = _cursor(rows[-1])
        else:
            rows = self._select(db, where, params, query.before, "<", "DESC", size + 1)
            more = len(rows) > size
            rows = rows[:size]
            newer = _cursor(rows[0]) if query.before is not None and rows else None
            older = _cursor(rows[-1]) if more else None
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        (total,) = db.execute(f"SELECT count(*) FROM message{clause}", params).fetchone()
        # The rows each folder has, known without a scan of the table.
        counts = {folder: len(self._known[folder]) for folder in FOLDERS}
        return Page(tuple(rows), older, newer, total, counts)

    def _select(
        self,
        db: sqlite3.Connection,
        where: list[str],
        params: list[object],
        cursor: Cursor | None,
        compare: str,
        direction: str,
        limit: int,
    ) -> list[Row]:
        where = list(where)
        params = list(params)
        if cursor is not None:
            where.append(f"(received, folder, name) {compare} (?, ?, ?)")
            params.extend([cursor.received, cursor.folder, cursor.name])
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        order = ", ".join(f"{c} {direction}" for c in ("received", "folder", "name"))
        return [
            _row(record)
            for record in db.execute(
                f"SELECT {_COLUMNS} FROM message{clause} ORDER BY {order} LIMIT ?",
                [*params, limit],
            )
        ]


def _filters(query: Query) -> tuple[list[str], list[object]]:
    where: list[str] = []
    params: list[object] = []
    if query.folder is not None:
        where.append("folder = ?")
        params.append(query.folder)
    if query.type is not None:
        where.append("type = ?")
        params.append(query.type)
    if query.ident is not None:
        # A message's name is made from its id: by name, an indexed lookup.
        names = sorted({nameForId(query.ident), query.ident})
        where.append(f"name IN ({', '.join('?' * len(names))})")
        params.extend(names)
    if query.sender is not None:
        where.append("instr(sender_key, ?) > 0")
        params.append(senderKey(query.sender))
    since, until = query.receivedRange()
    if since is not None:
        where.append("received >= ?")
        params.append(since)
    if until is not None:
        where.append("received < ?")
        params.append(until)
    return where, params


def senderKey(sender: str) -> str:
    """
    What a sender filter is matched against: the sender lowercased (MX
    Telecom passes alphanumeric senders, such as a bank's name, as sent).
    """
    return sender.lower()


def _record(row: Row) -> tuple[object, ...]:
    return (
        row.folder,
        row.name,
        row.received,
        row.id,
        row.type,
        row.sender,
        json.dumps(list(row.recipients), ensure_ascii=False),
        row.summary,
        row.parts,
        row.problem,
    )


def _row(record: tuple) -> Row:
    folder, name, received, ident, kind, sender, recipients, summary, parts, problem = record
    return Row(
        folder=folder,
        name=name,
        received=received,
        id=ident,
        type=kind,
        sender=sender,
        recipients=tuple(json.loads(recipients)),
        summary=summary,
        parts=parts,
        problem=problem,
    )


def _cursor(row: Row) -> Cursor:
    return Cursor(row.received, row.folder, row.name)


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")

