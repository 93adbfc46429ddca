# -*- test-case-name: tests.test_inbox_pure -*-
"""
A message as one row of the inbox: what C{message.json} says, reduced to
the columns the list shows.  Pure: the catalog stores rows, the pages show
them.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen

# Longest subject or first line kept for the list (the message page has it all).
SUMMARY_LENGTH = 120


@frozen
class Row:
    """
    One message in one spool folder, as the inbox lists it.

    @ivar received: C{received} as stored (ISO 8601 UTC), or C{""} when the
        document has none (it then sorts last).
    @ivar summary: the MMS subject, else the first non-blank line of its
        text or of the SMS's message, cut to L{SUMMARY_LENGTH}.
    @ivar problem: the failure reason (C{failed/}), else C{parts_error}, else
        why C{message.json} could not be read.
    """

    folder: str
    name: str
    received: str
    id: str
    type: str
    sender: str
    recipients: tuple[str, ...]
    summary: str
    parts: int
    problem: str | None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _texts(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str))


def firstLine(text: str) -> str:
    """
    The first line of C{text} that is not blank, stripped and cut to
    L{SUMMARY_LENGTH} characters (with an ellipsis when cut).
    """
    for line in text.splitlines():
        line = line.strip()
        if line:
            if len(line) > SUMMARY_LENGTH:
                return line[: SUMMARY_LENGTH - 1] + "\u2026"
            return line
    return ""


def summarize(folder: str, name: str, document: Any) -> Row:
    """
    The row of C{folder/name} whose C{message.json} parsed as C{document}.
    Every value comes from the internet or the application: anything of
    the wrong type is taken as missing, never trusted.
    """
    if not isinstance(document, dict):
        return unreadable(folder, name, "message.json is not a JSON object")
    subject = _text(document.get("subject"))
    body = _text(document.get("message")) or _text(document.get("text"))
    parts = document.get("parts")
    problem = _text(document.get("error")) or _text(document.get("parts_error")) or None
    return Row(
        folder=folder,
        name=name,
        received=_text(document.get("received")),
        id=_text(document.get("id")),
        type=_text(document.get("type")),
        sender=_text(document.get("from")),
        recipients=_texts(document.get("to")),
        summary=firstLine(subject) or firstLine(body),
        parts=len(parts) if isinstance(parts, list) else 0,
        problem=problem,
    )


def unreadable(folder: str, name: str, why: str) -> Row:
    """
    The row of a message whose C{message.json} could not be read: it is
    still listed, with the reason, so that nothing in the spool is hidden.
    """
    return Row(folder, name, "", "", "", "", (), "", 0, why)

