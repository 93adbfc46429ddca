# -*- test-case-name: tests.test_seen -*-
"""
A seen-id index of any size, made directly in SQLite for tests and
benchmarks: millions of names in seconds, where accepting them one group
commit at a time would take hours.
"""

from __future__ import annotations

from pathlib import Path

from mxrecv.spool.seen import INDEXES, TABLES, VERSION, connectIndex

# x -> x * _STRIDE mod 10**12 is a bijection of [0, 10**12) (the stride is
# odd and not a multiple of 5), and x * _STRIDE stays within 64 bits for
# x < 2**34: distinct twelve-digit names in an order unrelated to their
# times, like ids from a system of their own.
_STRIDE = 387_420_489


def generateIndex(
    path: Path, count: int, *, oldest: float, newest: float, prefix: str = "g"
) -> None:
    """
    Make the index database at C{path} (which must not exist) holding
    C{count} names (C{prefix} and twelve digits), accepted one after
    another at times spread evenly from C{oldest} to C{newest} (unix
    seconds), as mxrecv would have written them: the rows in the order of
    their times.
    """
    if path.exists():
        raise FileExistsError(path)
    db = connectIndex(path)
    try:
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        db.execute("PRAGMA cache_size = -262144")
        db.execute("BEGIN")
        for statement in TABLES.split(";"):
            if statement.strip():
                db.execute(statement)
        if count > 0:
            db.execute(
                "WITH RECURSIVE n(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM n WHERE x + 1 < ?) "
                "INSERT INTO seen (name, t) "
                "SELECT ? || printf('%012d', (x * ?) % 1000000000000), "
                "CAST(? + (? - ?) * x / max(? - 1, 1) AS INTEGER) FROM n",
                (count, prefix, _STRIDE, oldest, newest, oldest, count),
            )
        for statement in INDEXES.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {VERSION}")
        db.execute("COMMIT")
        db.execute("PRAGMA journal_mode = WAL")
    finally:
        db.close()
