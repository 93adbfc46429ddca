# -*- test-case-name: tests.test_postgresql_schema -*-
"""
The tables mxrecv writes in PostgreSQL: a public interface, documented in
docs/postgresql.md, created and upgraded by C{mxrecv db-init} (L{upgrade})
and checked before delivery (L{check}).

Each version of the schema is a migration from the one before it, applied
once, in order, and recorded in C{mxrecv_schema}.  Migrations only add
(tables, nullable columns, indexes), so that a node still running the
version before an upgrade keeps working against the upgraded schema while
the nodes are upgraded one by one: a schema newer than mxrecv knows is
accepted, an older one (or none) is an error that names C{db-init}.

Blocking: each function takes a psycopg connection in autocommit mode.
"""

from __future__ import annotations

from typing import Any

#: The version this mxrecv writes to.
VERSION = 1

#: Taken by L{upgrade} for its transaction, so that two nodes running
#: C{db-init} at once apply each migration once.
LOCK_KEY = 0x6D787265637631  # "mxrecv1"

VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS mxrecv_schema (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

#: Each version's statements, applied in one transaction with the others.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            """
            CREATE TABLE mxrecv_message (
                id text PRIMARY KEY,
                document jsonb NOT NULL,
                type text NOT NULL,
                sender text NOT NULL,
                recipients text[] NOT NULL,
                cc text[] NOT NULL,
                date text NOT NULL,
                received timestamptz NOT NULL,
                network text,
                subject text,
                text text,
                parts_error text,
                mms_size bigint,
                mms_sha256 text,
                changes text[] NOT NULL,
                original bytea,
                node text NOT NULL,
                inserted_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            "CREATE INDEX mxrecv_message_received ON mxrecv_message (received)",
            "CREATE INDEX mxrecv_message_inserted_at ON mxrecv_message (inserted_at)",
            """
            CREATE TABLE mxrecv_part (
                message_id text NOT NULL REFERENCES mxrecv_message (id) ON DELETE CASCADE,
                name text NOT NULL,
                content_type text NOT NULL,
                size bigint NOT NULL,
                data bytea,
                PRIMARY KEY (message_id, name)
            )
            """,
            "COMMENT ON TABLE mxrecv_message IS "
            "'Messages received by mxrecv, one row per MX Telecom id (docs/postgresql.md)'",
            "COMMENT ON TABLE mxrecv_part IS "
            "'The unpacked parts of each MMS in mxrecv_message (docs/postgresql.md)'",
        ),
    ),
)

assert MIGRATIONS[-1][0] == VERSION


class SchemaError(Exception):
    """
    The database cannot take mxrecv's rows as it is; the message says what
    to do.
    """


def currentVersion(connection: Any) -> int:
    """
    The version of the schema in the database; 0 if there is none.
    """
    found = connection.execute("SELECT to_regclass('mxrecv_schema') IS NOT NULL").fetchone()
    if not found[0]:
        return 0
    (version,) = connection.execute("SELECT coalesce(max(version), 0) FROM mxrecv_schema").fetchone()
    return version


def check(connection: Any, expected: int = VERSION) -> int:
    """
    Check that the database holds a schema mxrecv can write to: version
    C{expected} or newer.

    @return: its version.
    @raise SchemaError: if it is missing or older, or the database is not
        UTF-8.
    """
    _checkEncoding(connection)
    version = currentVersion(connection)
    if version == 0:
        raise SchemaError(
            "the database has no mxrecv tables: create them with mxrecv db-init -c CONFIG"
        )
    if version < expected:
        raise SchemaError(
            f"the database's mxrecv tables are at version {version}, older than this "
            f"mxrecv's {expected}: upgrade them with mxrecv db-init -c CONFIG"
        )
    return version


def upgrade(connection: Any) -> tuple[int, int]:
    """
    Create the tables, or bring them up to L{VERSION}: idempotent, and safe
    to run from several nodes at once.

    @return: the version before and after.
    """
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        _checkEncoding(connection)
        connection.execute(VERSION_TABLE)
        before = currentVersion(connection)
        for version, statements in MIGRATIONS:
            if version > before:
                for statement in statements:
                    connection.execute(statement)
                connection.execute("INSERT INTO mxrecv_schema (version) VALUES (%s)", (version,))
    return before, max(before, VERSION)


def _checkEncoding(connection: Any) -> None:
    (encoding,) = connection.execute(
        "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()"
    ).fetchone()
    if encoding != "UTF8":
        raise SchemaError(
            f"the database's encoding is {encoding}; mxrecv stores text from any "
            "language and needs a UTF8 database (CREATE DATABASE ... ENCODING 'UTF8')"
        )
