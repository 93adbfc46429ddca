# -*- test-case-name: tests.test_inbox_pages -*-
"""
Example messages put into a spool as mxrecv leaves them: C{message.json}
written by L{Message.encode}, an MMS's zip unpacked by mxrecv's own
unpacker.  For tests, benchmarks and the screenshots in the docs; not for a
spool a server is running on (nothing is fsynced or journaled).
"""

from __future__ import annotations

import io
import math
import os
import struct
import wave
import zlib
from pathlib import Path
from typing import Any

from mxrecv.message.model import MMS, POST, SMS, Message, encodeJSON
from mxrecv.mms.unpack import unpackInto
from mxrecv.spool.layout import DIRECTORIES, MESSAGE_JSON, MMS_ZIP, PARTS, TMP
from mxrecv.spool.naming import nameForId
from mxrecv.testing.zips import zipOf


def png(width: int, height: int, rgb: tuple[int, int, int] = (31, 95, 191)) -> bytes:
    """
    A PNG image of one colour, with a lighter diagonal band.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    light = tuple(min(255, c + 90) for c in rgb)
    rows = []
    for y in range(height):
        row = bytearray(b"\x00")
        for x in range(width):
            row += bytes(light if abs(x - y * width // max(height, 1)) < width // 8 else rgb)
        rows.append(bytes(row))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


def wav(milliseconds: int = 300, hertz: int = 440) -> bytes:
    """
    A WAV file: a sine tone, 8 kHz, 16-bit mono.
    """
    rate = 8000
    samples = b"".join(
        struct.pack("<h", int(12000 * math.sin(2 * math.pi * hertz * i / rate)))
        for i in range(rate * milliseconds // 1000)
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples)
    return out.getvalue()


def smil(*sources: tuple[str, str]) -> bytes:
    """
    A SMIL document presenting C{(element, src)} pairs, one slide each.
    """
    slides = "".join(f'<par dur="5s"><{kind} src="{source}"/></par>' for kind, source in sources)
    return f"<smil><head/><body>{slides}</body></smil>".encode()


def sms(ident: str, received: str, text: str = "Hello", sender: str = "447700900123") -> Message:
    return Message(
        id=ident,
        type=SMS,
        sender=sender,
        to=("80000",),
        date=received[:19].replace("T", " "),
        delivery="get",
        received=received,
        network="vodafone",
        message=text,
        charset="utf-8",
    )


def mms(
    ident: str,
    received: str,
    subject: str | None = "Hi",
    sender: str = "447700900123",
    delivery: str = POST,
) -> Message:
    """
    An MMS; C{delivery="get"} for one notified in GET mode (its zip is
    downloaded from RetrieveMMS, or not, when it failed).
    """
    return Message(
        id=ident,
        type=MMS,
        sender=sender,
        to=("80000",),
        date=received[:19].replace("T", " "),
        delivery=delivery,
        received=received,
        subject=subject,
    )


def put(
    root: Path,
    folder: str,
    message: Message,
    zipData: bytes | None = None,
    **extra: Any,
) -> Path:
    """
    Put C{message} into C{root/folder/NAME} as mxrecv would have, with its
    zip (unpacked into C{parts/} unless C{folder} is C{pending} or
    C{failed}) and, in C{message.json}, the C{extra} keys (C{error},
    C{attempts} of a failed MMS): written in C{tmp/}, then renamed into
    place whole.

    @return: the message's directory.
    """
    for which in DIRECTORIES:
        (root / which).mkdir(parents=True, exist_ok=True)
    name = nameForId(message.id)
    directory = root / TMP / f"example.{name}"
    directory.mkdir()
    if zipData is not None:
        (directory / MMS_ZIP).write_bytes(zipData)
        if folder not in ("pending", "failed"):
            unpacked = unpackInto(directory / MMS_ZIP, directory / PARTS)
            message = message.replace(
                mms_size=len(zipData),
                parts=unpacked.parts,
                text=unpacked.text,
                parts_error=unpacked.error,
            )
    data = message.encode()
    if extra:
        data = encodeJSON({**message.toJSON(), **extra})
    (directory / MESSAGE_JSON).write_bytes(data)
    final = root / folder / name
    os.rename(directory, final)
    return final


def inboxExamples(root: Path) -> None:
    """
    What the inbox's tests show: an SMS whose text looks like markup, an
    MMS with a SMIL, a PNG (160 x 90), a text part and a WAV, and a
    GET-mode MMS in C{failed/} with its reason and attempt.
    """
    put(root, "new", sms("sms-1", "2026-11-25T10:30:01.123Z", "Hello <b>there</b>"))
    put(
        root,
        "new",
        mms("mms-1", "2026-11-25T10:31:00.000Z", "Holiday"),
        zipOf(
            [
                (
                    "slides.smil",
                    smil(("img", "photo.png"), ("text", "words.txt"), ("audio", "waves.wav")),
                ),
                ("photo.png", png(160, 90)),
                ("words.txt", "Greetings <i>from</i> the beach".encode()),
                ("waves.wav", wav()),
            ]
        ),
    )
    put(
        root,
        "failed",
        mms("mms-2", "2026-11-25T10:32:00.000Z", "Lost in transit", delivery="get"),
        error="no zip from RetrieveMMS before the expiry (2026-11-26 10:32:00 UTC)",
        attempts=[{"at": "2026-11-25T10:32:05.000Z", "outcome": "HTTP 404"}],
    )
