# -*- test-case-name: tests.test_unpack -*-
"""
Unpacking an MMS zip into C{parts/}.

Placeholder until the POST-mode work lands: nothing is unpacked, and the
message says so in C{parts_error}; the raw C{mms.zip} is always delivered.
"""

from __future__ import annotations

from pathlib import Path

from attrs import frozen

from .message import Part


@frozen
class Unpacked:
    """
    What unpacking produced: the parts written, the text of the text parts,
    and why unpacking stopped, if it did.
    """

    parts: tuple[Part, ...] = ()
    text: str | None = None
    error: str | None = None


def unpackInto(zipPath: Path, partsDir: Path) -> Unpacked:
    """
    Unpack the zip at C{zipPath} into C{partsDir} (which does not exist yet).
    Blocking: called in a worker thread.
    """
    return Unpacked(error="unpacking is not implemented yet")
