# -*- test-case-name: tests.test_params -*-
"""
MX Telecom's date format: C{yyyy-MM-dd HH:mm:ss}, in later revisions of their
page followed by a UTC offset (C{+0000}, C{+00:00}) or C{Z}.  A time without
an offset is in the configured time zone.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone, tzinfo

# ASCII digits only: \d and int() also take other scripts' digits
# (Arabic-Indic, fullwidth...), which would be stored as sent.
_DATE = re.compile(
    r"\A([0-9]{4})-([0-9]{2})-([0-9]{2})[ T]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?: ?(?:(Z)|([+-])([0-9]{2}):?([0-9]{2})))?\Z"
)


def parseDate(text: str, zone: tzinfo) -> datetime:
    """
    Parse an MX Telecom date into an aware datetime.

    @raise ValueError: if C{text} is not such a date (its digits ASCII).
    """
    match = _DATE.match(text)
    if match is None:
        raise ValueError("expected yyyy-MM-dd HH:mm:ss, optionally followed by +HHMM or Z")
    year, month, day, hour, minute, second, z, sign, oh, om = match.groups()
    if z:
        tz: tzinfo = timezone.utc
    elif sign:
        if int(oh) > 23 or int(om) > 59:
            raise ValueError("UTC offset out of range")
        offset = timedelta(hours=int(oh), minutes=int(om))
        tz = timezone(-offset if sign == "-" else offset)
    else:
        tz = zone
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=tz
        )
    except ValueError as e:
        raise ValueError(f"not a real date and time: {e}") from None
    try:
        # Its offset may carry it out of years 1-9999, which nothing can
        # then format or compare.
        moment.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise ValueError("out of the range of dates") from None
    return moment


def isoUTC(moment: datetime) -> str:
    """
    Format an aware datetime as ISO 8601 in UTC, with a C{Z} suffix.
    """
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def isoFromTimestamp(seconds: float) -> str:
    return isoUTC(datetime.fromtimestamp(seconds, timezone.utc))


def mxDate(seconds: float) -> str:
    """
    A Unix time as MX Telecom writes dates, in UTC with its offset.
    """
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S +0000")
