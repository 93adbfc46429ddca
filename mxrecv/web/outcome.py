# -*- test-case-name: tests.test_metrics -*-
"""
What became of one callback: the record behind its log event and its
metrics, so that the two always agree.
"""

from __future__ import annotations

from attrs import frozen


@frozen
class CallbackOutcome:
    """
    One answered callback.

    @ivar id: the message id, L{None} if the request was refused before its
        parameters were read (413, 408, 404, 405, 400).
    @ivar type: C{"sms"}, C{"mms"}, or L{None} when unknown.
    @ivar mode: C{"get"} or C{"post"}: how MX Telecom sent it.
    @ivar status: the HTTP status of the answer.
    @ivar bytes: request body bytes received.
    @ivar ack_seconds: from the request's headers to its answer.
    @ivar client: the client's IP address, if it has one.
    @ivar duplicate: an id accepted before (answered 200, not stored again).
    @ivar reason: for a refusal, why.
    """

    id: str | None
    type: str | None
    mode: str
    status: int
    bytes: int
    ack_seconds: float
    client: str | None
    duplicate: bool = False
    reason: str | None = None

    def fields(self) -> dict[str, object]:
        """
        The fields of the callback's structured log event.
        """
        return {
            "id": self.id,
            "type": self.type,
            "mode": self.mode,
            "status": self.status,
            "bytes": self.bytes,
            "ack_seconds": round(self.ack_seconds, 6),
            "client": self.client,
            "duplicate": self.duplicate,
            "reason": self.reason,
        }


def modeOf(method: bytes) -> str:
    """
    The C{mode} of a request with C{method}: C{get}, C{post}, or C{other}.
    """
    return {b"GET": "get", b"POST": "post"}.get(method, "other")
