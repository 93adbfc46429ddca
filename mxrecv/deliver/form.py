# -*- test-case-name: tests.test_deliver_form -*-
"""
The body of a POST to the application: C{multipart/form-data}
(RFC 7578) written the same way each time it is read, so that it can be
signed in one pass and sent in another without ever being held whole
(L{mxrecv.deliver.webhook}).

Field names and file names are written as browsers write them (the WHATWG
form-data encoding): UTF-8, with C{"}, CR and LF percent-encoded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from attrs import frozen

CRLF = b"\r\n"
#: Bytes read from a file at a time.
CHUNK = 64 * 1024


@frozen
class FormField:
    """
    One field: C{data}, or the contents of the file at C{path}.
    """

    name: str
    filename: str
    contentType: str
    data: bytes | None = None
    path: Path | None = None


def quoteParameter(value: str) -> bytes:
    """
    A name or file name, for inside the quotes of a C{Content-Disposition}
    parameter.
    """
    escaped = value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
    return escaped.encode("utf-8", "surrogatepass")


def fieldHead(field: FormField, boundary: bytes, first: bool) -> bytes:
    """
    The boundary and headers before a field's contents.
    """
    return (
        (b"" if first else CRLF)
        + b"--"
        + boundary
        + CRLF
        + b'Content-Disposition: form-data; name="'
        + quoteParameter(field.name)
        + b'"; filename="'
        + quoteParameter(field.filename)
        + b'"'
        + CRLF
        + b"Content-Type: "
        + field.contentType.encode("ascii")
        + CRLF
        + CRLF
    )


def closing(boundary: bytes) -> bytes:
    return CRLF + b"--" + boundary + b"--" + CRLF


class FormBody:
    """
    The fields C{fields} between boundaries C{boundary} (which must not
    occur in any of them: a random one of 32 hex digits does not).
    """

    def __init__(self, fields: Sequence[FormField], boundary: bytes) -> None:
        if any(not f.contentType.isascii() for f in fields):
            raise ValueError("a content type is not ASCII")
        self.fields = tuple(fields)
        self.boundary = boundary

    @classmethod
    def withRandomBoundary(cls, fields: Sequence[FormField]) -> FormBody:
        return cls(fields, os.urandom(16).hex().encode("ascii"))

    @property
    def contentType(self) -> bytes:
        return b"multipart/form-data; boundary=" + self.boundary

    def chunks(self) -> Iterator[bytes]:
        """
        The body, piece by piece, reading the files as it goes (blocking).

        @raise OSError: if a file cannot be read.
        """
        for i, field in enumerate(self.fields):
            yield fieldHead(field, self.boundary, first=i == 0)
            if field.data is not None:
                yield field.data
                continue
            assert field.path is not None
            with field.path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk
        yield closing(self.boundary)
