# -*- test-case-name: tests.test_postgresql_row -*-
"""
The framing of PostgreSQL's binary C{COPY} format, to stream a part's bytes
into C{mxrecv_part.data} without holding them.

A C{bytea} parameter of an C{INSERT} must be sent whole (psycopg holds it,
and its escaped copy, in memory: +300 MiB for a 100 MiB part, measured), and
appending chunks with C{data = data || chunk} rewrites the whole value each
time (quadratic: 56 s for 100 MiB in 1 MiB chunks).  A binary C{COPY ...
FROM STDIN} row gives each field's length before its bytes, so the bytes can
follow in chunks of any size: 0.5 s and +1-3 MiB for 100 MiB (the figures
are in docs/postgresql.md).

Pure: bytes out.  See "Binary Format" in PostgreSQL's C{COPY} documentation.
"""

from __future__ import annotations

import struct

#: The file header: signature, flags (none), header extension length (0).
HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
#: The file trailer: a field count of -1.
TRAILER = struct.pack("!h", -1)

#: The columns of mxrecv_part that L{partHead} writes, in its order.
PART_COLUMNS = ("message_id", "name", "content_type", "size", "data")
#: The largest value a field can hold (PostgreSQL's 1 GB limit).
MAX_FIELD = 0x3FFFFFFF - 4


def partHead(messageId: str, name: str, contentType: str, size: int) -> bytes:
    """
    The start of one C{mxrecv_part} row, up to and including the length of
    its C{data}: exactly C{size} bytes of data must follow.

    Text fields are UTF-8 (the connection's client encoding); they must not
    hold what PostgreSQL refuses (see L{mxrecv.deliver.postgresql.sanitise}).
    """
    if not 0 <= size <= MAX_FIELD:
        raise ValueError(f"a part of {size} bytes does not fit in a bytea")
    fields = [
        _text(messageId),
        _text(name),
        _text(contentType),
        struct.pack("!iq", 8, size),
    ]
    return struct.pack("!h", len(PART_COLUMNS)) + b"".join(fields) + struct.pack("!i", size)


def _text(value: str) -> bytes:
    data = value.encode("utf-8")
    return struct.pack("!i", len(data)) + data
