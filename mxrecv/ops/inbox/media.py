# -*- test-case-name: tests.test_inbox_pure -*-
"""
How the message page shows each part of an MMS, and in what order.  Pure.

A part's C{content_type} came from the zip (its SMIL or its file name), so
from the internet: only types that a browser shows without running
anything are ever shown inline, and only when the page itself embeds them
(C{<img>}, C{<audio>}, C{<video>}).  Everything else is offered as a
download, served as an attachment (L{mxrecv.ops.inbox.resource}).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attrs import frozen

from mxrecv.mms.unpack import SMIL, TEXT_PLAIN, SmilReference

IMAGE = "image"
AUDIO = "audio"
VIDEO = "video"
TEXT = "text"
DOWNLOAD = "download"

#: Raster images: decoded by the browser, no script, no external loads.
#: Not SVG (a document that can run script), not WBMP (browsers cannot).
INLINE_IMAGES = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/avif"}
)
#: Audio and video that Chromium and Firefox play with their own controls.
#: AMR, 3GPP and MIDI, common in MMS, are not among them: offered as
#: downloads.
PLAYABLE_AUDIO = frozenset(
    {
        "audio/mpeg",
        "audio/mp3",
        "audio/aac",
        "audio/mp4",
        "audio/wav",
        "audio/wave",
        "audio/x-wav",
        "audio/ogg",
        "audio/webm",
        "audio/flac",
    }
)
PLAYABLE_VIDEO = frozenset({"video/mp4", "video/webm", "video/ogg"})


def kindOf(contentType: str) -> str:
    """
    How a part of type C{contentType} is shown on the message page.
    """
    if contentType in INLINE_IMAGES:
        return IMAGE
    if contentType in PLAYABLE_AUDIO:
        return AUDIO
    if contentType in PLAYABLE_VIDEO:
        return VIDEO
    if contentType == TEXT_PLAIN:
        return TEXT
    return DOWNLOAD


def servedInline(contentType: str) -> bool:
    """
    Whether a part of type C{contentType} is served for the browser to show
    (the page embeds it); any other is served as an attachment.
    """
    return kindOf(contentType) in (IMAGE, AUDIO, VIDEO)


@frozen
class PartView:
    """
    A part of an MMS as C{message.json} lists it, checked.

    @ivar file: its file name under C{parts/} (one path component).
    """

    name: str
    file: str
    size: int
    contentType: str

    @property
    def kind(self) -> str:
        return kindOf(self.contentType)


def partViews(parts: Any) -> list[PartView]:
    """
    The parts of a C{message.json}'s C{parts}, in zip order, keeping only
    those whose C{path} is C{parts/FILE} with C{FILE} one plain path
    component: C{message.json} in C{cur/} is the application's, and nothing
    it says may point outside the message's directory.
    """
    views: list[PartView] = []
    if not isinstance(parts, list):
        return views
    for part in parts:
        if not isinstance(part, dict):
            continue
        path, name = part.get("path"), part.get("name")
        size, kind = part.get("size"), part.get("content_type")
        if not isinstance(path, str) or not path.startswith("parts/"):
            continue
        file = path[len("parts/") :]
        if not safeComponent(file):
            continue
        views.append(
            PartView(
                name=name if isinstance(name, str) else file,
                file=file,
                size=size if isinstance(size, int) and not isinstance(size, bool) else 0,
                contentType=kind.lower() if isinstance(kind, str) else "application/octet-stream",
            )
        )
    return views


def safeComponent(name: str) -> bool:
    """
    Whether C{name} is one path component that stays where it is: not
    empty, no separator, no NUL or other control character, not C{.} or
    C{..}, no leading dot.
    """
    return (
        0 < len(name) <= 255
        and "/" not in name
        and "\\" not in name
        and not name.startswith(".")
        and all(ord(c) >= 0x20 and c != "\x7f" for c in name)
    )


def smilPart(parts: Sequence[PartView]) -> PartView | None:
    """
    The part that lays the message out, if any: the first SMIL part.
    """
    for part in parts:
        if part.contentType == SMIL:
            return part
    return None


def presentationOrder(
    parts: Sequence[PartView], references: Sequence[SmilReference]
) -> list[PartView]:
    """
    The parts to present, SMIL aside: first those the SMIL refers to, in
    its order (matched by the entry's name, then by its last component,
    then ignoring case, as phones name them loosely), then the others in
    zip order.
    """
    shown = [p for p in parts if p.contentType != SMIL]
    ordered: list[PartView] = []
    taken: set[int] = set()
    for reference in references:
        index = _match(shown, reference.source, taken)
        if index is not None:
            taken.add(index)
            ordered.append(shown[index])
    ordered.extend(p for i, p in enumerate(shown) if i not in taken)
    return ordered


def _match(parts: Sequence[PartView], source: str, taken: set[int]) -> int | None:
    base = source.replace("\\", "/").rsplit("/", 1)[-1]
    for same in (
        lambda p: p.name == source,
        lambda p: p.name.replace("\\", "/").rsplit("/", 1)[-1] == base,
        lambda p: p.name.replace("\\", "/").rsplit("/", 1)[-1].casefold() == base.casefold(),
    ):
        for i, part in enumerate(parts):
            if i not in taken and same(part):
                return i
    return None
