# -*- test-case-name: tests.test_inbox_pure -*-
"""
What a request to C{/inbox} asks for: filters and a page, parsed from the
query string and checked.  Pure: the catalog turns a L{Query} into SQL, the
page turns it back into links.

Messages are listed newest first by (received, folder, name); a page is
the C{size} rows before (older than) or after (newer than) a L{Cursor}, so
that paging costs the same on the last page as on the first, and a message
arriving while an operator pages does not shift what the next page shows.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence

from attrs import frozen

from mxrecv.spool.layout import CUR, FAILED, NEW, PENDING
from mxrecv.spool.naming import isName

#: The folders the inbox lists, in the order it offers them.
FOLDERS = (NEW, CUR, PENDING, FAILED)
TYPES = ("sms", "mms")
PAGE_SIZE = 50

_LONGEST_TEXT = 200
_SENDER_NOISE = re.compile(r"[\s()+.-]")


class BadQuery(ValueError):
    """
    A filter or cursor that cannot be used; the message names it.
    """


@frozen(order=True)
class Cursor:
    """
    A position in the list: the sort key of a row.
    """

    received: str
    folder: str
    name: str

    def encode(self) -> str:
        return f"{self.received}~{self.folder}~{self.name}"

    @classmethod
    def decode(cls, value: str) -> Cursor:
        received, _, rest = value.partition("~")
        folder, _, name = rest.partition("~")
        if folder not in FOLDERS or not isName(name) or len(received) > 64:
            raise BadQuery("the page link is not valid")
        return cls(received, folder, name)


@frozen
class Query:
    """
    Filters (each L{None} when not given) and a page.

    @ivar sender: digits and letters to look for in the sender, spaces and
        C{+-.()} dropped (an operator types C{+44 7700 900123}, MX Telecom
        sends C{447700900123}).
    @ivar ident: an id, or a spool name.
    @ivar since: received at or after this date or time (UTC), as typed.
    @ivar until: received no later than this date or time (UTC), as typed:
        a date includes its whole day, a time without seconds its minute.
    @ivar before: the page is the rows older than this cursor.
    @ivar after: the page is the rows newer than this cursor.
    """

    folder: str | None = None
    type: str | None = None
    sender: str | None = None
    ident: str | None = None
    since: str | None = None
    until: str | None = None
    before: Cursor | None = None
    after: Cursor | None = None
    size: int = PAGE_SIZE

    def filters(self) -> dict[str, str]:
        """
        The filters as the query string had them (for links to other pages).
        """
        given = {
            "folder": self.folder,
            "type": self.type,
            "from": self.sender,
            "id": self.ident,
            "since": self.since,
            "until": self.until,
        }
        return {k: v for k, v in given.items() if v}

    def receivedRange(self) -> tuple[str | None, str | None]:
        """
        The bounds on C{received} (compared as strings, which orders
        C{received}'s ISO 8601 UTC form): at or after the first, before the
        second.
        """
        since = until = None
        if self.since is not None:
            since = _parse(self.since)[0].strftime(_STAMP)
        if self.until is not None:
            when, span = _parse(self.until)
            until = (when + span).strftime(_STAMP)
        return since, until


def parseQuery(args: Mapping[bytes, Sequence[bytes]]) -> Query:
    """
    The L{Query} of a request's C{args}; empty values are no filter.

    @raise BadQuery: naming the parameter that is wrong.
    """

    def one(key: str) -> str | None:
        values = args.get(key.encode(), [])
        if not values:
            return None
        try:
            value = values[-1].decode("utf-8").strip()
        except UnicodeDecodeError:
            raise BadQuery(f"{key} is not UTF-8") from None
        if len(value) > _LONGEST_TEXT:
            raise BadQuery(f"{key} is too long")
        return value or None

    folder = one("folder")
    if folder is not None and folder not in FOLDERS:
        raise BadQuery(f"folder must be one of {', '.join(FOLDERS)}")
    kind = one("type")
    if kind is not None and kind not in TYPES:
        raise BadQuery(f"type must be one of {', '.join(TYPES)}")
    sender = one("from")
    if sender is not None:
        sender = _SENDER_NOISE.sub("", sender) or None
    before, after = one("before"), one("after")
    if before and after:
        raise BadQuery("before and after cannot both be given")
    return Query(
        folder=folder,
        type=kind,
        sender=sender,
        ident=one("id"),
        since=_checked(one("since"), "since"),
        until=_checked(one("until"), "until"),
        before=Cursor.decode(before) if before else None,
        after=Cursor.decode(after) if after else None,
    )


_STAMP = "%Y-%m-%dT%H:%M:%S"


def _parse(value: str) -> tuple[datetime.datetime, datetime.timedelta]:
    """
    A date or a date and time typed by an operator (UTC), and how much time
    it names: a day, a minute or a second.

    @raise ValueError: if it is neither.
    """
    text = value.replace(" ", "T").removesuffix("Z")
    when = datetime.datetime.fromisoformat(text)
    if when.tzinfo is not None:
        when = when.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    if "T" not in text:
        return when, datetime.timedelta(days=1)
    if text.count(":") == 1:
        return when, datetime.timedelta(minutes=1)
    return when.replace(microsecond=0), datetime.timedelta(seconds=1)


def _checked(value: str | None, key: str) -> str | None:
    if value is not None:
        try:
            when, span = _parse(value)
            when + span
        except (ValueError, OverflowError):
            raise BadQuery(
                f"{key} must be a date (2026-11-25) or a date and time (2026-11-25T10:30)"
            ) from None
    return value
