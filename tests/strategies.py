"""
Hypothesis strategies for MX Telecom's callbacks: ids, dates, parameter sets.
"""

from __future__ import annotations

from datetime import datetime

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mxrecv.message.params import LIMITS, MAX_RECIPIENTS
from mxrecv.testing.zips import zipOf

__all__ = ["zipOf"]

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


# Multipart bodies and zips (POST mode), used by tests.test_multipart,
# tests.test_unpack and tests.test_post.

# Characters RFC 2046 allows in a boundary (bchars, no trailing space).
_BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?"
boundaries = st.text(alphabet=_BCHARS, min_size=1, max_size=70)

# Field names and values as they appear in a form: names without quotes,
# CR or LF (browsers escape those), values any bytes.
fieldNames = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='"\\'),
    min_size=1,
    max_size=20,
).filter(lambda n: n != "mms.zip")
fieldValues = st.binary(max_size=200)


def contentTypeFor(boundary: str) -> bytes:
    """
    The C{Content-Type} value of a multipart body; the boundary is quoted,
    as it must be when it holds characters such as C{/}, C{=} or C{?}.
    """
    return b'multipart/form-data; boundary="%s"' % boundary.encode()


def multipartBody(
    boundary: str,
    fields: list[tuple[str, bytes]],
    file: bytes | None = None,
    fileName: str = "mms.zip",
) -> bytes:
    """
    A C{multipart/form-data} body as a browser or curl writes it.
    """
    out = []
    b = boundary.encode()
    for name, value in fields:
        out.append(
            b"--" + b + b"\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n"
            % name.encode() + value + b"\r\n"
        )
    if file is not None:
        out.append(
            b"--" + b + b"\r\nContent-Disposition: form-data; name=\"%s\"; "
            b"filename=\"%s\"\r\nContent-Type: application/zip\r\n\r\n"
            % (fileName.encode(), fileName.encode()) + file + b"\r\n"
        )
    out.append(b"--" + b + b"--\r\n")
    return b"".join(out)


def _scrub(data: bytes, boundary: str) -> bytes:
    """
    C{data} without the delimiter of C{boundary}, which no client could
    send inside a part.
    """
    return data.replace(b"\r\n--" + boundary.encode(), b"\r\n-+" + boundary.encode())


@st.composite
def fileBytes(draw, boundary: str) -> bytes:
    """
    File data dense in CR, LF, dashes and pieces of C{boundary} (but never
    the whole delimiter).
    """
    pieces = st.sampled_from(
        [b"\r", b"\n", b"\r\n", b"-", b"--", b"\r\n--", boundary.encode()[:-1] or b"x"]
    )
    data = b"".join(draw(st.lists(st.one_of(pieces, st.binary(max_size=50)), max_size=40)))
    return _scrub(data, boundary)


@st.composite
def formSubmissions(draw, withFile: bool | None = None):
    """
    C{(boundary, fields, file)}: a boundary, a list of C{(name, value)}
    fields (names may repeat) and the bytes of the mms.zip part or L{None}.
    """
    boundary = draw(boundaries)
    fields = [
        (name, _scrub(value, boundary))
        for name, value in draw(st.lists(st.tuples(fieldNames, fieldValues), max_size=8))
    ]
    if withFile is None:
        withFile = draw(st.booleans())
    file = draw(fileBytes(boundary)) if withFile else None
    return boundary, fields, file


def splits(data: bytes):
    """
    C{data} cut into a list of chunks at arbitrary points.
    """
    return st.lists(st.integers(0, len(data)), max_size=20).map(
        lambda cuts: [data[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(data)])]
    )


# Zip entry names: ordinary ones and the hostile shapes.
entryNames = st.one_of(
    st.text(min_size=1, max_size=30),
    st.lists(
        st.sampled_from(["..", ".", "", "a", "b.txt", "C:", "\\..", "..\\x", ".hidden", "/"]),
        min_size=1,
        max_size=5,
    ).map("/".join),
)


def examples(strategy, count):
    """
    C{count} values drawn by hypothesis, for properties whose every example
    needs the reactor (hypothesis runs examples synchronously).
    """
    found = []

    @settings(max_examples=count, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value):
        found.append(value)

    collect()
    return found


# Any text, lone surrogates included: message.json is written with
# surrogatepass, so they can reach the encoder.
anyText = st.text(st.characters(blacklist_categories=()))
jsonValues = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | anyText,
    lambda children: st.lists(children, max_size=4)
    | st.tuples(children, children)
    | st.dictionaries(anyText, children, max_size=4),
    max_leaves=20,
)
