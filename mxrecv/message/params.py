# -*- test-case-name: tests.test_params -*-
"""
Validation of a callback's parameters into a L{Message}.

Pure: parameters in, a message or a L{BadParameter} out, so that every rule can
be property-tested without a server.  The same rules apply whichever way the
parameters arrived: the query string of a GET, or the body (form or multipart
fields) of a POST, never both (see L{mxrecv.web.body.BodyChooser}).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import tzinfo

from mxrecv.message.dates import parseDate
from mxrecv.message.model import MMS, SMS, Message
from mxrecv.message.text import decodeText

TYPES = {b"2": MMS, b"6": SMS}

# Longest accepted value of each parameter, in bytes, and most repeats of the
# repeatable ones.  Generous for what MX Telecom sends, small enough that one
# callback cannot make us hold much.
LIMITS = {
    b"id": 128,
    b"from": 256,
    b"to": 256,
    b"cc": 256,
    b"date": 40,
    b"expiry": 40,
    b"type": 8,
    b"network": 64,
    b"subject": 4096,
    b"message": 65536,
}
MAX_RECIPIENTS = 100
REQUIRED = (b"id", b"from", b"to", b"date", b"type")
REPEATABLE = (b"to", b"cc")
# Every name MX Telecom's callbacks use (the zip's too).
PARAMETERS = frozenset(LIMITS) | {b"mms.zip"}


class BadParameter(Exception):
    """
    A callback's parameter is missing or wrong; answered with 400.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name, reason)
        self.name = name
        self.reason = reason

    def __str__(self) -> str:
        return f"parameter {self.name!r}: {self.reason}"


Params = Mapping[bytes, Sequence[bytes]]


def _single(params: Params, name: bytes) -> bytes | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadParameter(name.decode(), "given more than once")
    return values[0]


def _text(value: bytes) -> str:
    return decodeText(value)[0]


def _check(params: Params) -> None:
    for name in REQUIRED:
        values = params.get(name)
        if not values or not any(values):
            raise BadParameter(name.decode(), "missing or empty")
    for name, limit in LIMITS.items():
        values = params.get(name, ())
        if name in REPEATABLE and len(values) > MAX_RECIPIENTS:
            raise BadParameter(name.decode(), f"more than {MAX_RECIPIENTS} values")
        for value in values:
            if len(value) > limit:
                raise BadParameter(name.decode(), f"longer than {limit} bytes")


def parseCallback(
    params: Params, *, delivery: str, received: str, zone: tzinfo
) -> Message:
    """
    Build the L{Message} that the callback C{params} describe.

    @param params: parameter names to lists of raw values, as
        C{twisted.web} gives them.
    @param delivery: C{"get"} or C{"post"}.
    @param received: when the callback arrived, ISO 8601 UTC.
    @param zone: the zone of dates sent without a UTC offset.
    @raise BadParameter: naming the first parameter that is wrong.
    """
    _check(params)
    kind = TYPES.get(_single(params, b"type"))
    if kind is None:
        raise BadParameter("type", "unknown type; expected 2 (MMS) or 6 (SMS)")
    date = _text(_single(params, b"date"))
    try:
        parseDate(date, zone)
    except ValueError as e:
        raise BadParameter("date", str(e)) from None
    expiry = _optional(params, b"expiry")
    if expiry is not None:
        try:
            parseDate(expiry, zone)
        except ValueError as e:
            raise BadParameter("expiry", str(e)) from None
    text = _single(params, b"message")
    message, charset = decodeText(text) if text is not None else (None, None)
    messageId, idCharset = decodeText(_single(params, b"id"))
    return Message(
        id=messageId,
        id_charset=idCharset,
        type=kind,
        sender=_text(_single(params, b"from")),
        to=tuple(_text(v) for v in params[b"to"] if v),
        cc=tuple(_text(v) for v in params.get(b"cc", ()) if v),
        date=date,
        network=_optional(params, b"network"),
        subject=_optional(params, b"subject"),
        message=message,
        charset=charset,
        expiry=expiry,
        delivery=delivery,
        received=received,
    )


def _optional(params: Params, name: bytes) -> str | None:
    value = _single(params, name)
    return _text(value) if value else None
