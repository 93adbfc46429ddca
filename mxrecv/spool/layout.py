# -*- test-case-name: tests.test_spool -*-
"""
The spool's names: every directory and file that mxrecv makes under
C{[spool] dir}.  The layout is mxrecv's public interface with the customer's
application (documented in the README): these names do not change.

    tmp/                work in progress, emptied at start-up
    new/NAME/           complete messages; each appears atomically
    cur/                the application's; mxrecv never touches it
    pending/NAME/       MMS accepted but not complete yet (internal)
    failed/NAME/        what could not be completed, with the reason
    state/              mxrecv's own files (the inbox's catalog, the delivery
                        records state/delivered/TARGET/NAME and the dead letters
                        state/undeliverable/TARGET/NAME among them)

and in a message's directory C{message.json}, C{mms.zip}, C{parts/} and,
while a GET-mode MMS is being retrieved, C{retrieve.json}.

It also owns the schema of the documents that mxrecv writes there besides
the message itself (L{mxrecv.message.model.Message} is C{message.json}'s):
why a message is in C{failed/} (L{failedDocument}), and a retrieval's
history (L{RetrieveState}).  All of them are written by one JSON writer,
L{mxrecv.message.model.encodeJSON}; L{mxrecv.spool.directory} reads and
writes them.  Pure: names, paths and documents, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from attrs import frozen

TMP = "tmp"
NEW = "new"
CUR = "cur"
PENDING = "pending"
FAILED = "failed"
STATE = "state"

#: Every directory of the spool, made when it is opened.
DIRECTORIES = (TMP, NEW, CUR, PENDING, FAILED, STATE)

# In a message's directory.
MESSAGE_JSON = "message.json"
MMS_ZIP = "mms.zip"
PARTS = "parts"
RETRIEVE_JSON = "retrieve.json"
#: A download from RetrieveMMS in progress, renamed to C{mms.zip} once whole.
PARTIAL_ZIP = MMS_ZIP + ".part"
#: All that a message's directory in new/ or failed/ may hold: anything else
#: (C{retrieve.json}, a partial download, a half-written replacement) is
#: internal and never moved there.
MESSAGE_ENTRIES = frozenset({MESSAGE_JSON, MMS_ZIP, PARTS})

# In state/.
SEEN_DB = "seen.sqlite"
SEEN_LOCK = "seen.lock"
#: The seen-id journal of mxrecv before the SQLite index: imported once.
SEEN_JOURNAL = "seen"
LOCK = "lock"
DELIVERED = "delivered"
UNDELIVERABLE = "undeliverable"
# The admin inbox's catalog of the spool: a cache, rebuilt if removed.
INBOX_DB = "inbox.sqlite"
INBOX_LOCK = "inbox.lock"


@frozen
class Layout:
    """
    The paths of a spool rooted at C{root}.
    """

    root: Path

    def dir(self, which: str) -> Path:
        """
        One of L{DIRECTORIES}.
        """
        return self.root / which

    def message(self, which: str, name: str) -> Path:
        """
        The directory of message C{name} in C{which} (L{NEW}, L{PENDING},
        L{FAILED}).
        """
        return self.root / which / name

    def delivered(self) -> Path:
        """
        The delivery records: C{TARGET/NAME} for each message delivered.
        """
        return self.root / STATE / DELIVERED

    def undeliverable(self) -> Path:
        """
        The dead letters: C{TARGET/NAME} for each message that TARGET refused
        for good (L{undeliverableDocument}).
        """
        return self.root / STATE / UNDELIVERABLE


# The documents.

#: The keys that C{failed/NAME/message.json} has besides the message's.
ERROR = "error"
ATTEMPTS = "attempts"
ATTEMPT_COUNT = "attempt_count"
#: How many of the last attempts at an MMS are recorded; the ones before are
#: only counted.
RECENT_ATTEMPTS = 10


@frozen
class Attempt:
    """
    One try at getting an MMS, as recorded in C{failed/NAME/message.json}
    and C{retrieve.json}: when (ISO 8601 UTC), and how it went.
    """

    at: str
    outcome: str

    def toJSON(self) -> dict[str, str]:
        return {"at": self.at, "outcome": self.outcome}

    @classmethod
    def fromJSON(cls, document: Mapping[str, Any]) -> Attempt:
        return cls(document["at"], document["outcome"])


@frozen
class Attempts:
    """
    What is recorded of the attempts at getting an MMS: their C{count}, and
    the C{recent} ones (at most L{RECENT_ATTEMPTS}, oldest first), so that
    the record stays small however long the MMS is tried.  Iterating gives
    the recent ones.
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
        return {ATTEMPTS: [a.toJSON() for a in self.recent], ATTEMPT_COUNT: self.count}

    @classmethod
    def fromJSON(cls, document: Mapping[str, Any]) -> Attempts:
        """
        Read the keys L{toJSON} writes.  A record without C{attempt_count}
        (written before attempts were counted) counts the attempts it lists,
        however many, and keeps the last ones.

        @raise ValueError: if C{document} is not such a record.
        """
        try:
            listed = tuple(Attempt.fromJSON(a) for a in document[ATTEMPTS])
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a record of attempts: {e!r}") from None
        if not all(isinstance(a.at, str) and isinstance(a.outcome, str) for a in listed):
            raise ValueError("not a record of attempts: an attempt that is not text")
        count = document.get(ATTEMPT_COUNT, len(listed))
        if type(count) is not int or count < len(listed):
            count = len(listed)
        return cls(count, listed[-RECENT_ATTEMPTS:])


def failedDocument(message: Mapping[str, Any], error: str, attempts: Attempts) -> dict[str, Any]:
    """
    The C{message.json} of a message in C{failed/}: the message's own keys,
    then C{error} (a sentence), C{attempts} (the last ones, oldest first)
    and C{attempt_count}.
    """
    return {**message, ERROR: error, **attempts.toJSON()}


def requeuedDocument(failed: Mapping[str, Any]) -> dict[str, Any]:
    """
    The C{message.json} of a message moved back from C{failed/} to
    C{pending/}: without what L{failedDocument} added.
    """
    return {k: v for k, v in failed.items() if k not in (ERROR, ATTEMPTS, ATTEMPT_COUNT)}


@frozen
class RetrieveState:
    """
    C{pending/NAME/retrieve.json}: the attempts so far at downloading a
    GET-mode MMS, and when it was requeued (C{mxrecv requeue}), if it was.
    Internal: it never leaves C{pending/}.
    """

    attempts: Attempts = Attempts()
    requeued: str | None = None

    def toJSON(self) -> dict[str, Any]:
        document: dict[str, Any] = self.attempts.toJSON()
        if self.requeued is not None:
            document["requeued"] = self.requeued
        return document

    @classmethod
    def fromJSON(cls, document: Any) -> RetrieveState:
        """
        @raise ValueError: if C{document} does not follow the schema.
        """
        attempts = Attempts.fromJSON(document)
        try:
            requeued = document.get("requeued") or None
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a retrieval record: {e!r}") from None
        if requeued is not None and not isinstance(requeued, str):
            raise ValueError(f"not a retrieval record: requeued is {requeued!r}")
        return cls(attempts, requeued)


def undeliverableDocument(
    *, name: str, target: str, error: str, at: str, attempts: Attempts
) -> dict[str, Any]:
    """
    C{state/undeliverable/TARGET/NAME}: why TARGET refused C{new/NAME} for
    good (C{error}, a sentence), when it was given up (C{at}, ISO 8601 UTC),
    and its attempts (L{Attempts}: C{attempt_count}, and the last ones as
    C{attempts}).
    """
    return {"name": name, "target": target, ERROR: error, "at": at, **attempts.toJSON()}
