# -*- test-case-name: tests.test_multipart -*-
"""
A C{multipart/form-data} callback body, parsed as it arrives.

MX Telecom's POST-mode callbacks carry the usual parameters as text fields
and, for an MMS, the zipped message as the part C{mms.zip}.  The zip goes
straight to a file in a staging directory of the spool, hashed on the way;
the text fields are held in memory, bounded in size and in count.  Nothing
holds a whole body or a whole zip.

The push parser is C{multipart}'s L{PushMultipartParser}: it was the fastest
on hostile data of the three measured and the only one that refuses a body
cut off before its closing boundary (see docs/post.md).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from multipart import MultipartError, MultipartSegment, PushMultipartParser
from multipart import parse_options_header
from twisted.logger import Logger
from zope.interface import implementer

from .body import IBody, Refusal, Upload
from .durable import writeAll
from .params import LIMITS, MAX_RECIPIENTS
from .spool import Spool, SpoolError, Staging

log = Logger()

MMS_ZIP = "mms.zip"
# A field may be as long as the longest parameter (the SMS text); a longer
# one is refused here rather than held.  Repeatable fields (to, cc) make the
# count.
MAX_FIELD_BYTES = max(LIMITS.values())
MAX_FIELDS = 2 * MAX_RECIPIENTS + 2 * len(LIMITS)
# One part header line, and headers per part: RFC 7578 needs three.
MAX_HEADER_BYTES = 4096
MAX_HEADERS = 8


def boundaryOf(contentType: bytes) -> str:
    """
    The boundary of a C{multipart/form-data} C{Content-Type} header value.

    @raise Refusal: 400 if there is none or it is not a valid boundary.
    """
    _, options = parse_options_header(contentType.decode("latin-1"))
    boundary = options.get("boundary", "")
    # RFC 2046: 1 to 70 characters, no line breaks.
    if not 0 < len(boundary) <= 70 or "\r" in boundary or "\n" in boundary:
        raise Refusal(HTTPStatus.BAD_REQUEST, "multipart body without a valid boundary")
    return boundary


@implementer(IBody)
class MultipartBody:
    """
    Takes a multipart body chunk by chunk: fields into C{params}, the
    C{mms.zip} part into C{staging}/mms.zip with its size and SHA-256 in
    C{upload}.

    A malformed body is refused with 400 (L{Refusal}) as soon as it is seen
    to be malformed, and L{abort} removes whatever was written.
    """

    staging: Staging | None = None
    upload: Upload | None = None

    def __init__(self, contentType: bytes, *, spool: Spool) -> None:
        self._spool = spool
        self._parser = PushMultipartParser(
            boundaryOf(contentType),
            max_header_size=MAX_HEADER_BYTES,
            max_header_count=MAX_HEADERS,
            max_segment_count=MAX_FIELDS + 1,
        )
        self.params: dict[bytes, list[bytes]] = {}
        self._fields = 0
        # The part being received: a field's pieces, or the zip's file.
        self._segment: MultipartSegment | None = None
        self._pieces: list[bytes] = []
        self._size = 0
        self._file: int | None = None
        self._digest: Any = None

    @classmethod
    def factory(cls, spool: Spool) -> Callable[[bytes], MultipartBody]:
        """
        The C{multipart} argument of L{mxrecv.body.BodyChooser}.
        """
        return lambda contentType: cls(contentType, spool=spool)

    def write(self, data: bytes) -> None:
        if not data:
            return  # the parser would take it for the end of the body
        try:
            for event in self._parser.parse(data):
                if isinstance(event, MultipartSegment):
                    self._begin(event)
                elif event is None:
                    self._end()
                else:
                    self._take(event)
        except MultipartError as e:
            raise Refusal(HTTPStatus.BAD_REQUEST, f"malformed multipart body: {e}") from None
        except OSError as e:
            log.error("Cannot write an upload: {error}", error=e.strerror)
            raise Refusal(
                HTTPStatus.SERVICE_UNAVAILABLE, f"cannot write to the spool: {e.strerror}"
            ) from None

    def finish(self) -> None:
        try:
            self._parser.close()
        except MultipartError as e:
            raise Refusal(HTTPStatus.BAD_REQUEST, f"malformed multipart body: {e}") from None

    def abort(self) -> None:
        try:
            self._closeFile()
        except OSError:
            pass
        self._pieces = []
        if self.staging is not None:
            self._spool.discard(self.staging)
            self.staging = None
        self.upload = None

    def _begin(self, segment: MultipartSegment) -> None:
        self._segment = segment
        self._size = 0
        if MMS_ZIP in (segment.name, segment.filename):
            if self.staging is not None:
                raise Refusal(HTTPStatus.BAD_REQUEST, "mms.zip given more than once")
            try:
                self.staging = self._spool.stage()
            except SpoolError as e:
                raise Refusal(HTTPStatus.SERVICE_UNAVAILABLE, str(e)) from None
            self._file = os.open(
                self.staging.file(MMS_ZIP),
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                0o640,
            )
            self._digest = hashlib.sha256()
            return
        self._fields += 1
        if self._fields > MAX_FIELDS:
            raise Refusal(HTTPStatus.BAD_REQUEST, f"more than {MAX_FIELDS} fields")

    def _take(self, data: bytes) -> None:
        self._size += len(data)
        if self._file is not None:
            # The chunks are twisted.web's reads (64 KiB at most): written
            # as they come, no buffer of ours.
            self._digest.update(data)
            writeAll(self._file, data)
            return
        if self._size > MAX_FIELD_BYTES:
            raise Refusal(
                HTTPStatus.BAD_REQUEST,
                f"field {self._segment.name!r} longer than {MAX_FIELD_BYTES} bytes",
            )
        self._pieces.append(data)

    def _end(self) -> None:
        segment, self._segment = self._segment, None
        if self._file is not None:
            self._closeFile()
            self.upload = Upload(MMS_ZIP, self._size, self._digest.hexdigest())
            return
        value = b"".join(self._pieces)
        self._pieces = []
        self.params.setdefault(segment.name.encode("utf-8"), []).append(
            _asUTF8(value, segment.charset)
        )

    def _closeFile(self) -> None:
        if self._file is not None:
            fd, self._file = self._file, None
            os.close(fd)


def _asUTF8(value: bytes, charset: str | None) -> bytes:
    """
    A field's bytes in UTF-8 when its part names a charset that decodes
    them; otherwise as sent, to be decoded like GET-mode text (UTF-8 if
    valid, else ISO-8859-15).
    """
    if charset is None:
        return value
    try:
        return value.decode(charset).encode("utf-8")
    except (LookupError, UnicodeDecodeError):
        return value
