# -*- test-case-name: tests.test_schedule -*-
"""
What is kept of the attempts at getting an MMS from RetrieveMMS: how many
there were, and the last few of them, each with its time and outcome.

An MMS may be tried for days (every C{backoff_max} once its backoff has
grown): its record, journaled in C{pending/NAME/retrieve.json} after each
attempt and written into C{failed/NAME/message.json} at the end, must not
grow with it.  Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from attrs import frozen

#: How many of the last attempts are kept; the ones before are only counted.
RECENT_ATTEMPTS = 10


@frozen
class Attempt:
    """
    One try at getting an MMS, as recorded in C{failed/NAME/message.json}.
    """

    at: str
    outcome: str

    def toJSON(self) -> dict[str, str]:
        return {"at": self.at, "outcome": self.outcome}


@frozen
class Attempts:
    """
    The record of an MMS's attempts: their C{count}, and the C{recent} ones
    (at most L{RECENT_ATTEMPTS}, oldest first).  Iterating gives the recent
    ones.
    """

    count: int = 0
    recent: tuple[Attempt, ...] = ()

    @classmethod
    def of(cls, attempts: Iterable[Attempt]) -> Attempts:
        """
        The record of all of C{attempts}, in order.
        """
        listed = tuple(attempts)
        return cls(len(listed), listed[-RECENT_ATTEMPTS:])

    def add(self, attempt: Attempt) -> Attempts:
        return Attempts(self.count + 1, (self.recent + (attempt,))[-RECENT_ATTEMPTS:])

    def __iter__(self) -> Iterator[Attempt]:
        return iter(self.recent)

    @property
    def last(self) -> Attempt | None:
        return self.recent[-1] if self.recent else None

    def toJSON(self) -> dict[str, Any]:
        """
        The C{attempts} (the recent ones) and C{attempt_count} keys of a
        record.
        """
        return {"attempts": [a.toJSON() for a in self.recent], "attempt_count": self.count}

    @classmethod
    def fromJSON(cls, document: Mapping[str, Any]) -> Attempts:
        """
        Read the keys L{toJSON} writes.  A record without C{attempt_count}
        (written before attempts were counted) counts the attempts it lists,
        however many, and keeps the last ones.

        @raise ValueError: if C{document} is not such a record.
        """
        try:
            listed = tuple(Attempt(str(a["at"]), str(a["outcome"])) for a in document["attempts"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a record of attempts: {e!r}") from None
        count = document.get("attempt_count", len(listed))
        if type(count) is not int or count < len(listed):
            count = len(listed)
        return cls(count, listed[-RECENT_ATTEMPTS:])
