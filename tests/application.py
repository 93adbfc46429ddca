"""
The customer's application, as mxrecv's C{url} target meets it: a web
resource on 127.0.0.1 that answers each message as its script says (by
message id, then 200 for good) and keeps every request it received.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from attrs import field, frozen
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request


@frozen
class Answer:
    status: int = 200
    body: bytes = b"thanks"
    headers: Mapping[bytes, bytes] = field(factory=dict)


@frozen
class Received:
    """
    One request: when (by the application's C{clock}), the id in its
    C{message} field, the fields, the headers and the raw body.
    """

    at: float
    id: str
    fields: Mapping[bytes, Sequence[bytes]]
    headers: Mapping[bytes, bytes]
    body: bytes
    answer: Answer


class Application(Resource):
    isLeaf = True

    def __init__(
        self, clock: IReactorTime, script: Mapping[str, Sequence[Answer]] | None = None
    ) -> None:
        super().__init__()
        self._clock = clock
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.received: list[Received] = []
        self._waiting: list[tuple[int, Deferred[None]]] = []
        #: Set to keep answers back until L{release}.
        self.hold = False
        self._held: list[tuple[Request, bytes]] = []

    def accepted(self) -> list[str]:
        """
        The ids answered with a 2xx, in order.
        """
        return [r.id for r in self.received if 200 <= r.answer.status < 300]

    def whenReceived(self, count: int) -> Deferred[None]:
        """
        Fires once C{count} requests have been received.
        """
        d: Deferred[None] = Deferred()
        self._waiting.append((count, d))
        self._notify()
        return d

    def release(self) -> None:
        """
        Answer the requests held back, and those to come at once.
        """
        self.hold = False
        held, self._held = self._held, []
        for request, body in held:
            if request.channel is not None:
                request.write(body)
                request.finish()

    def render_POST(self, request: Request) -> bytes | int:
        request.content.seek(0)
        body = request.content.read()
        fields = dict(request.args or {})
        messageId = json.loads(fields[b"message"][0])["id"]
        script = self.script.get(messageId)
        answer = script.pop(0) if script else Answer()
        headers = {k.lower(): v[0] for k, v in request.requestHeaders.getAllRawHeaders()}
        self.received.append(
            Received(self._clock.seconds(), messageId, fields, headers, body, answer)
        )
        request.setResponseCode(answer.status)
        for name, value in answer.headers.items():
            request.setHeader(name, value)
        # Once the answer is written.
        reactor.callLater(0, self._notify)
        if self.hold:
            self._held.append((request, answer.body))
            return NOT_DONE_YET
        return answer.body

    def _notify(self) -> None:
        for entry in list(self._waiting):
            count, d = entry
            if len(self.received) >= count:
                self._waiting.remove(entry)
                d.callback(None)
