# -*- test-case-name: tests.test_deliver,tests.test_deliver_webhook -*-
"""
The C{url} target: POST each message to C{[deliver] url}; the answer says how
it went (L{mxrecv.deliver.policy.httpOutcome}).

The body is C{multipart/form-data} (L{mxrecv.deliver.form}): C{message.json}
in the field C{message}, each unpacked part of an MMS in a field C{part}
(its file name the part's name, its Content-Type the part's
C{content_type}, or C{application/octet-stream} if that is not a plain
media type).  Every request carries the Standard Webhooks headers
(L{mxrecv.deliver.signature}): C{webhook-id}, the application's idempotency
key, and C{webhook-timestamp} always, C{webhook-signature} with a
C{secret_file}.

An MMS is read twice: once in a worker thread (with C{message.json}, so
that no file is read on the reactor's thread), to sign it and learn its
length, then as it is sent, checked against the first reading (a file that
changed in between fails the attempt rather than send a body that does not
match its signature).  Only the first L{ANSWER_HEAD} bytes of the answer are
read.  Redirects are not followed; C{https://} is verified
(L{mxrecv.tls.client}).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from attrs import frozen
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReactorFromThreads,
    IReactorTime,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import CooperativeTask, TaskStopped, cooperate
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from mxrecv.deliver.form import FormBody, FormField
from mxrecv.deliver.identity import deliveryId
from mxrecv.deliver.interfaces import ITarget
from mxrecv.deliver.outcome import Outcome, PermanentFailure, TemporaryFailure
from mxrecv.deliver.policy import ANSWER_HEAD, httpOutcome, parseRetryAfter
from mxrecv.deliver.signature import Signing
from mxrecv.message.model import decodeJSON
from mxrecv.mms.unpack import OCTET_STREAM, mediaType
from mxrecv.spool.layout import MESSAGE_JSON

log = Logger()

USER_AGENT = b"mxrecv"


class BodyChanged(Exception):
    """
    A file of the message changed between its signing and its sending.
    """


def messageForm(directory: Path) -> tuple[str, FormBody]:
    """
    The message's id and the body that delivers it (reads C{message.json}).

    @raise OSError: if C{message.json} cannot be read.
    @raise ValueError: if it is not a message.
    """
    data = (directory / MESSAGE_JSON).read_bytes()
    document = decodeJSON(data)
    messageId = document["id"]
    if not isinstance(messageId, str):
        raise ValueError(f"its id is {messageId!r}")
    fields = [FormField("message", MESSAGE_JSON, "application/json", data=data)]
    for part in document.get("parts") or []:
        kind = mediaType(part["content_type"]) or OCTET_STREAM
        fields.append(FormField("part", part["name"], kind, path=directory / part["path"]))
    return messageId, FormBody.withRandomBoundary(fields)


def readBody(body: FormBody, signing: Signing | None) -> tuple[int, bytes]:
    """
    Read C{body} through, signing it: its length and SHA-256 (blocking).
    """
    length, digest = 0, hashlib.sha256()
    for chunk in body.chunks():
        length += len(chunk)
        digest.update(chunk)
        if signing is not None:
            signing.update(chunk)
    return length, digest.digest()


@implementer(IBodyProducer)
class SignedBodyProducer:
    """
    Sends C{body} as read before (C{length} bytes of SHA-256 C{digest}), a
    piece per turn of the reactor; fails with L{BodyChanged} if it reads
    otherwise now, before its last piece goes (so that the application never
    gets a whole body that does not match its signature).
    """

    def __init__(
        self,
        body: FormBody,
        length: int,
        digest: bytes,
        cooperator: Callable[[Iterator[None]], CooperativeTask] = cooperate,
    ) -> None:
        self._body = body
        self.length = length
        self._digest = digest
        self._cooperate = cooperator
        self._task: CooperativeTask | None = None
        self._chunks: Iterator[bytes] | None = None

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._task = self._cooperate(self._produce(consumer))
        d = self._task.whenDone()
        return d.addBoth(self._closed)

    def _produce(self, consumer: IConsumer) -> Iterator[None]:
        self._chunks = self._body.chunks()
        length, digest = 0, hashlib.sha256()
        held = b""
        for chunk in self._chunks:
            length += len(chunk)
            digest.update(chunk)
            if length > self.length:
                raise BodyChanged(f"longer than the {self.length} bytes signed")
            if held:
                consumer.write(held)
                yield None
            held = chunk
        if length != self.length or digest.digest() != self._digest:
            raise BodyChanged("a file of the message changed while it was being sent")
        consumer.write(held)

    def _closed(self, result: Any) -> Any:
        if self._chunks is not None:
            self._chunks.close()  # type: ignore[attr-defined]
        if isinstance(result, Failure):
            if result.check(TaskStopped):
                # The request stopped us (as FileBodyProducer): its own
                # failure says why.
                return Deferred()
            return result
        return None

    def pauseProducing(self) -> None:
        if self._task is not None:
            self._task.pause()

    def resumeProducing(self) -> None:
        if self._task is not None:
            self._task.resume()

    def stopProducing(self) -> None:
        if self._task is not None:
            try:
                self._task.stop()
            except Exception:
                # Already done or stopped.
                pass


@frozen
class _Reading:
    """
    A message read through: what its request needs.
    """

    webhookId: str
    body: FormBody
    length: int
    digest: bytes
    signature: str | None


class _Head(Protocol):
    """
    Keeps the first C{limit} bytes of a body and drops the connection
    there, or at C{deadline}; fires C{done} with them.
    """

    def __init__(self, limit: int, clock: IReactorTime, timeout: float) -> None:
        self.limit = limit
        self.data = b""
        self.done: Deferred[bytes] = Deferred()
        self._timer: IDelayedCall = clock.callLater(timeout, self._stop)

    def dataReceived(self, data: bytes) -> None:
        self.data += data[: self.limit - len(self.data)]
        if len(self.data) >= self.limit:
            self._stop()

    def _stop(self) -> None:
        if self.transport is not None:
            # A response's body comes through a producer.
            IPushProducer(self.transport).stopProducing()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._timer.active():
            self._timer.cancel()
        self.done.callback(self.data)


@implementer(ITarget)
class WebhookTarget:
    """
    POST each message to C{url} with C{client}.

    @param secret: the key that signs the requests, if any.
    @param reactor: runs the first reading of each message in C{pool}.
    @param clock: the time of C{webhook-timestamp} and of the timeouts.
    @param timeout: seconds an attempt may take to get its answer's
        headers, and then the first bytes of its body.
    """

    name = "url"

    def __init__(
        self,
        url: str,
        *,
        client: HTTPClient,
        clock: IReactorTime,
        timeout: float,
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        secret: bytes | None = None,
        cooperator: Callable[[Iterator[None]], CooperativeTask] = cooperate,
    ) -> None:
        self._url = url.encode("ascii")
        self._client = client
        self._clock = clock
        self._timeout = timeout
        self._secret = secret
        self._reactor = reactor
        self._pool = pool
        self._cooperator = cooperator

    def deliver(self, directory: Path) -> Deferred[Outcome]:
        timestamp = int(self._clock.seconds())
        d = deferToThreadPool(self._reactor, self._pool, self._read, directory, timestamp)

        def read(reading: _Reading | Outcome) -> Deferred[Outcome]:
            if not isinstance(reading, _Reading):
                return succeed(reading)
            headers = Headers(
                {
                    b"Content-Type": [reading.body.contentType],
                    b"User-Agent": [USER_AGENT],
                    b"webhook-id": [reading.webhookId.encode("ascii")],
                    b"webhook-timestamp": [str(timestamp).encode("ascii")],
                }
            )
            if reading.signature is not None:
                headers.setRawHeaders(b"webhook-signature", [reading.signature.encode("ascii")])
            producer = SignedBodyProducer(
                reading.body, reading.length, reading.digest, self._cooperator
            )
            try:
                request = self._client.request(
                    "POST",
                    self._url,
                    data=producer,
                    headers=headers,
                    timeout=self._timeout,
                    allow_redirects=False,
                    unbuffered=True,
                )
            except Exception:
                return succeed(_bug(directory))
            return request.addCallbacks(self._answered, _noAnswer)

        def unread(reason: Failure) -> Outcome:
            if reason.check(OSError):
                return _unreadable(reason.value)
            return _bug(directory, reason)

        return d.addCallbacks(read, unread)

    def _read(self, directory: Path, timestamp: int) -> _Reading | Outcome:
        """
        Read the message through, signing it (blocking: in the pool).

        @raise OSError: if a part's file cannot be read.
        """
        try:
            messageId, body = messageForm(directory)
        except (OSError, ValueError, KeyError, TypeError) as e:
            return _unreadable(e)
        webhookId = deliveryId(messageId)
        signing = None if self._secret is None else Signing(self._secret, webhookId, timestamp)
        length, digest = readBody(body, signing)
        return _Reading(
            webhookId, body, length, digest, None if signing is None else signing.signature()
        )

    def _answered(self, response: Any) -> Deferred[Outcome]:
        retryAfter = parseRetryAfter(
            response.headers.getRawHeaders(b"retry-after", [None])[0], self._clock.seconds()
        )
        head = _Head(ANSWER_HEAD, self._clock, self._timeout)
        response.deliverBody(head)
        return head.done.addCallback(lambda body: httpOutcome(response.code, body, retryAfter))


def _unreadable(e: BaseException) -> Outcome:
    """
    The message's files cannot be read, or message.json is not what mxrecv
    writes: this message cannot be sent.
    """
    return PermanentFailure(f"cannot make the request: {type(e).__name__}: {e}")


def _bug(directory: Path, reason: Failure | None = None) -> Outcome:
    """
    A bug: logged with its traceback, and the message dead lettered like any
    other that cannot be sent.
    """
    log.failure("Making the request for {directory} failed", reason, directory=str(directory))
    return PermanentFailure("cannot make the request: internal error (logged)")


def _noAnswer(reason: Failure) -> Outcome:
    return TemporaryFailure(f"no answer: {_reason(reason)}")


def _reason(reason: Failure) -> str:
    """
    A sentence for a request that got no answer; what treq's
    C{ResponseFailed} wraps, rather than its list of failures.
    """
    inner = getattr(reason.value, "reasons", None)
    if inner:
        return "; ".join(_reason(f) for f in inner)
    return reason.getErrorMessage() or reason.type.__name__
