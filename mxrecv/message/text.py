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
