# -*- test-case-name: tests.test_deliver -*-
"""
The C{url} target: POST each message to C{[deliver] url}; the answer says how
it went (L{mxrecv.deliver.policy.httpOutcome}).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import IO, Any

from treq.client import HTTPClient
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mxrecv.deliver.interfaces import ITarget
from mxrecv.deliver.outcome import Outcome, PermanentFailure, TemporaryFailure
from mxrecv.deliver.policy import ANSWER_HEAD, httpOutcome, parseRetryAfter
from mxrecv.mms.unpack import OCTET_STREAM, mediaType
from mxrecv.spool.layout import MESSAGE_JSON

log = Logger()


@implementer(ITarget)
class WebhookTarget:
    """
    POST the message to C{url} as multipart/form-data: C{message.json} in
    the field C{message}, each unpacked part of an MMS in a field C{part}
    (its file name the part's name, its Content-Type the part's
    C{content_type}, or C{application/octet-stream} if that is not a plain
    media type).

    A request that cannot even be made (a part file gone, a message.json
    the application rewrote) is a permanent failure: that message is
    broken, the next ones are not.
    """

    name = "url"

    def __init__(
        self, url: str, *, client: HTTPClient, clock: IReactorTime, timeout: float
    ) -> None:
        self._url = url
        self._client = client
        self._clock = clock
        self._timeout = timeout

    def deliver(self, directory: Path) -> Deferred[Outcome]:
        opened: list[IO[bytes]] = []

        def close(result: object) -> object:
            for f in opened:
                f.close()
            return result

        try:
            document = (directory / MESSAGE_JSON).read_bytes()
            files: list[Any] = [
                ("message", (MESSAGE_JSON, "application/json", io.BytesIO(document)))
            ]
            for part in json.loads(document).get("parts") or []:
                f = (directory / part["path"]).open("rb")
                opened.append(f)
                kind = mediaType(part["content_type"]) or OCTET_STREAM
                files.append(("part", (part["name"], kind, f)))
            # treq encodes the body's headers here, synchronously.
            d = self._client.post(self._url, files=files, timeout=self._timeout)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            # The message's files cannot be read, or message.json is not
            # what mxrecv writes.
            close(None)
            return succeed(PermanentFailure(f"cannot make the request: {type(e).__name__}: {e}"))
        except Exception:
            # A bug: logged with its traceback, and the message is dead
            # lettered like any other that cannot be sent.
            close(None)
            log.failure("Making the request for {directory} failed", directory=str(directory))
            return succeed(PermanentFailure("cannot make the request: internal error (logged)"))
        except BaseException:
            close(None)
            raise
        d.addCallbacks(self._answered, _noAnswer)
        return d.addBoth(close)

    def _answered(self, response: Any) -> Deferred[Outcome]:
        retryAfter = parseRetryAfter(
            response.headers.getRawHeaders(b"retry-after", [None])[0], self._clock.seconds()
        )
        d = response.content()
        d.addCallback(lambda body: httpOutcome(response.code, body[:ANSWER_HEAD], retryAfter))
        return d.addErrback(_noAnswer)


def _noAnswer(reason: Failure) -> Outcome:
    return TemporaryFailure(f"no answer: {reason.getErrorMessage() or reason.type.__name__}")
