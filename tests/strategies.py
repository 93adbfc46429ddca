"""
Hypothesis strategies for MX Telecom's callbacks: ids, dates, parameter sets.
"""

from __future__ import annotations

from datetime import datetime

from hypothesis import strategies as st

from mxrecv.params import LIMITS, MAX_RECIPIENTS

# Any id MX Telecom could send, as text (a decoded query string never holds
# lone surrogates).
messageIds = st.text(min_size=1)


def _textValue(name: bytes, max_size: int = 40):
    """
    A valid non-empty value of parameter C{name}: UTF-8 text within its limit.
    """
    return (
        st.text(min_size=1, max_size=max_size)
        .map(lambda t: t.encode("utf-8"))
        .filter(lambda b: len(b) <= LIMITS[name])
    )


@st.composite
def mxDates(draw) -> str:
    moment = draw(st.datetimes(min_value=datetime(2000, 1, 1)))
    suffix = draw(st.sampled_from(["", " +0000", "+0100", " -05:30", "Z"]))
    return moment.strftime("%Y-%m-%d %H:%M:%S") + suffix


@st.composite
def callbackParams(draw) -> dict[bytes, list[bytes]]:
    """
    A valid parameter set for an SMS or an MMS notification, as twisted.web
    gives them (names to lists of raw values).
    """
    kind = draw(st.sampled_from([b"2", b"6"]))
    params: dict[bytes, list[bytes]] = {
        b"id": [draw(_textValue(b"id"))],
        b"from": [draw(_textValue(b"from"))],
        b"to": draw(st.lists(_textValue(b"to"), min_size=1, max_size=5)),
        b"date": [draw(mxDates()).encode()],
        b"type": [kind],
    }
    if draw(st.booleans()):
        params[b"network"] = [draw(_textValue(b"network"))]
    if kind == b"6":
        if draw(st.booleans()):
            params[b"message"] = [draw(st.binary(max_size=300))]
    else:
        params[b"cc"] = draw(st.lists(_textValue(b"cc"), max_size=MAX_RECIPIENTS // 20))
        if draw(st.booleans()):
            params[b"subject"] = [draw(_textValue(b"subject"))]
        if draw(st.booleans()):
            params[b"expiry"] = [draw(mxDates()).encode()]
    return params
