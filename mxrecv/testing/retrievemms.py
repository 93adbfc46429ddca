# -*- test-case-name: tests.test_retrieve -*-
"""
A RetrieveMMS stand-in for tests, benchmarks and the simulator: a
twisted.web resource that serves MX Telecom's zips (those announced to it,
for the right user and password, as the real one does), or fails in the
ways a script tells it to.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from mxrecv.testing.zips import makeZip

# What the stand-in does with one request.


@frozen
class Serve:
    """
    Answer with C{body}; C{chunked}: without a Content-Length.
    """

    body: bytes
    status: int = 200
    headers: tuple[tuple[bytes, bytes], ...] = ()
    chunked: bool = False


@frozen
class Truncate:
    """
    Announce C{body}'s length, send its first C{sent} bytes, hang up.
    """

    body: bytes
    sent: int


@frozen
class Stream:
    """
    Answer C{body} with its length, written as fast as the connection takes
    it and no faster: a push producer, paused while the client does not read
    (the stand-in's C{sent} says how far it got).
    """

    body: bytes
    chunk: int = 65536


@frozen
class Hang:
    """
    Never answer.
    """


@frozen
class Trickle:
    """
    Answer 200, then send a byte every C{interval} seconds, forever.
    """

    interval: float = 0.02


@frozen
class Redirect:
    """
    Answer 302 with the C{Location} that C{location} makes of the request's
    URI (its path and query, our credentials included): a server that
    sends us to a login page with C{return_to=} our own URL, say.
    """

    location: Callable[[bytes], bytes]


Behaviour = Serve | Truncate | Stream | Hang | Trickle | Redirect


class RetrieveMMS(Resource):
    """
    The stand-in.  With C{user} and C{password}, it is RetrieveMMS as MX
    Telecom runs it: 403 for other credentials, the zip of each id announced
    to it (L{announce}), 404 for any other.  Otherwise each request takes
    the next behaviour of C{script}, and once it is empty, C{default} (a
    zip of C{zipSize} bytes).

    @ivar retrieved: how many times each announced id was served.

    @ivar requests: the query arguments of each request, decoded (a byte
        that is not UTF-8 as an escape).
    @ivar ids: the C{id} of each request, as sent.
    @ivar sent: the bytes of body written by the last L{Stream} so far.
    """

    isLeaf = True

    def __init__(
        self,
        reactor: IReactorTime,
        script: list[Behaviour] | None = None,
        zipSize: int = 1024,
        *,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        super().__init__()
        self._credentials = None if user is None else (user.encode(), (password or "").encode())
        self._zips: dict[bytes, bytes] = {}
        self.retrieved: dict[str, int] = {}
        self._allRetrieved: list[Deferred[None]] = []
        self._reactor = reactor
        self.script = list(script or [])
        self.default = Serve(makeZip(zipSize))
        self.requests: list[dict[str, str]] = []
        self.ids: list[bytes] = []
        self._waiting: list[tuple[int, Deferred[None]]] = []
        self.active = 0
        self.peakActive = 0
        self.sent = 0
        self._idle: list[Deferred[None]] = []

    def announce(self, messageId: str, zipData: bytes) -> None:
        """
        MX Telecom has told a customer about MMS C{messageId}: serve its zip.
        """
        self._zips[messageId.encode()] = zipData

    @property
    def announced(self) -> int:
        return len(self._zips)

    def whenAllRetrieved(self) -> Deferred[None]:
        """
        Fire once every announced MMS has been served at least once.
        """
        d: Deferred[None] = Deferred()
        self._allRetrieved.append(d)
        self._checkRetrieved()
        return d

    def _checkRetrieved(self) -> None:
        if len(self.retrieved) >= len(self._zips):
            waiting, self._allRetrieved = self._allRetrieved, []
            for d in waiting:
                d.callback(None)

    def whenIdle(self) -> Deferred[None]:
        """
        Fire once no request is being answered (a client that went away
        counts as answered once its connection is closed here too).
        """
        d: Deferred[None] = Deferred()
        if self.active:
            self._idle.append(d)
        else:
            d.callback(None)
        return d

    def whenRequested(self, count: int) -> Deferred[None]:
        """
        Fire once C{count} requests in all have arrived.
        """
        d: Deferred[None] = Deferred()
        self._waiting.append((count, d))
        self._notify()
        return d

    def _notify(self) -> None:
        due = [(n, d) for n, d in self._waiting if n <= len(self.requests)]
        self._waiting = [(n, d) for n, d in self._waiting if n > len(self.requests)]
        for _, d in due:
            d.callback(None)

    def render_GET(self, request: Request):
        args: dict[bytes, list[bytes]] = request.args or {}
        self.requests.append(
            {k.decode(): v[0].decode("utf-8", "surrogateescape") for k, v in args.items()}
        )
        self.ids.append(args.get(b"id", [b""])[0])
        if self._credentials is not None:
            return self._announced(request, *self._credentials)
        behaviour = self.script.pop(0) if self.script else self.default
        self.active += 1
        self.peakActive = max(self.peakActive, self.active)

        def finished(_):
            self.active -= 1
            if not self.active:
                idle, self._idle = self._idle, []
                for d in idle:
                    d.callback(None)

        request.notifyFinish().addBoth(finished)
        self._reactor.callLater(0, self._notify)
        if isinstance(behaviour, Serve):
            request.setResponseCode(behaviour.status)
            for name, value in behaviour.headers:
                request.setHeader(name, value)
            request.setHeader(b"Content-Type", b"application/zip")
            if behaviour.chunked:
                request.write(behaviour.body)
                request.finish()
                return NOT_DONE_YET
            return behaviour.body
        if isinstance(behaviour, Truncate):
            request.setHeader(b"Content-Length", b"%d" % len(behaviour.body))
            request.write(behaviour.body[: behaviour.sent])
            request.loseConnection()
            return NOT_DONE_YET
        if isinstance(behaviour, Stream):
            request.setHeader(b"Content-Length", b"%d" % len(behaviour.body))
            _Streamer(self, request, behaviour)
            return NOT_DONE_YET
        if isinstance(behaviour, Redirect):
            request.setResponseCode(302)
            request.setHeader(b"Location", behaviour.location(request.uri))
            return b""
        if isinstance(behaviour, Trickle):
            self._trickle(request, behaviour.interval)
            return NOT_DONE_YET
        return NOT_DONE_YET

    def _announced(self, request: Request, user: bytes, password: bytes) -> bytes:
        args: dict[bytes, list[bytes]] = request.args or {}
        if args.get(b"user") != [user] or args.get(b"pass") != [password]:
            request.setResponseCode(403)
            return b"bad user or password\n"
        ident = (args.get(b"id") or [b""])[0]
        data = self._zips.get(ident)
        if data is None:
            request.setResponseCode(404)
            return b"no such MMS\n"
        request.setHeader(b"Content-Type", b"application/zip")
        name = ident.decode("utf-8", "replace")
        self.retrieved[name] = self.retrieved.get(name, 0) + 1
        self._checkRetrieved()
        return data

    def _trickle(self, request: Request, interval: float) -> None:
        """
        A zip's first bytes, then C{x}s, one every C{interval} seconds until
        the request is finished (the client went); each request its own.
        """
        body = iter(b"PK\x03\x04")
        trickle = LoopingCall(lambda: request.write(bytes([next(body, ord("x"))])))
        trickle.clock = self._reactor
        request.notifyFinish().addBoth(lambda _: trickle.stop())
        trickle.start(interval, now=True)


@implementer(IPushProducer)
class _Streamer:
    """
    Writes a L{Stream}'s body one chunk per turn of the reactor while the
    connection is not paused.
    """

    def __init__(self, resource: RetrieveMMS, request: Request, stream: Stream) -> None:
        self._resource = resource
        self._request = request
        self._stream = stream
        self._paused = False
        self._done = False
        self._call: IDelayedCall | None = None
        resource.sent = 0
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(lambda _: self.stopProducing())
        self._schedule()

    def _schedule(self) -> None:
        if self._call is None and not (self._paused or self._done):
            self._call = self._resource._reactor.callLater(0, self._write)

    def _write(self) -> None:
        self._call = None
        sent = self._resource.sent
        piece = self._stream.body[sent : sent + self._stream.chunk]
        self._resource.sent += len(piece)
        if self._resource.sent >= len(self._stream.body):
            self._done = True
            self._request.unregisterProducer()
            self._request.write(piece)
            self._request.finish()
            return
        self._request.write(piece)
        self._schedule()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self._done = True
        if self._call is not None:
            self._call.cancel()
            self._call = None


class QuietSite(Site):
    """
    A site without an access log: the stand-in plays MX Telecom's side, and
    its access log would show the password that the tests check mxrecv
    never logs.
    """

    noisy = False

    def log(self, request: http.Request) -> None:
        pass
