# -*- test-case-name: tests.test_message -*-
"""
A received message, and its C{message.json}: the record the customer's
application reads.  Its keys are a public interface (see the README): every
key is always present, L{None} or an empty list when it does not apply.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import evolve, frozen

from mxrecv.message.text import UTF8

SMS = "sms"
MMS = "mms"

GET = "get"
POST = "post"


@frozen
class Part:
    """
    One unpacked entry of an MMS zip.

    @ivar name: the entry's name in the zip, as it was.
    @ivar path: the file, relative to the message directory (C{parts/...}).
    """

    name: str
    path: str
    size: int
    content_type: str

    def toJSON(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "size": self.size,
            "content_type": self.content_type,
        }


@frozen
class Message:
    """
    A message as MX Telecom described it, plus what mxrecv learnt.

    C{date} and C{expiry} are kept as sent; C{received} is ISO 8601 UTC.  The
    C{mms_*}, C{parts}, C{text} and C{parts_error} fields are filled in when an
    MMS is completed.

    @ivar id: the id decoded with C{id_charset}: UTF-8 when the bytes sent
        were valid UTF-8, else ISO-8859-15, so that L{rawId}, the bytes as
        sent, are always known (two ids that differ only in how they were
        encoded are two messages).
    """

    id: str
    type: str
    sender: str
    to: tuple[str, ...]
    date: str
    delivery: str
    received: str
    cc: tuple[str, ...] = ()
    network: str | None = None
    subject: str | None = None
    message: str | None = None
    charset: str | None = None
    expiry: str | None = None
    mms_size: int | None = None
    mms_sha256: str | None = None
    parts: tuple[Part, ...] = ()
    text: str | None = None
    parts_error: str | None = None
    id_charset: str = UTF8

    @property
    def rawId(self) -> bytes:
        """
        The id's bytes as MX Telecom sent them.
        """
        return self.id.encode(self.id_charset, "surrogatepass")

    def toJSON(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "id_charset": self.id_charset,
            "type": self.type,
            "from": self.sender,
            "to": list(self.to),
            "cc": list(self.cc),
            "date": self.date,
            "network": self.network,
            "subject": self.subject,
            "message": self.message,
            "charset": self.charset,
            "expiry": self.expiry,
            "delivery": self.delivery,
            "received": self.received,
            "mms_size": self.mms_size,
            "mms_sha256": self.mms_sha256,
            "parts": [p.toJSON() for p in self.parts],
            "text": self.text,
            "parts_error": self.parts_error,
        }

    def encode(self) -> bytes:
        """
        The bytes of C{message.json}.
        """
        return encodeJSON(self.toJSON())

    @classmethod
    def fromJSON(cls, document: dict[str, Any]) -> Message:
        return cls(
            id=document["id"],
            # Written before ids kept their charset: taken as UTF-8, as then.
            id_charset=document.get("id_charset", UTF8),
            type=document["type"],
            sender=document["from"],
            to=tuple(document["to"]),
            cc=tuple(document["cc"]),
            date=document["date"],
            network=document["network"],
            subject=document["subject"],
            message=document["message"],
            charset=document["charset"],
            expiry=document["expiry"],
            delivery=document["delivery"],
            received=document["received"],
            mms_size=document["mms_size"],
            mms_sha256=document["mms_sha256"],
            parts=tuple(Part(**p) for p in document["parts"]),
            text=document["text"],
            parts_error=document["parts_error"],
        )

    @classmethod
    def decode(cls, data: bytes) -> Message:
        return cls.fromJSON(decodeJSON(data))

    def replace(self, **changes: Any) -> Message:
        return evolve(self, **changes)


def encodeJSON(document: Any) -> bytes:
    """
    The one JSON writer of the spool's documents (C{message.json}, and those
    of L{mxrecv.spool.layout}): indented by two spaces, non-ASCII as is, in
    UTF-8 (a lone surrogate that came in a callback kept as it came), with
    a final newline.
    """
    return indentedJSON(document).encode("utf-8", "surrogatepass") + b"\n"


def decodeJSON(data: bytes) -> Any:
    """
    A document written by L{encodeJSON}.

    @raise ValueError: if C{data} is not JSON.
    """
    return json.loads(data.decode("utf-8", "surrogatepass"))


_scalar = json.JSONEncoder(ensure_ascii=False).encode
_string = json.encoder.encode_basestring
_CONSTANTS = {None: "null", True: "true", False: "false"}


def indentedJSON(value: Any, level: int = 0) -> str:
    """
    C{json.dumps(value, ensure_ascii=False, indent=2)}, for values whose
    dict keys are strings, at a fraction of the cost.

    With C{indent}, json encodes the whole document in pure Python, and
    encoding C{message.json} is on the path of every callback: here the C
    function escapes the strings and only the layout is Python.
    """
    kind = type(value)
    if kind is str:
        return _string(value)
    if kind is dict:
        if not value:
            return "{}"
        inner = "\n" + "  " * (level + 1)
        body = ("," + inner).join(
            [_string(key) + ": " + indentedJSON(item, level + 1) for key, item in value.items()]
        )
        return "{" + inner + body + "\n" + "  " * level + "}"
    if kind is list or kind is tuple:
        if not value:
            return "[]"
        inner = "\n" + "  " * (level + 1)
        body = ("," + inner).join([indentedJSON(item, level + 1) for item in value])
        return "[" + inner + body + "\n" + "  " * level + "]"
    if value is None or kind is bool:
        return _CONSTANTS[value]
    return _scalar(value)
