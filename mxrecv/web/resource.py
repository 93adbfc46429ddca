# -*- test-case-name: tests.test_server -*-
"""
The callback resource: validate the parameters, spool the message, answer.

By the time C{render} runs, L{mxrecv.web.request.CallbackRequest} has taken the
body (and refused what had to be refused before reading it); what remains is
request -> validate -> spool -> 200, with a 4xx or 503 for everything else.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import tzinfo
from http import HTTPStatus

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from mxrecv.message.dates import isoFromTimestamp
from mxrecv.message.model import GET, MMS, POST, Message
from mxrecv.message.params import BadParameter, parseCallback
from mxrecv.spool.layout import NEW, PENDING
from mxrecv.spool.store import Accepted, Spool, SpoolError
from mxrecv.web.outcome import CallbackOutcome, modeOf
from mxrecv.web.request import CallbackRequest

log = Logger()

_ACCEPTED = "{mode} callback {id} ({type}) from {client}: {status}{duplicateNote} in {ack_seconds:.3f}s"
_REFUSED = "{mode} callback from {client}: {status} {reason}"


class CallbackResource(Resource):
    """
    The one resource of the site: the callback URL given to MX Telecom.

    @param onPending: called with the name of each MMS newly journaled in
        C{pending/}, after its 200, to complete it (unpack or retrieve).
    @param observe: called with the L{CallbackOutcome} of each answered
        callback (metrics), beside its log event.
    """

    isLeaf = True

    def __init__(
        self,
        *,
        path: str,
        spool: Spool,
        zone: tzinfo,
        ack: str,
        clock: IReactorTime,
        onPending: Callable[[str], None] = lambda name: None,
        observe: Callable[[CallbackOutcome], None] = lambda outcome: None,
    ) -> None:
        super().__init__()
        self._path = path.encode()
        self._spool = spool
        self._zone = zone
        self._ack = ack.encode()
        self._clock = clock
        self._onPending = onPending
        self._observe = observe

    def render(self, request: CallbackRequest) -> bytes | int:
        if request.path != self._path:
            self._discardBody(request)
            return self._answer(request, HTTPStatus.NOT_FOUND, "no callback at this path")
        if request.method not in (b"GET", b"POST"):
            self._discardBody(request)
            request.setHeader(b"Allow", b"GET, POST")
            return self._answer(
                request, HTTPStatus.METHOD_NOT_ALLOWED, "callbacks are GET or POST"
            )
        # One place per mode (BodyChooser): a GET's query string, a POST's body.
        delivery = GET if request.method == b"GET" else POST
        params = request.args if delivery == GET else request.body.params
        staging = request.body.staging
        try:
            message = parseCallback(
                params,
                delivery=delivery,
                received=isoFromTimestamp(self._clock.seconds()),
                zone=self._zone,
            )
            if message.type == MMS and delivery == POST and staging is None:
                raise BadParameter("mms.zip", "an MMS sent by POST must carry its zip")
        except BadParameter as e:
            if staging is not None:
                self._spool.discard(staging)
            return self._answer(request, HTTPStatus.BAD_REQUEST, str(e))
        if message.type != MMS and staging is not None:
            self._spool.discard(staging)
            staging = None
        upload = request.body.upload
        if staging is not None and upload is not None:
            # Measured as it streamed in: completion need not read it again.
            message = message.replace(mms_size=upload.size, mms_sha256=upload.sha256)
        target = PENDING if message.type == MMS else NEW
        d = self._spool.accept(message, target, staging)
        d.addCallbacks(self._accepted, self._notStored, (request, message), None, (request, message))
        return NOT_DONE_YET

    def _discardBody(self, request: CallbackRequest) -> None:
        if request.body.staging is not None:
            self._spool.discard(request.body.staging)

    def _accepted(self, accepted: Accepted, request: CallbackRequest, message: Message) -> None:
        self._finish(request, HTTPStatus.OK, self._ack, message, accepted.duplicate)
        if message.type == MMS:
            # A duplicate too: the first copy may be in pending/ with nothing
            # working on it (its commit failed after the rename).  Taking up
            # a message already in hand does nothing.
            self._onPending(accepted.name)

    def _notStored(self, reason: Failure, request: CallbackRequest, message: Message) -> None:
        if reason.check(SpoolError):
            text = reason.getErrorMessage()
            log.error("Could not store {id}: {error}", id=message.id, error=text)
        else:
            text = "internal error"
            log.failure("Could not store {id}", reason, id=message.id)
        body = f"message not stored, please retry: {text}\n".encode()
        self._finish(request, HTTPStatus.SERVICE_UNAVAILABLE, body, message)

    def _answer(self, request: CallbackRequest, status: int, reason: str) -> bytes:
        self._log(request, status, None, reason=reason)
        return _respond(request, status, f"{reason}\n".encode())

    def _finish(
        self,
        request: CallbackRequest,
        status: int,
        body: bytes,
        message: Message,
        duplicate: bool = False,
    ) -> None:
        self._log(request, status, message, duplicate=duplicate)
        if request.channel is None:
            return
        request.write(_respond(request, status, body))
        request.finish()

    def _log(
        self,
        request: CallbackRequest,
        status: int,
        message: Message | None,
        duplicate: bool = False,
        reason: str | None = None,
    ) -> None:
        outcome = CallbackOutcome(
            id=message.id if message else None,
            type=message.type if message else None,
            mode=modeOf(request.method),
            status=int(status),
            bytes=request.bodyBytes,
            ack_seconds=self._clock.seconds() - request.started,
            client=getattr(request.getClientAddress(), "host", None),
            duplicate=duplicate,
            reason=reason,
        )
        fields = outcome.fields()
        # Formatted here by str.format, not by the log observer: twisted's
        # formatting (and, for JSON lines, flattening) of a many-field
        # format string is the dearest part of the event.
        summary = (_ACCEPTED if message else _REFUSED).format(
            duplicateNote=" (duplicate)" if duplicate else "", **fields
        )
        log.info("{summary}", summary=summary, **fields)
        self._observe(outcome)


def _respond(request: CallbackRequest, status: int, body: bytes) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body
