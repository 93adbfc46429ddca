# -*- test-case-name: tests.test_admin -*-
"""
twisted.web's own Request, its body buffered and its forms parsed as
twisted.web does them, with a bound on that body: for a site whose
requests are small (the admin listener's forms).  twisted.web has no bound
of its own: a client could make it buffer any body into a temporary file
and parse a multipart one whole in memory, before any resource (or its
token check) sees the request.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import cast

from twisted.web.server import Request

from mxrecv.web.body import Refusal
from mxrecv.web.request import CallbackChannel


class BoundedRequest(Request):
    """
    A request whose body may be no larger than its site's C{maxBody}: one
    whose C{Content-Length} says more is refused with 413 from its headers,
    before any of its body is read; a chunked one as soon as it is over.
    Its channel is a L{CallbackChannel}, which answers, closes the
    connection and reports the refusal.
    """

    _received = 0
    _refused: Refusal | None = None

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._limit():
            # No temporary file for what will not be kept.
            super().gotLength(0)
            self._tooLarge()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused is not None:
            return
        self._received += len(data)
        if self._received > self._limit():
            self._tooLarge()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused is None:
            super().requestReceived(command, path, version)

    def _channel(self) -> CallbackChannel:
        return cast(CallbackChannel, self.channel)

    def _limit(self) -> int:
        return int(self._channel().site.maxBody)

    def _tooLarge(self) -> None:
        self._refused = Refusal(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over the limit of {self._limit()} bytes"
        )
        # Otherwise twisted.web sends "100 Continue" after this answer.
        self.requestHeaders.removeHeader(b"Expect")
        self._channel().refuseAndClose(self._refused)
