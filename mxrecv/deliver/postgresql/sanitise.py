# -*- test-case-name: tests.test_postgresql_row -*-
"""
What PostgreSQL refuses to store in C{text} and C{jsonb}, replaced so that a
message is never refused for it, with a record of each change.

PostgreSQL text cannot hold U+0000 (NUL), and its UTF-8 cannot encode the
surrogates U+D800..U+DFFF, which Python strings can hold (an id or a name
read from bytes that were not UTF-8, kept with C{surrogateescape}).  Each
such character becomes U+FFFD (the replacement character), and the change is
described in a sentence that names the field, e.g. C{"message: 2 characters
PostgreSQL cannot store (U+0000) replaced by U+FFFD"}.

Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Any

REPLACEMENT = "\ufffd"

_REFUSED = re.compile("[\x00\ud800-\udfff]")


def cleanText(text: str, field: str, changes: list[str]) -> str:
    """
    C{text} with every character PostgreSQL cannot store replaced by
    U+FFFD; a sentence naming C{field} is appended to C{changes} if any was.
    """
    found = _REFUSED.findall(text)
    if not found:
        return text
    kinds = ", ".join(f"U+{ord(c):04X}" for c in sorted(set(found))[:5])
    more = ", ..." if len(set(found)) > 5 else ""
    count = len(found)
    changes.append(
        f"{field}: {count} character{'s' if count > 1 else ''} PostgreSQL cannot store "
        f"({kinds}{more}) replaced by U+FFFD"
    )
    return _REFUSED.sub(REPLACEMENT, text)


def cleanDocument(value: Any, changes: list[str], path: str = "") -> Any:
    """
    A copy of the JSON value C{value} (as C{json.loads} makes them) with
    every string, keys included, cleaned by L{cleanText}; C{path} names the
    value in the changes (C{parts[0].name}).
    """
    if isinstance(value, str):
        return cleanText(value, path or "(document)", changes)
    if isinstance(value, dict):
        cleaned = {}
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if isinstance(key, str):
                key = cleanText(key, f"{where} (the key)", changes)
            cleaned[key] = cleanDocument(item, changes, where)
        return cleaned
    if isinstance(value, list):
        return [cleanDocument(item, changes, f"{path}[{i}]") for i, item in enumerate(value)]
    return value
