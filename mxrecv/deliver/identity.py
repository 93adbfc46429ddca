# -*- test-case-name: tests.test_deliver_policy -*-
"""
The message's id as the application gets it beside the message: the
C{webhook-id} header, the command's C{MXRECV_ID}.  It is the application's
idempotency key, so both targets give the same one.
"""

from __future__ import annotations

from urllib.parse import quote

# Kept as they are: visible ASCII but "%", the escape.
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def deliveryId(messageId: str) -> str:
    """
    C{messageId} itself when it is visible ASCII without C{%} (MX Telecom's
    ids are), else its UTF-8 bytes percent-encoded where they are not: a
    value that fits in an HTTP header and an environment variable, and
    different for different ids.
    """
    return quote(messageId, safe=_SAFE, errors="surrogatepass")
