# -*- test-case-name: tests.test_multipart -*-
"""
A C{multipart/form-data} callback body, parsed as it arrives.

MX Telecom's POST-mode callbacks carry the usual parameters as text fields
and, for an MMS, the zipped message as the part C{mms.zip}.  The zip goes
to a file in a staging directory of the spool, written and hashed in worker
threads by a L{FileWriter} (which pauses the connection while the disk is
behind), so that the reactor only parses; the text fields are held in memory, bounded in size and in count.  Nothing
holds a whole body or a whole zip.

The push parser is C{multipart}'s L{PushMultipartParser}: it was the fastest
on hostile data of the three measured and the only one that refuses a body
cut off before its closing boundary (see docs/post.md).
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus

from multipart import (
    MultipartError,
    MultipartSegment,
    PushMultipartParser,
    parse_options_header,
)
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mxrecv.message.params import LIMITS, MAX_RECIPIENTS
from mxrecv.spool.layout import MMS_ZIP
from mxrecv.spool.store import Spool, SpoolError, Staging
from mxrecv.spool.writer import FileWriter, FileWriters, Written
from mxrecv.web.body import IBody, Refusal, Upload

log = Logger()

# A field may be as long as the longest parameter (the SMS text); a longer
# one is refused here rather than held.  Repeatable fields (to, cc) make the
# count.
MAX_FIELD_BYTES = max(LIMITS.values())
MAX_FIELDS = 2 * MAX_RECIPIENTS + 2 * len(LIMITS)
# All text fields together: as much as an urlencoded form may hold.
MAX_FIELDS_BYTES = 1024 * 1024
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
    C{mms.zip} part into C{staging}/mms.zip (by C{writers}) with its size
    and SHA-256 in C{upload} once L{finish} has waited for the writer.

    A malformed body is refused with 400 (L{Refusal}) as soon as it is seen
    to be malformed, a failed write with 503, and L{abort} removes whatever
    was written.
    """

    staging: Staging | None = None
    upload: Upload | None = None

    def __init__(self, contentType: bytes, *, spool: Spool, writers: FileWriters) -> None:
        self._spool = spool
        self._writers = writers
        self._producer: IPushProducer | None = None
        self._parser = PushMultipartParser(
            boundaryOf(contentType),
            max_header_size=MAX_HEADER_BYTES,
            max_header_count=MAX_HEADERS,
            max_segment_count=MAX_FIELDS + 1,
        )
        self.params: dict[bytes, list[bytes]] = {}
        self._fields = 0
        self._fieldsBytes = 0
        # The part being received: a field's pieces, or the zip's file.
        self._segment: MultipartSegment | None = None
        self._pieces: list[bytes] = []
        self._size = 0
        # The zip's writer, and the same while its part is being received.
        self._writer: FileWriter | None = None
        self._file: FileWriter | None = None
        self._written: Deferred[Written] | None = None

    @classmethod
    def factory(cls, spool: Spool, writers: FileWriters) -> Callable[[bytes], MultipartBody]:
        """
        The C{multipart} argument of L{mxrecv.web.body.BodyChooser}.
        """
        return lambda contentType: cls(contentType, spool=spool, writers=writers)

    def registerProducer(self, producer: IPushProducer) -> None:
        self._producer = producer

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

    def finish(self) -> Deferred[None] | None:
        try:
            self._parser.close()
        except MultipartError as e:
            raise Refusal(HTTPStatus.BAD_REQUEST, f"malformed multipart body: {e}") from None
        if self._written is None:
            return None
        return self._written.addCallbacks(self._uploaded, self._notWritten)

    def _uploaded(self, written: Written) -> None:
        self.upload = Upload(MMS_ZIP, written.size, written.sha256)

    def _notWritten(self, reason: Failure) -> Failure:
        if reason.check(OSError):
            log.error("Cannot write an upload: {error}", error=reason.value.strerror)
            return Failure(
                Refusal(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    f"cannot write to the spool: {reason.value.strerror}",
                )
            )
        return reason

    def abort(self) -> None:
        closed = None
        if self._writer is not None:
            closed = self._writer.abort()
            self._writer = self._file = None
        if self._written is not None:
            self._written.addErrback(lambda _: None)
            self._written = None
        self._pieces = []
        if self.staging is not None:
            self._spool.discard(self.staging, after=closed)
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
            self._writer = self._file = self._writers.open(
                self.staging.file(MMS_ZIP), self._producer
            )
            return
        self._fields += 1
        if self._fields > MAX_FIELDS:
            raise Refusal(HTTPStatus.BAD_REQUEST, f"more than {MAX_FIELDS} fields")

    def _take(self, data: bytes) -> None:
        self._size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        if self._size > MAX_FIELD_BYTES:
            raise Refusal(
                HTTPStatus.BAD_REQUEST,
                f"field {self._segment.name!r} longer than {MAX_FIELD_BYTES} bytes",
            )
        self._fieldsBytes += len(data)
        if self._fieldsBytes > MAX_FIELDS_BYTES:
            raise Refusal(
                HTTPStatus.BAD_REQUEST, f"fields longer than {MAX_FIELDS_BYTES} bytes in all"
            )
        self._pieces.append(data)

    def _end(self) -> None:
        segment, self._segment = self._segment, None
        if self._file is not None:
            self._written = self._file.close()
            self._file = None
            return
        value = b"".join(self._pieces)
        self._pieces = []
        self.params.setdefault(segment.name.encode("utf-8"), []).append(
            _asUTF8(value, segment.charset)
        )

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
    except (LookupError, ValueError):
        # ValueError covers UnicodeError and a charset name with a NUL in it.
        return value
