# -*- test-case-name: tests.test_naming -*-
"""
The spool's directory name for a message id.

The name must be safe whatever the id holds (no path separators, no leading
dot, no reserved names), the same for the same id (so that a retry of a
callback finds its first copy), and different for different ids.  Ids are
escaped rather than hashed where they are short enough, so that an operator
can still read them in a directory listing.
"""

from __future__ import annotations

import hashlib
import re

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

# Escaped names longer than this are shortened; the hashed form contains "~",
# which an escaped name never does (it would be written "=7E"), so the two
# forms cannot collide.
_MAX_ESCAPED = 120
# Most ids (MX Telecom's are digits) are their own name: skip the escaping.
_ALREADY_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,119}")
_ALREADY_SAFE_BYTES = re.compile(_ALREADY_SAFE.pattern.encode())
_NAME = re.compile(
    r"\A(?:[A-Za-z0-9_]|=[0-9A-F]{2})(?:[A-Za-z0-9_-]|=[0-9A-F]{2})*\Z"
    r"|\A[A-Za-z0-9_=-]{0,80}~[0-9a-f]{64}\Z"
)


def nameForId(messageId: bytes | str) -> str:
    """
    Return the directory name for C{messageId}: its bytes as sent, or a
    text id, which stands for its UTF-8 form.

    Bytes outside C{[A-Za-z0-9_-]}, and a leading C{-} (which shell tools
    would read as an option), become C{=XX}; an escaped name longer than
    120 characters is cut to 80 and followed by C{~} and the SHA-256 of the
    id's bytes.  Different bytes give different names: an id that is not
    valid UTF-8 is named from its bytes, never from a decoding of them.
    """
    if isinstance(messageId, str):
        if _ALREADY_SAFE.fullmatch(messageId):
            return messageId
        raw = messageId.encode("utf-8", "surrogatepass")
    else:
        raw = messageId
        if _ALREADY_SAFE_BYTES.fullmatch(raw):
            return raw.decode("ascii")
    escaped = "".join(
        chr(b) if b in _SAFE and not (i == 0 and b == ord("-")) else f"={b:02X}"
        for i, b in enumerate(raw)
    )
    if 0 < len(escaped) <= _MAX_ESCAPED:
        return escaped
    return escaped[:80] + "~" + hashlib.sha256(raw).hexdigest()


def isName(name: str) -> bool:
    """
    Whether C{name} is a name that L{nameForId} can return: used to ignore
    anything else that appears in the spool's directories.
    """
    return _NAME.match(name) is not None
