# -*- test-case-name: tests.test_postgresql_row -*-
"""
A message's C{message.json} as the row of C{mxrecv_message} and the list of
its parts, ready for L{mxrecv.deliver.postgresql.store}.

Everything PostgreSQL would refuse is dealt with here, before any statement
is sent: the id becomes a key that PostgreSQL text can hold and that stays
distinct for distinct ids (L{idKey}), the strings are cleaned
(L{mxrecv.deliver.postgresql.sanitise}),
part names made unique (they are the key of C{mxrecv_part}, and a zip may
hold two entries of the same name), and each change is listed in
C{changes}; when a string was changed, the exact bytes of C{message.json}
go in C{original}.  A document that is not what mxrecv writes is refused
(L{BadDocument}): retrying would not change it.

Pure: bytes in, values out.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from attrs import frozen

from mxrecv.deliver.postgresql.sanitise import cleanDocument
from mxrecv.message.model import decodeJSON
from mxrecv.spool.layout import MMS_ZIP

OCTET_STREAM = "application/octet-stream"
ZIP = "application/zip"


class BadDocument(ValueError):
    """
    C{message.json} is not what mxrecv writes; the message says what is wrong.
    """


@frozen
class PartSource:
    """
    One row of C{mxrecv_part} to be: its data is the file at C{path}
    (relative to the message directory).

    @ivar optional: the file may be missing (the raw zip of an MMS whose
        unpacking failed): a change is recorded instead of an error.
    """

    name: str
    content_type: str
    path: str
    optional: bool = False


@frozen
class MessageRow:
    """
    The values of one C{mxrecv_message} row (but C{node} and
    C{inserted_at}), and the parts that go with it.
    """

    id: str
    document: dict[str, Any]
    type: str
    sender: str
    recipients: tuple[str, ...]
    cc: tuple[str, ...]
    date: str
    received: datetime
    network: str | None
    subject: str | None
    text: str | None
    parts_error: str | None
    mms_size: int | None
    mms_sha256: str | None
    changes: tuple[str, ...]
    original: bytes | None
    parts: tuple[PartSource, ...]


def messageRow(raw: bytes) -> MessageRow:
    """
    The row for the C{message.json} whose bytes are C{raw}.

    @raise BadDocument: if it is not a message mxrecv wrote.
    """
    try:
        loaded = decodeJSON(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadDocument(f"message.json is not JSON: {e}") from None
    if not isinstance(loaded, dict):
        raise BadDocument("message.json is not a JSON object")
    changes: list[str] = []
    key = idKey(_rawId(loaded))
    document = cleanDocument(loaded, changes)
    original = raw if changes else None
    if key != document["id"]:
        changes.append(
            f"id: stored as {key!r} (an id holding a backslash, NUL or bytes that are not "
            "UTF-8 is written with backslash escapes)"
        )
    kind = _string(document, "type")
    text = _optional(document, "message" if kind == "sms" else "text")
    parts = _parts(document, kind, changes)
    return MessageRow(
        id=key,
        document=document,
        type=kind,
        sender=_string(document, "from"),
        recipients=_strings(document, "to"),
        cc=_strings(document, "cc", required=False),
        date=_string(document, "date"),
        received=_timestamp(document, "received"),
        network=_optional(document, "network"),
        subject=_optional(document, "subject"),
        text=text,
        parts_error=_optional(document, "parts_error"),
        mms_size=_integer(document, "mms_size"),
        mms_sha256=_optional(document, "mms_sha256"),
        changes=tuple(changes),
        original=original,
        parts=parts,
    )


def idKey(raw: bytes) -> str:
    """
    The key of the id whose bytes (as MX Telecom sent them) are C{raw}: the
    id itself when it is UTF-8 without NUL or backslash (every id MX Telecom
    is known to send), else the id with backslash escapes: C{\\\\} for a
    backslash, C{\\xNN} for NUL and for each byte that is not part of
    UTF-8.  Escaped keys always hold a backslash and the others never do,
    and each escaping is reversible, so distinct ids have distinct keys (two
    nodes make the same key of the same id).
    """
    text = raw.decode("utf-8", "surrogateescape")
    if not _ESCAPED.search(text):
        return text
    return _ESCAPED.sub(_escape, text)


_ESCAPED = re.compile(r"[\\\x00\udc80-\udcff]")


def _escape(match: re.Match[str]) -> str:
    c = match.group()
    if c == "\\":
        return "\\\\"
    return f"\\x{ord(c) & 0xFF:02x}"


def _rawId(document: dict[str, Any]) -> bytes:
    """
    The id's bytes as sent: its text encoded with its C{id_charset}.
    """
    text = _string(document, "id")
    charset = document.get("id_charset")
    try:
        return text.encode(charset if isinstance(charset, str) else "utf-8", "surrogatepass")
    except (LookupError, UnicodeEncodeError):
        return text.encode("utf-8", "surrogatepass")


def _parts(document: dict[str, Any], kind: str, changes: list[str]) -> tuple[PartSource, ...]:
    listed = document.get("parts") or []
    if not isinstance(listed, list):
        raise BadDocument("message.json: 'parts' is not a list")
    sources = []
    for i, part in enumerate(listed):
        if not isinstance(part, dict):
            raise BadDocument(f"message.json: parts[{i}] is not an object")
        contentType = part.get("content_type")
        sources.append(
            PartSource(
                name=_string(part, "name", f"parts[{i}]."),
                content_type=contentType if isinstance(contentType, str) else OCTET_STREAM,
                path=_relative(_string(part, "path", f"parts[{i}]."), f"parts[{i}].path"),
            )
        )
    if kind == "mms" and document.get("parts_error") is not None:
        # The zip could not be (fully) unpacked: the application gets it
        # as it was received, as mxrecv keeps it in the spool.
        sources.append(PartSource(name=MMS_ZIP, content_type=ZIP, path=MMS_ZIP, optional=True))
    return tuple(_uniqueNames(sources, changes))


def _uniqueNames(sources: list[PartSource], changes: list[str]) -> list[PartSource]:
    """
    The parts with names made unique: a later part with an earlier one's
    name gets C{" (2)"}, C{" (3)"}..., and the change is recorded.
    """
    taken = {source.name for source in sources}
    seen: set[str] = set()
    unique = []
    for i, source in enumerate(sources):
        name = source.name
        if name in seen:
            n = 2
            while f"{name} ({n})" in taken:
                n += 1
            renamed = f"{name} ({n})"
            taken.add(renamed)
            what = "the raw mms.zip" if source.optional else f"parts[{i}].name"
            changes.append(f"{what}: the name of an earlier part; stored as {renamed!r}")
            source = PartSource(renamed, source.content_type, source.path, source.optional)
        seen.add(source.name)
        unique.append(source)
    return unique


def _string(document: dict[str, Any], key: str, where: str = "") -> str:
    value = document.get(key)
    if not isinstance(value, str):
        raise BadDocument(f"message.json: {where}{key!r} is missing or not a string")
    return value


def _optional(document: dict[str, Any], key: str) -> str | None:
    value = document.get(key)
    if value is not None and not isinstance(value, str):
        raise BadDocument(f"message.json: {key!r} is not a string")
    return value


def _strings(document: dict[str, Any], key: str, required: bool = True) -> tuple[str, ...]:
    value = document.get(key)
    if value is None and not required:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadDocument(f"message.json: {key!r} is not a list of strings")
    return tuple(value)


def _integer(document: dict[str, Any], key: str) -> int | None:
    value = document.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise BadDocument(f"message.json: {key!r} is not a whole number")
    return value


def _timestamp(document: dict[str, Any], key: str) -> datetime:
    value = _string(document, key)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadDocument(f"message.json: {key!r} is not an ISO 8601 time: {value!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _relative(path: str, field: str) -> str:
    """
    C{path} if it names a file inside the message directory.
    """
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise BadDocument(f"message.json: {field} is outside the message: {path!r}")
    return path

