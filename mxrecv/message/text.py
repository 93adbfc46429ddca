# -*- test-case-name: tests.test_params -*-
"""
Decoding the text MX Telecom sends.

SMS text arrives as UTF-8 or as ISO-8859-15 (the character set MX Telecom's
SMS pages name).  Every byte sequence decodes under one of the two, and the
charset is recorded so that the exact bytes can be recovered by encoding the
text with it.
"""

from __future__ import annotations

UTF8 = "utf-8"
LATIN9 = "iso-8859-15"


def decodeText(data: bytes) -> tuple[str, str]:
    """
    Decode C{data} as UTF-8 when it is valid UTF-8, otherwise as ISO-8859-15.

    @return: the text and the name of the charset used.
    """
    try:
        return data.decode(UTF8), UTF8
    except UnicodeDecodeError:
        return data.decode(LATIN9), LATIN9


# Characters that must not reach a terminal or a line-oriented file raw:
# C0 and C1 controls and DEL (line breaks, escape sequences, NUL), the
# Unicode line and paragraph separators, the bidirectional embeddings,
# overrides and isolates (which reorder what is shown), and the lone
# surrogates that stand for bytes that were not UTF-8.
_CONTROLS = (
    *range(0x00, 0x20),
    *range(0x7F, 0xA0),
    0x2028,
    0x2029,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
    *range(0xDC80, 0xDD00),
)
_SHORT = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}


def _escape(c: int) -> str:
    if c in _SHORT:
        return _SHORT[c]
    if 0xDC80 <= c < 0xDD00:
        return f"\\x{c - 0xDC00:02x}"
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


_PRINTABLE = {c: _escape(c) for c in _CONTROLS}
_PRINTABLE_LINES = {c: e for c, e in _PRINTABLE.items() if c not in (0x09, 0x0A)}
# In JSON text: as JSON escapes, which keep the document valid and its
# values the same; its own layout (newlines, indentation) kept.
_PRINTABLE_JSON = {c: f"\\u{c:04x}" for c in _CONTROLS if c not in (0x09, 0x0A, 0x0D)}


def printable(text: str) -> str:
    """
    C{text} for human eyes (a log line, a terminal): control characters,
    line breaks and tabs included, written as escapes (C{\\n}, C{\\x1b},
    C{\\u202e}), so that what a client sent cannot forge a line or a column,
    nor drive the terminal.
    """
    return text if text.isprintable() else text.translate(_PRINTABLE)


def printableLines(text: str) -> str:
    """
    Like L{printable}, but keeping line breaks and tabs: for text whose
    lines are ours (a traceback, continued by indented lines).
    """
    return text if text.isprintable() else text.translate(_PRINTABLE_LINES)


def printableJSON(text: str) -> str:
    """
    JSON text for human eyes: its control characters written as JSON
    escapes, so that it stays the same JSON document.
    """
    return text.translate(_PRINTABLE_JSON)
