# -*- test-case-name: tests.test_sim -*-
"""
MMS zips for tests and benchmarks: one of about a given size, as MX Telecom
sends them (L{makeZip}), and one of given entries (L{zipOf}).
"""

from __future__ import annotations

import io
import random
import warnings
import zipfile
from collections.abc import Sequence


def makeZip(size: int, seed: int = 0, name: str = "image.jpg") -> bytes:
    """
    A valid MMS zip of about C{size} bytes: a SMIL presentation, a text part
    and an image-like part (C{name}) of random (incompressible, stored)
    bytes, the same for the same C{seed}.
    """
    text = "Hello from mxrecv-sim \N{EURO SIGN}\n".encode()
    smil = (
        b'<smil><body><par><img src="' + name.encode() + b'"/>'
        b'<text src="text.txt"/></par></body></smil>'
    )
    overhead = 400 + len(text) + len(smil)
    image = random.Random(seed).randbytes(max(0, size - overhead))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("mms.smil", smil)
        z.writestr("text.txt", text)
        z.writestr(name, image)
    return out.getvalue()


def zipOf(
    entries: Sequence[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED
) -> bytes:
    """
    The bytes of a zip holding C{entries} in that order (names may repeat).
    """
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are wanted
        _write(out, entries, compression)
    return out.getvalue()


def _write(out, entries, compression) -> None:
    with zipfile.ZipFile(out, "w", compression) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, (2026, 11, 25, 10, 0, 0))
            info.compress_type = compression
            archive.writestr(info, data)
