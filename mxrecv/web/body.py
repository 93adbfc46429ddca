# -*- test-case-name: tests.test_server -*-
"""
What becomes of a request body as it arrives.

twisted.web's own Request buffers a whole body and then parses it; a callback
body is instead handed, chunk by chunk, to one of the L{IBody} implementations
here, chosen from the request's headers before the first byte of the body.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.web.http import parse_qs
from twisted.web.http_headers import Headers
from zope.interface import Attribute, Interface, implementer

from mxrecv.message.params import PARAMETERS, Params


class Refusal(Exception):
    """
    The request is refused with C{code} before it reaches the resource.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code} {self.reason}"


@frozen
class Upload:
    """
    A file that arrived in a body, written to the body's staging directory
    and measured on the way, so that nothing has to read it again to know
    its size and digest.

    @ivar name: its file name in the staging directory.
    @ivar sha256: lowercase hex.
    """

    name: str
    size: int
    sha256: str


class IBody(Interface):
    """
    The consumer of one request body.
    """

    params = Attribute("The callback parameters the body carried, once finished.")
    staging = Attribute("The L{Staging} holding the body's files, or L{None}.")
    upload = Attribute("The L{Upload} written into C{staging}, or L{None}.")

    def write(data: bytes) -> None:
        """
        Take the next chunk of the body.

        @raise Refusal: if the body is unacceptable; no more is written.
        """

    def registerProducer(producer: IPushProducer) -> None:
        """
        The producer of the chunks (the connection), for a body that pauses
        it while it cannot keep up.
        """

    def finish() -> Deferred[None] | None:
        """
        The whole body has arrived.

        @return: L{None} if the body is complete now, or a L{Deferred} that
            fires once it is (its files written and closed), or fails with
            L{Refusal}.
        @raise Refusal: if it is incomplete or unacceptable.
        """

    def abort() -> None:
        """
        The request will not be processed: remove anything written.
        """


@implementer(IBody)
class DiscardBody:
    """
    A body that means nothing to us (a GET's, whatever its type), counted
    and dropped.
    """

    params: Params = {}
    staging = None
    upload = None

    def registerProducer(self, producer: IPushProducer) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass


@implementer(IBody)
class FormBody:
    """
    An C{application/x-www-form-urlencoded} body, held in memory up to
    C{limit} bytes (parameters are small; a larger form is refused with 413).
    """

    staging = None
    upload = None

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.params: Params = {}

    def registerProducer(self, producer: IPushProducer) -> None:
        pass

    def write(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            raise Refusal(413, f"form body larger than {self._limit} bytes")
        self._chunks.append(data)

    def finish(self) -> None:
        self.params = parse_qs(b"".join(self._chunks), 1)
        self._chunks = []

    def abort(self) -> None:
        self._chunks = []


class BodyChooser:
    """
    Picks the L{IBody} for a request from its method, URI and
    C{Content-Type}, so that a callback's parameters come from one place:
    a GET's from its query string (its body, if any, is read and dropped,
    whatever its type: never taken for parameters or an MMS zip); a POST's
    from its body, a form or multipart (a POST whose query string carries
    a callback parameter is refused, rather than one of two values being
    stored silently; other names there, such as a token in the URL given
    to MX Telecom, are ignored).

    @param formLimit: the largest urlencoded form body held in memory.
    @param multipart: makes the body for a C{multipart/form-data} request,
        given the header's value; L{None} if multipart is not accepted.
    """

    def __init__(
        self, formLimit: int, multipart: Callable[[bytes], IBody] | None = None
    ) -> None:
        self._formLimit = formLimit
        self._multipart = multipart

    def __call__(self, method: bytes, uri: bytes, headers: Headers) -> IBody:
        if method != b"POST":
            # A GET's parameters are its query string; other methods are
            # answered 405 once the body is in.
            return DiscardBody()
        query = uri.partition(b"?")[2]
        stray = sorted(PARAMETERS.intersection(parse_qs(query, 1))) if query else []
        if stray:
            raise Refusal(
                HTTPStatus.BAD_REQUEST,
                f"parameter {stray[0].decode()!r} in the query string of a POST: a POST "
                "callback carries its parameters in its body",
            )
        value = headers.getRawHeaders(b"Content-Type", [b""])[0]
        kind = value.split(b";", 1)[0].strip().lower()
        if kind == b"application/x-www-form-urlencoded":
            return FormBody(self._formLimit)
        if kind == b"multipart/form-data" and self._multipart is not None:
            return self._multipart(value)
        raise Refusal(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            "a POST callback's body must be application/x-www-form-urlencoded or "
            "multipart/form-data",
        )
