# -*- test-case-name: tests.test_postgresql_store -*-
"""
Storing one message from the spool in PostgreSQL: the transaction that makes
each id appear once, however many nodes deliver it.

    BEGIN;
    INSERT INTO mxrecv_message ... ON CONFLICT (id) DO NOTHING RETURNING id;
    -- only if a row was inserted:
    COPY mxrecv_part (...) FROM STDIN (FORMAT binary);   -- each part, streamed
    SELECT pg_notify('mxrecv_message', id);
    COMMIT;

A node that finds the id already there (another node stored it, or this one
did and crashed before recording it) inserts nothing and sends no
notification: the application sees each id once.  The notification is sent
by PostgreSQL at the commit, so a listener never hears of a row it cannot
read yet.

Each part's bytes go from its file to the server in chunks of L{CHUNK} bytes
(binary C{COPY}, L{mxrecv.deliver.postgresql.copyformat}): never a whole part
in memory.

Blocking: runs in the connection pool's threads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

from attrs import frozen

from mxrecv.deliver.postgresql.copyformat import HEADER, PART_COLUMNS, TRAILER, partHead
from mxrecv.deliver.postgresql.row import BadDocument, MessageRow, PartSource, messageRow
from mxrecv.spool.layout import MESSAGE_JSON

#: The channel of the notification sent after each commit.
CHANNEL = "mxrecv_message"
#: Bytes of a part read and sent at a time.
CHUNK = 256 * 1024

_INSERT = """
INSERT INTO mxrecv_message (
    id, document, type, sender, recipients, cc, date, received, network, subject,
    text, parts_error, mms_size, mms_sha256, changes, original, node
) VALUES (
    %(id)s, %(document)s, %(type)s, %(sender)s, %(recipients)s, %(cc)s, %(date)s,
    %(received)s, %(network)s, %(subject)s, %(text)s, %(parts_error)s, %(mms_size)s,
    %(mms_sha256)s, %(changes)s, %(original)s, %(node)s
)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""
_COPY = f"COPY mxrecv_part ({', '.join(PART_COLUMNS)}) FROM STDIN (FORMAT binary)"


class MessageUnreadable(Exception):
    """
    The message in the spool cannot be stored as it is (its C{message.json}
    is not mxrecv's, or a part's file is missing or changed while it was
    read): another attempt would fail the same way.
    """


@frozen
class Stored:
    """
    What L{storeMessage} did.

    @ivar inserted: the row is new; C{False} if the id was already there.
    @ivar changes: what had to be changed or left out for PostgreSQL to
        take it (the row's C{changes}).
    """

    id: str
    inserted: bool
    changes: tuple[str, ...] = ()


def storeMessage(connection: Any, directory: Path, node: str) -> Stored:
    """
    Store the message in C{directory} (C{new/NAME}) and its parts in one
    transaction, unless its id is already there.

    @param connection: a psycopg connection in autocommit mode.
    @param node: stored in the row's C{node}.
    @raise MessageUnreadable: if the message cannot be stored as it is.
    @raise psycopg.Error: if the database refused or could not be reached;
        nothing was stored.
    """
    try:
        raw = (directory / MESSAGE_JSON).read_bytes()
        row = messageRow(raw)
    except (OSError, BadDocument) as e:
        raise MessageUnreadable(str(e)) from None
    with ExitStack() as files:
        opened = [(part, files.enter_context(_open(directory, part))) for part in row.parts]
        changes = list(row.changes)
        present = []
        for part, f in opened:
            if f is None:
                changes.append(f"{part.path}: not in the message directory; no part stored")
            else:
                present.append((part, f))
        with connection.transaction():
            inserted = connection.execute(_INSERT, _parameters(row, changes, node)).fetchone()
            if inserted is None:
                return Stored(row.id, False, tuple(changes))
            if present:
                _copyParts(connection, row.id, present)
            connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, row.id))
    return Stored(row.id, True, tuple(changes))


def _parameters(row: MessageRow, changes: list[str], node: str) -> dict[str, Any]:
    from psycopg.types.json import Jsonb

    return {
        "id": row.id,
        "document": Jsonb(row.document, dumps=_dumps),
        "type": row.type,
        "sender": row.sender,
        "recipients": list(row.recipients),
        "cc": list(row.cc),
        "date": row.date,
        "received": row.received,
        "network": row.network,
        "subject": row.subject,
        "text": row.text,
        "parts_error": row.parts_error,
        "mms_size": row.mms_size,
        "mms_sha256": row.mms_sha256,
        "changes": changes,
        "original": row.original,
        "node": node,
    }


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _copyParts(connection: Any, messageId: str, parts: list[tuple[PartSource, IO[bytes]]]) -> None:
    with connection.cursor() as cursor, cursor.copy(_COPY) as copy:
        copy.write(HEADER)
        for part, f in parts:
            size = os.fstat(f.fileno()).st_size
            copy.write(partHead(messageId, part.name, part.content_type, size))
            for chunk in _chunks(f, size, part.path):
                copy.write(chunk)
        copy.write(TRAILER)


def _chunks(f: IO[bytes], size: int, path: str) -> Iterator[bytes]:
    """
    Exactly C{size} bytes of C{f}, L{CHUNK} at a time.
    """
    left = size
    while left:
        chunk = f.read(min(CHUNK, left))
        if not chunk:
            raise MessageUnreadable(f"{path} shrank while it was being stored")
        left -= len(chunk)
        yield chunk


class _Absent:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _open(directory: Path, part: PartSource) -> Any:
    try:
        return (directory / part.path).open("rb")
    except FileNotFoundError:
        if part.optional:
            return _Absent()
        raise MessageUnreadable(f"{part.path} is listed in message.json but missing") from None
    except OSError as e:
        raise MessageUnreadable(f"cannot read {part.path}: {e.strerror}") from None
