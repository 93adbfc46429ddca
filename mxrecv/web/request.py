# -*- test-case-name: tests.test_server -*-
"""
A twisted.web Request that streams its body instead of buffering it, and can
refuse a request before reading its body; and the channel that bounds how
long a request's headers may take.

twisted.web calls C{gotLength} once the headers are in, C{handleContentChunk}
for each piece of body, and C{requestReceived} when the body is complete; the
resource renders only after that.  Here C{gotLength} decides, from the
request line and the headers, whether to refuse (400, 413, 415) or which
L{IBody} takes the body (a client outside C{allow} never gets this far: the
listener's L{mxrecv.web.access.Gate} dropped it at accept); chunks go to it as they arrive (the body may pause the
connection while it cannot keep up); the resource renders once the body has
finished, which for an upload means its file is written and closed; and a
request that takes longer than the site's C{requestTimeout} in all is cut
off.  Before that, while the headers come in, L{CallbackChannel} applies
the site's C{headerTimeout} in the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, datetimeToString, unquote
from twisted.web.http_headers import Headers
from twisted.web.server import Request, Site
from zope.interface import implementer

from mxrecv.web.body import IBody, Refusal
from mxrecv.web.outcome import CallbackOutcome, modeOf

log = Logger()

# After refusing a request whose body is still coming, read and drop this much
# more of it (for this long at most) before closing, so that a client that did
# not wait for "100 Continue" sees the answer rather than a reset.
DRAIN_BYTES = 1024 * 1024
DRAIN_SECONDS = 2.0
# Read a body in pieces of up to this much rather than twisted's 64 KiB: a
# quarter as many trips per byte through the HTTP and multipart parsers and
# the hand-over to the upload writer.  (Plain TCP only: TLS hands over 16 KiB
# records whatever the read size.)
READ_SIZE = 256 * 1024
# A minimum rate check that runs this many seconds after its time found the
# reactor held up.
LATE_CHECK = 1.0
# The Server header of every answer: twisted.web's own names it and its
# version, which tells a scanner which advisories to try.
SERVER = b"mxrecv"


class _NoContent:
    """
    Stands in for the body file twisted.web's Request expects: the body went
    to an L{IBody}, so there is nothing for twisted.web to parse.
    """

    def write(self, data: bytes) -> None:
        pass

    def read(self, size: int = -1) -> bytes:
        return b""

    def tell(self) -> int:
        return 0

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def close(self) -> None:
        pass


class CallbackChannel(HTTPChannel):
    """
    An HTTP/1.1 connection whose requests must get their headers in within
    the site's C{headerTimeout}, however steadily they trickle (twisted.web's
    own idle timeout starts again with every byte), and whose answers name
    the server only as C{mxrecv}.  The admin site's connections are these
    too: its site has the same C{headerTimeout}, C{reactor} and C{observe}.

    The header deadline starts when the connection is made, so it covers a
    TLS handshake, and, on a kept-alive connection, with the first byte of
    each further request; it stops once the headers are in, where
    L{CallbackRequest}'s deadline takes over.  A connection idle between two
    requests is left to the idle timeout.  When the deadline passes, a client
    that sent part of a request gets a 408; one that sent nothing (which may
    still be in its TLS handshake) is dropped without an answer.
    """

    # Set by the site that builds it (twisted.web's Site.buildProtocol).
    site: Any
    _headerDeadline: IDelayedCall | None = None
    _headerBegan = 0.0
    # Whether any of the request under the deadline has arrived.
    _partial = False
    _cutOff = False
    _abortLater: IDelayedCall | None = None
    _host: IAddress | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._startHeaderDeadline()

    def getHost(self) -> IAddress:
        """
        The connection's local address, asked of the socket once: every
        request asks for it (C{Request.host}), and it cannot change.
        """
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def dataReceived(self, data: bytes) -> None:
        if self._cutOff:
            return
        # No request in hand: these bytes begin the next one.  (What arrived
        # while the last one was being answered comes here too, once it is.)
        if not self.requests and self._headerDeadline is None:
            self._startHeaderDeadline()
        self._partial = True
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self._stopHeaderDeadline()
        super().allHeadersReceived()

    def timeoutConnection(self) -> None:
        """
        twisted.web's idle timeout, but not while the server itself holds
        back the body of the request in hand (L{CallbackRequest.heldBack}):
        then it waits another period.
        """
        if self.requests and getattr(self.requests[-1], "heldBack", False):
            self.setTimeout(self.timeOut)
            return
        super().timeoutConnection()

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        # Every answer a request writes comes through here, error pages too.
        if isinstance(headers, Headers):
            headers.setRawHeaders(b"Server", [SERVER])
        super().writeHeaders(version, code, reason, headers)

    def connectionLost(self, reason: Failure) -> None:
        self._stopHeaderDeadline()
        _cancel(self._abortLater)
        super().connectionLost(reason)

    def _startHeaderDeadline(self) -> None:
        reactor = self.site.reactor
        self._headerBegan = reactor.seconds()
        self._partial = False
        self._headerDeadline = reactor.callLater(self.site.headerTimeout, self._headersTimedOut)

    def _stopHeaderDeadline(self) -> None:
        _cancel(self._headerDeadline)
        self._headerDeadline = None

    def _headersTimedOut(self) -> None:
        self._headerDeadline = None
        timeout = self.site.headerTimeout
        if self._partial:
            self.refuseAndClose(
                Refusal(
                    HTTPStatus.REQUEST_TIMEOUT,
                    f"request headers not complete after {timeout:g} seconds",
                ),
                self._headerBegan,
            )
            return
        self._cutOff = True
        self.transport.abortConnection()
        self._report(
            Refusal(
                HTTPStatus.REQUEST_TIMEOUT,
                f"nothing received in {timeout:g} seconds, dropped without an answer",
            ),
            self._headerBegan,
        )

    def _respondToBadRequestAndDisconnect(self) -> None:
        """
        twisted.web's parser refused the request's framing (its request
        line, a header, the headers' size or count, conflicting
        Content-Length and Transfer-Encoding, a chunk): answer 400 saying
        which, and log and count it like any other refusal.
        """
        if self._cutOff:
            return
        request = self.requests[-1] if self.requests else None
        if getattr(request, "_refused", None) is not None:
            # Its answer is written already: only the drain is cut short.
            self._cutOff = True
            self.loseConnection()
            return
        began = getattr(request, "started", 0.0) or self._headerBegan
        self.refuseAndClose(Refusal(HTTPStatus.BAD_REQUEST, self._framingProblem()), began)

    def lineLengthExceeded(self, line: bytes) -> None:
        # LineReceiver would close the connection without a word.
        if self._cutOff:
            return
        self.refuseAndClose(
            Refusal(
                HTTPStatus.BAD_REQUEST,
                f"malformed request: a request or header line longer than {self.MAX_LENGTH} bytes",
            ),
            self._headerBegan,
        )

    def _framingProblem(self) -> str:
        """
        What twisted.web's parser found wrong, from the state it was left
        in (it says nothing itself).
        """
        if self._receivedHeaderSize > self.totalHeadersSize:
            return f"malformed request: headers longer than {self.totalHeadersSize} bytes"
        if self._receivedHeaderCount > self.maxHeaders:
            return f"malformed request: more than {self.maxHeaders} headers"
        if not self.line_mode:
            return "malformed request: a bad chunk in its chunked body"
        if getattr(self, "_command", None) is None:
            return "malformed request: a bad request line"
        return (
            "malformed request: a bad header (name, value, Content-Length or "
            "Transfer-Encoding, or both of the last two)"
        )

    def refuseAndClose(self, refusal: Refusal, began: float | None = None) -> None:
        """
        Answer C{refusal}, close the connection, ignore what else comes,
        and report it (log it, and tell the site's C{observe}).

        @param began: when the request began, by the site's reactor; by
            default, when its first byte came.
        """
        if began is None:
            began = self._headerBegan
        self._cutOff = True
        self._stopHeaderDeadline()
        _writeRefusal(self.transport, refusal)
        self.loseConnection()
        # Over TLS the connection only closes once the client answers our
        # close_notify; one that never does is dropped, as twisted.web does
        # after its idle timeout.
        self._abortLater = self.site.reactor.callLater(
            self.abortTimeout, self.transport.abortConnection
        )
        self._report(refusal, began)

    def _report(self, refusal: Refusal, began: float) -> None:
        request = self.requests[-1] if self.requests else None
        _report(
            self.site,
            refusal,
            # twisted.web's private record of the method, once the request
            # line is in: no public attribute has it before the headers are.
            method=getattr(self, "_command", None),
            received=getattr(request, "bodyBytes", 0),
            seconds=self.site.reactor.seconds() - began,
            peer=self.getPeer(),
        )


class CallbackSite(Site):
    """
    A Site for L{CallbackRequest}s on L{CallbackChannel}s: it holds what they
    need to decide about a body before the resource sees the request.

    @ivar chooseBody: called with the request's method, URI and headers
        once the headers are in; returns the L{IBody} for the body or raises
        L{Refusal}.
    @ivar observe: called with the L{CallbackOutcome} of each request refused
        here (metrics).
    @ivar headerTimeout: seconds a request's headers may take in all
        (L{CallbackChannel}).
    @ivar requestTimeout: seconds a request may take in all once its headers
        are in (L{CallbackRequest}).
    @ivar minBodyRate: bytes a second a body must keep arriving at, after
        the first C{bodyGrace} seconds, over each C{bodyGrace} seconds (0:
        no minimum; L{_MinimumRate}).
    """

    # Plain HTTP/1.1 channels rather than twisted.web's default, a wrapper
    # that can switch to HTTP/2, which this site never offers (see
    # acceptableProtocols).
    protocol = CallbackChannel

    def __init__(
        self,
        resource: Any,
        *,
        reactor: IReactorTime,
        maxBody: int,
        requestTimeout: float,
        headerTimeout: float,
        chooseBody: Callable[[bytes, bytes, Headers], IBody],
        observe: Callable[[CallbackOutcome], None] = lambda outcome: None,
        minBodyRate: float = 0.0,
        bodyGrace: float = 10.0,
    ) -> None:
        super().__init__(resource, requestFactory=CallbackRequest, reactor=reactor)
        self.observe = observe
        self.maxBody = maxBody
        self.requestTimeout = requestTimeout
        self.headerTimeout = headerTimeout
        self.minBodyRate = minBodyRate
        self.bodyGrace = bodyGrace
        self.chooseBody = chooseBody

    _dateSecond = -1
    _date = b""

    def httpDate(self) -> bytes:
        """
        The C{Date} header of the answers: now, by the site's reactor,
        formatted once a second rather than for each answer.
        """
        now = int(self.reactor.seconds())
        if now != self._dateSecond:
            self._date = datetimeToString(now)
            self._dateSecond = now
        return self._date

    def log(self, request: Request) -> None:
        """
        No access log: the query string of a GET callback holds the message
        text.  L{mxrecv.web.resource} logs one structured event per callback.
        """

    def acceptableProtocols(self) -> list[bytes]:
        # A webhook receiver gains nothing from HTTP/2, and h2 would change
        # when gotLength runs.
        return [b"http/1.1"]


class CallbackRequest(Request):
    """
    A request whose body streams into an L{IBody}.

    @ivar body: the L{IBody} taking the body, once the headers are in.
    @ivar started: when the headers were in, by the site's reactor.
    """

    body: IBody | None = None
    started: float = 0.0
    _received = 0
    _refused: Refusal | None = None
    _drained = 0
    _deadline: IDelayedCall | None = None
    _closing: IDelayedCall | None = None
    _pace: _MinimumRate | None = None
    _producer: _HeldBack | None = None
    _bodyDone = False
    _gone = False

    def process(self) -> None:
        """
        What twisted.web's C{process} does, for this site of one resource:
        but the C{Date} header is the site's (L{CallbackSite.httpDate}),
        formatted once a second, and the C{Server} header is left to the
        channel (L{CallbackChannel.writeHeaders}).  A request for C{*} goes
        to twisted.web's.
        """
        if self.path == b"*":
            super().process()
            return
        site = self.site = self.channel.site
        self.setHeader(b"Date", site.httpDate())
        self.prepath = []
        self.postpath = list(map(unquote, self.path[1:].split(b"/")))
        try:
            self.render(site.getResourceFor(self))
        except BaseException:
            self.processingFailed(Failure())

    def gotLength(self, length: int | None) -> None:
        site: CallbackSite = self.channel.site
        self.content = _NoContent()
        self.started = site.reactor.seconds()
        try:
            if length is not None and length > site.maxBody:
                raise Refusal(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"body of {length} bytes is over the limit of {site.maxBody}",
                )
            # twisted.web's private record of the request line: no public
            # attribute has it before the body is in.
            self.body = site.chooseBody(
                self.channel._command, self.channel._path, self.requestHeaders
            )
        except Refusal as refusal:
            self._refuse(refusal)
            return
        if length != 0 and site.minBodyRate:
            self._pace = _MinimumRate(self, site)
        self._producer = _HeldBack(self.channel, self._pace)
        self.body.registerProducer(self._producer)
        self.channel.transport.bufferSize = READ_SIZE
        self._deadline = site.reactor.callLater(site.requestTimeout, self._timedOut)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused is not None:
            self._drained += len(data)
            if self._drained > DRAIN_BYTES:
                self.channel.transport.loseConnection()
            return
        self._received += len(data)
        try:
            if self._received > self.channel.site.maxBody:
                raise Refusal(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"body over the limit of {self.channel.site.maxBody} bytes",
                )
            self.body.write(data)
        except Refusal as refusal:
            self._refuse(refusal)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        The whole body has arrived: once the body has finished with it (its
        files written and closed, which may take a while), render.  The
        deadline still runs while the body finishes.
        """
        self._stopPace()
        if self._refused is not None:
            self.channel.transport.loseConnection()
            return
        self.method = command
        try:
            finishing = self.body.finish()
        except Refusal as refusal:
            self._notFinished(Failure(refusal))
            return
        if finishing is None:
            self._finished(command, path, version)
            return
        finishing.addCallbacks(
            lambda _: self._finished(command, path, version), self._notFinished
        )
        finishing.addErrback(lambda f: log.failure("Rendering a callback", f))

    def _finished(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused is not None or self._gone:
            return
        self._cancelDeadline()
        self._bodyDone = True
        super().requestReceived(command, path, version)

    def _notFinished(self, reason: Failure) -> None:
        if self._refused is not None or self._gone:
            return
        self._cancelDeadline()
        if reason.check(Refusal):
            refusal = reason.value
        else:
            log.failure("Finishing a request body", reason)
            refusal = Refusal(HTTPStatus.SERVICE_UNAVAILABLE, "internal error, please retry")
        self._refuse(refusal)
        self.channel.transport.loseConnection()

    @property
    def heldBack(self) -> bool:
        """
        Whether the server is holding the body back (its writer behind):
        time that is not the client's (L{_HeldBack}).
        """
        return self._producer is not None and self._producer.paused

    @property
    def bodyBytes(self) -> int:
        """
        How many bytes of body were received.
        """
        return self._received

    def connectionLost(self, reason: Failure) -> None:
        self._gone = True
        self._cancelDeadline()
        self._stopPace()
        _cancel(self._closing)
        if self.body is not None and not self._bodyDone:
            self.body.abort()
        super().connectionLost(reason)

    def _cancelDeadline(self) -> None:
        _cancel(self._deadline)
        self._deadline = None

    def _stopPace(self) -> None:
        if self._pace is not None:
            self._pace.stop()
            self._pace = None

    def _tooSlow(self) -> None:
        self._refuse(
            Refusal(
                HTTPStatus.REQUEST_TIMEOUT,
                f"body arriving slower than {self.channel.site.minBodyRate:g} bytes a second",
            )
        )
        self.channel.transport.loseConnection()

    def _timedOut(self) -> None:
        self._deadline = None
        self._refuse(
            Refusal(
                HTTPStatus.REQUEST_TIMEOUT,
                f"request not complete after {self.channel.site.requestTimeout:g} seconds",
            )
        )
        self.channel.transport.loseConnection()

    def _refuse(self, refusal: Refusal) -> None:
        """
        Answer C{refusal} straight away, before the resource has the request
        (twisted.web's response machinery is not usable yet), and close the
        connection once the client has had a chance to read it.
        """
        self._refused = refusal
        self._stopPace()
        if self.body is not None:
            self.body.abort()
        # Otherwise twisted.web sends "100 Continue" after this answer.
        self.requestHeaders.removeHeader(b"Expect")
        transport = self.channel.transport
        _writeRefusal(transport, refusal)
        self.channel.persistent = False
        site = self.channel.site
        self._closing = site.reactor.callLater(DRAIN_SECONDS, transport.loseConnection)
        _report(
            site,
            refusal,
            # Before the body is in, the method is only known to the channel.
            method=getattr(self.channel, "_command", None) or self.method,
            received=self._received,
            seconds=site.reactor.seconds() - self.started,
            peer=self.getClientAddress(),
        )


class _MinimumRate:
    """
    Keeps a request's body to the site's C{minBodyRate}: after a grace of
    C{bodyGrace} seconds from its headers, each C{bodyGrace} seconds must
    bring C{minBodyRate} times as many bytes, or the request is cut off
    with 408 (L{CallbackRequest._tooSlow}).  Without it a client could
    trickle a body for as long as C{requestTimeout}.

    Its clock stops while the server holds the body back (L{_HeldBack}),
    and a whole window starts again when the body is let in again.  A
    check that runs late judges only after a turn of the reactor, which
    reads what arrived meanwhile.
    """

    def __init__(self, request: CallbackRequest, site: CallbackSite) -> None:
        self._request = request
        self._clock = site.reactor
        self._window = site.bodyGrace
        self._least = site.minBodyRate * site.bodyGrace
        self._since = 0
        self._due = 0.0
        self._done = False
        self._check: IDelayedCall | None = self._clock.callLater(self._window, self._begin)

    def _begin(self) -> None:
        self._since = self._request.bodyBytes
        self._due = self._clock.seconds() + self._window
        self._check = self._clock.callLater(self._window, self._checkWindow)

    def _checkWindow(self) -> None:
        if self._clock.seconds() - self._due > LATE_CHECK:
            # The reactor was held up (by anything): what the client sent
            # meanwhile may wait unread, and timed calls run before reads.
            # Any later call runs after the reactor's next reads.
            self._check = self._clock.callLater(LATE_CHECK / 100, self._judge)
            return
        self._judge()

    def _judge(self) -> None:
        self._check = None
        if self._request.bodyBytes - self._since < self._least:
            self._request._tooSlow()
            return
        self._begin()

    def stop(self) -> None:
        """
        The body is in, or will not be: no more checks.
        """
        self._done = True
        self.pause()

    def pause(self) -> None:
        """
        The server holds the body back: the clock stops.
        """
        _cancel(self._check)
        self._check = None

    def resume(self) -> None:
        """
        The body is let in again: a whole window from now.
        """
        if self._check is None and not self._done:
            self._begin()


@implementer(IPushProducer)
class _HeldBack:
    """
    The producer a request's body pauses while its writer is behind, in
    front of the connection, knowing meanwhile that the server, not the
    client, holds the body back.  That time is not the client's: the
    minimum rate's clock stops (L{_MinimumRate}), twisted.web's idle timeout
    lets it pass (L{CallbackChannel.timeoutConnection}) and starts again
    when the body is let in again; the request's own deadline still bounds
    it.

    @ivar paused: whether the server holds the body back.
    """

    def __init__(self, channel: HTTPChannel, rate: _MinimumRate | None) -> None:
        self._channel = channel
        self._transport = channel.transport
        self._rate = rate
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True
        if self._rate is not None:
            self._rate.pause()
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        self._transport.resumeProducing()
        self._channel.resetTimeout()
        if self._rate is not None:
            self._rate.resume()

    def stopProducing(self) -> None:
        if self._rate is not None:
            self._rate.stop()
        self._transport.stopProducing()


def _cancel(call: IDelayedCall | None) -> None:
    """
    Cancel C{call}, unless there is none or it has run or been cancelled.
    """
    if call is not None and call.active():
        call.cancel()


def _writeRefusal(transport: Any, refusal: Refusal) -> None:
    """
    Write the answer to a refused request, before twisted.web's response
    machinery has a request to answer.
    """
    body = f"{refusal.reason}\n".encode()
    status = HTTPStatus(refusal.code)
    transport.write(
        b"HTTP/1.1 %d %s\r\n"
        b"Server: %s\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s"
        % (status.value, status.phrase.encode(), SERVER, len(body), body)
    )


def _report(
    site: CallbackSite,
    refusal: Refusal,
    *,
    method: bytes | None,
    received: int,
    seconds: float,
    peer: Any,
) -> None:
    """
    Log and count a request refused before the resource had it.
    """
    outcome = CallbackOutcome(
        id=None,
        type=None,
        mode=modeOf(method or b""),
        status=int(refusal.code),
        bytes=received,
        ack_seconds=seconds,
        client=getattr(peer, "host", None),
        reason=refusal.reason,
    )
    log.info("Refused {client}: {status} {reason}", **outcome.fields())
    site.observe(outcome)
