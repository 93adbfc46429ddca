# -*- test-case-name: tests.test_retrieve -*-
"""
One RetrieveMMS attempt: a treq GET whose body streams into
C{pending/NAME/mms.zip.part}, cut off at a deadline that covers the whole
body (and the writing of it) and at a byte cap, and its outcome as a
sentence made of what happened (a status, a kind of failure, of a redirect
only the scheme and host), never of anything derived from the request's URL,
which carries the password.

The reactor only counts the body and checks its first bytes; the bytes are
written and hashed in worker threads by a L{mxrecv.spool.writer.FileWriter} (the
server's, shared with the uploads), which pauses the response while it is
behind, so that a slow disk neither blocks the reactor nor fills memory.
An attempt settles only once its file is closed; a cancelled one fails at
once, and L{Fetcher.close} waits for the write it may still have in flight.

L{mxrecv.mms.retrieve} decides when attempts run and what becomes of the message.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from attrs import frozen
from OpenSSL import SSL
from service_identity import VerificationError
from treq.client import HTTPClient
from twisted.internet import error as netError
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IPushProducer, IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web import _newclient
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IPolicyForHTTPS
from zope.interface import implementer

from mxrecv.spool.layout import PARTIAL_ZIP
from mxrecv.spool.writer import FileWriter, FileWriters, Written

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


class RetrieveError(Exception):
    """
    One attempt failed.  C{str()} is the attempt's outcome, a sentence fit
    for logs and C{failed/NAME/message.json}: nothing in it is derived from
    the request's URL.

    @ivar kind: the attempt's outcome for the metrics: C{timeout},
        C{connection}, C{http_4xx}, C{http_5xx}, C{invalid} (not a zip, too
        large) or C{other}.
    @ivar refused: the server refused our credentials (HTTP 401 or 403).
    """

    def __init__(self, outcome: str, kind: str = "other", refused: bool = False) -> None:
        super().__init__(outcome)
        self.kind = kind
        self.refused = refused


@frozen
class Download:
    size: int
    sha256: str


# One attempt


def _statusOutcome(code: int, location: bytes | None) -> RetrieveError:
    if code in (401, 403):
        return RetrieveError(
            f"HTTP {code}: RetrieveMMS refused our credentials", "http_4xx", refused=True
        )
    if 300 <= code < 400:
        origin = redirectOrigin(location)
        where = f" to {origin}" if origin else ""
        return RetrieveError(f"HTTP {code}: redirect{where} not followed")
    kind = {4: "http_4xx", 5: "http_5xx"}.get(code // 100, "other")
    return RetrieveError(f"HTTP {code}", kind)


_SCHEME = re.compile(r"[a-z][a-z0-9+.-]{0,15}")
_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,62}\.?)*")


def redirectOrigin(location: bytes | None) -> str | None:
    """
    The scheme and host of a redirect's C{Location}, and nothing else of it:
    its path and query may be derived from our request (a login page's
    C{return_to=} our URL, encoded once more), and so hold the password
    in a form no masking would recognise.  L{None} when the location has
    no scheme and host (a relative one) or when they are not plainly a
    scheme and a host name or address.
    """
    if not location:
        return None
    try:
        parts = urlsplit(location.decode("ascii"))
        host = parts.hostname
    except (UnicodeDecodeError, ValueError):
        return None
    scheme = parts.scheme.lower()
    if not host or not _SCHEME.fullmatch(scheme) or len(host) > 253:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not _HOST_NAME.fullmatch(host):
            return None
        return f"{scheme}://{host}"
    return f"{scheme}://[{address}]" if address.version == 6 else f"{scheme}://{address}"


# What a request that got no response met, named by its type: the messages
# of these exceptions may quote what the server sent back, which may quote
# our request.
_NO_RESPONSE = {
    netError.ConnectionDone: "connection closed before a response",
    netError.ConnectionLost: "connection lost before a response",
    _newclient.ParseError: "malformed response",
}


def _requestOutcome(reason: Failure) -> RetrieveError:
    """
    A sentence for a request that got no usable response, made of what
    kind of failure it was, never of its message.
    """
    if reason.check(netError.ConnectionRefusedError):
        return RetrieveError("connection refused", "connection")
    if reason.check(netError.DNSLookupError):
        return RetrieveError("host name not found", "connection")
    if reason.check(netError.TimeoutError):
        return RetrieveError("connection timed out", "timeout")
    if reason.check(netError.ConnectError):
        # Made of the OS's error for the connection: no part of the URL.
        return RetrieveError(f"cannot connect: {reason.getErrorMessage()}", "connection")
    inner = getattr(reason.value, "reasons", None) or []
    for f in inner:
        if f.check(VerificationError):
            return RetrieveError("TLS handshake failed: the certificate does not name the host", "connection")
        if f.check(SSL.Error):
            return RetrieveError(f"TLS handshake failed: {_tlsReason(f.value)}", "connection")
    if inner:
        what = sorted({_NO_RESPONSE.get(f.type) or f"no response ({f.type.__name__})" for f in inner})
        return RetrieveError(", ".join(what), "connection")
    return RetrieveError(f"request failed ({reason.type.__name__})")


def _tlsReason(e: BaseException) -> str:
    text = str(e)
    match = re.search(r"'([^']*verify[^']*)'|(certificate verify failed|hostname mismatch)", text)
    return match.group(1) or match.group(2) if match else text[:200]


class _Pool(HTTPConnectionPool):
    """
    A pool that does not keep a connection that is closing.

    An attempt that refuses an answer (an error status, a body that is not
    a zip, too large) stops reading it (C{stopProducing}), which closes the
    connection; when the body's last bytes are already in, Twisted's
    client sees the answer complete and hands the connection back to the
    pool all the same.  The next attempt would then write its request on
    it, the server would get it, the connection would close before the
    answer, and the client would send the request again on a new one: two
    requests per attempt.
    """

    def _putConnection(self, key: Any, connection: Any) -> None:
        transport = connection.transport
        while transport is not None:
            # TLS wraps the TCP connection: either may be the one closing.
            if getattr(transport, "disconnecting", False):
                return
            transport = getattr(transport, "transport", None)
        super()._putConnection(key, connection)


class Fetcher:
    """
    Downloads from RetrieveMMS, one attempt per call, over its own
    connection pool.

    @param reactor: makes connections: an L{IReactorTCP} that is also an
        L{IReactorTime}, as Twisted's C{HostnameEndpoint} needs.
    @param clock: times the attempts' deadlines.
    @param maxBody: the largest zip accepted, in bytes.
    @param writers: write and hash the downloads (the server's, so that
        uploads and downloads share one memory bound).
    """

    def __init__(
        self,
        *,
        reactor: IReactorTCP,
        clock: IReactorTime,
        url: str,
        user: str,
        password: str,
        maxBody: int,
        connectTimeout: float,
        policy: IPolicyForHTTPS,
        writers: FileWriters,
        concurrency: int = 8,
    ) -> None:
        self.url = url
        self._writers = writers
        # Fire once the file of an attempt is closed, for the attempts whose
        # file is open.
        self._files: set[Deferred[None]] = set()
        self._user = user
        self._password = password
        self._clock = clock
        self._maxBody = maxBody
        self._pool = _Pool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = concurrency
        agent = Agent(
            reactor, contextFactory=policy, connectTimeout=connectTimeout, pool=self._pool
        )
        self._http = HTTPClient(agent)

    def fetch(self, messageId: bytes, part: Path, deadline: float) -> Deferred[Download]:
        """
        Download the zip of C{messageId} (the id's bytes as MX Telecom sent
        them) into C{part} (replaced if it exists), by C{deadline} (on the
        clock).  C{part} may be left behind,
        complete or not, either way, but closed: no worker writes to it once
        the result has fired.

        @return: fires with the zip's size and hash, or fails with
            L{RetrieveError}; cancelling it abandons the attempt (the
            result fails at once; a write already running in a worker may
            finish after it, see L{close}).
        """
        return _Attempt(self, messageId, part, deadline).result

    def close(self) -> Deferred[None]:
        """
        Close the cached connections, once the files of the attempts
        (cancelled ones included) are closed.
        """
        files = DeferredList(list(self._files), consumeErrors=True)
        return files.addCallback(lambda _: self._pool.closeCachedConnections())

    def _opened(self, closed: Deferred[None]) -> None:
        self._files.add(closed)
        closed.addBoth(lambda result: (self._files.discard(closed), result)[1])


class _Attempt:
    def __init__(self, fetcher: Fetcher, messageId: bytes, part: Path, deadline: float) -> None:
        self._fetcher = fetcher
        self._part = part
        self._body: _BodyFile | None = None
        self._error: RetrieveError | CancelledError | None = None
        self.result: Deferred[Download] = Deferred(lambda d: self._stop(CancelledError()))
        clock = fetcher._clock
        timeout = max(0.0, deadline - clock.seconds())
        self._timer = clock.callLater(
            timeout, self._stop, RetrieveError(f"timed out after {round(timeout, 1):g} s", "timeout")
        )
        self._request = fetcher._http.get(
            fetcher.url,
            params=[("user", fetcher._user), ("pass", fetcher._password), ("id", messageId)],
            headers=Headers({b"User-Agent": [b"mxrecv"]}),
            allow_redirects=False,
            unbuffered=True,
        )
        self._request.addCallbacks(self._response, self._noResponse)

    def _stop(self, error: RetrieveError | CancelledError) -> None:
        if self._error is not None or self.result.called:
            return
        self._error = error
        if self._body is not None:
            self._body.stop()
        else:
            self._request.cancel()

    def _response(self, response: Any) -> None:
        if response.code != 200:
            location = response.headers.getRawHeaders(b"location", [None])[0]
            self._error = self._error or _statusOutcome(response.code, location)
            response.deliverBody(_BodyFile(self, None, 0))
            return
        cap = self._fetcher._maxBody
        if response.length is not UNKNOWN_LENGTH and response.length > cap:
            self._error = RetrieveError(f"body larger than {cap} bytes", "invalid")
            response.deliverBody(_BodyFile(self, None, 0))
            return
        self._body = _BodyFile(self, self._part, cap)
        response.deliverBody(self._body)
        self._body.delivered()

    def _noResponse(self, reason: Failure) -> None:
        self._settle(self._error or _requestOutcome(reason))

    def _settle(self, outcome: Download | RetrieveError | CancelledError) -> None:
        if self._timer.active():
            self._timer.cancel()
        if self.result.called:
            return
        if isinstance(outcome, Download):
            self.result.callback(outcome)
        else:
            self.result.errback(outcome)


def _writeError(e: BaseException) -> RetrieveError:
    reason = getattr(e, "strerror", None) or str(e)
    return RetrieveError(f"cannot write {PARTIAL_ZIP}: {reason}")


@implementer(IPushProducer)
class _BodyFile(Protocol):
    """
    Streams a response body into a file through a L{FileWriter} (which
    writes and hashes it in its workers), counting it, refusing more than
    C{cap} bytes and anything that does not start like a zip.  With C{path}
    L{None}, the body is dropped at once.

    It is the writer's producer: it pauses the response's transport while
    the writer is behind.

    @ivar closed: fires once the file is closed (or was never opened).
    """

    def __init__(self, attempt: _Attempt, path: Path | None, cap: int) -> None:
        self._attempt = attempt
        self._path = path
        self._cap = cap
        self._writer: FileWriter | None = None
        self._aborted = False
        self._paused = False
        self._head = b""
        self._download: Download | None = None
        self.size = 0
        self.closed: Deferred[None] = Deferred()

    # IPushProducer, for the writer

    def pauseProducing(self) -> None:
        self._paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    def delivered(self) -> None:
        """
        C{deliverBody} has returned.  It resumes the transport whatever
        happened during the delivery of the bytes it had buffered, so a
        pause asked for by the writer then is asked for again.
        """
        if self._paused:
            self.transport.pauseProducing()

    # The body

    def connectionMade(self) -> None:
        if self._path is None:
            self.transport.stopProducing()
            self._fileClosed()
            return
        try:
            self._writer = self._attempt._fetcher._writers.open(self._path, self, replace=True)
        except OSError as e:
            self._fileClosed()
            self._attempt._stop(_writeError(e))
            return
        self._attempt._fetcher._opened(self.closed)

    def dataReceived(self, data: bytes) -> None:
        if self._writer is None or self._aborted or self._attempt._error is not None:
            return
        self.size += len(data)
        if self.size > self._cap:
            self._attempt._stop(RetrieveError(f"body larger than {self._cap} bytes", "invalid"))
            return
        if len(self._head) < 4:
            self._head = (self._head + data)[:4]
            if len(self._head) == 4 and self._head not in _ZIP_MAGIC:
                self._attempt._stop(RetrieveError("HTTP 200 but the body is not a zip", "invalid"))
                return
        try:
            self._writer.write(data)
        except OSError as e:
            self._attempt._stop(_writeError(e))

    def stop(self) -> None:
        """
        Abandon the body: stop receiving it and abort the writer (what it
        buffers is dropped; its file is closed once a write in flight ends).
        """
        self.transport.stopProducing()
        self._abort()

    def connectionLost(self, reason: Failure = None) -> None:
        attempt = self._attempt
        if attempt._error is None and self._writer is not None:
            if not reason.check(ResponseDone, PotentialDataLoss):
                attempt._error = RetrieveError(
                    f"body cut short after {self.size} bytes", "connection"
                )
            elif not self._aborted:
                self._writer.close().addCallbacks(self._written, self._notWritten)
        if attempt._error is not None:
            self._abort()
        # Settled once the file is closed, so that no worker writes to it
        # after the attempt (and the part can be removed).
        self.closed.addCallback(lambda _: attempt._settle(attempt._error or self._download))

    def _written(self, written: Written) -> None:
        self._download = Download(written.size, written.sha256)
        self._fileClosed()

    def _notWritten(self, reason: Failure) -> None:
        if reason.check(CancelledError):
            # Aborted while closing: the abort fires closed.
            return
        self._attempt._error = self._attempt._error or _writeError(reason.value)
        self._fileClosed()

    def _abort(self) -> None:
        if self._aborted:
            return
        self._aborted = True
        if self._writer is None:
            self._fileClosed()
        else:
            self._writer.abort().addCallback(lambda _: self._fileClosed())

    def _fileClosed(self) -> None:
        if not self.closed.called:
            self.closed.callback(None)
