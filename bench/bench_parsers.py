#!/usr/bin/env python3
"""
The three push parsers for multipart/form-data on PyPI, compared on what
matters to mxrecv: speed on ordinary and on hostile file data, fed in
64 KiB chunks as twisted.web delivers them, and whether a body cut off
before its closing boundary is reported as an error.

    python3 -m venv /tmp/venv-parsers
    /tmp/venv-parsers/bin/pip install multipart==2.0.1 python-multipart streaming-form-data
    /tmp/venv-parsers/bin/python bench/bench_parsers.py

Only `multipart` is a dependency of mxrecv; the others are installed for
this comparison only.
"""

from __future__ import annotations

import os
import time

BOUNDARY = b"----mxrecv-parsers-5c1e"
CHUNK = 64 * 1024
MiB = 1024 * 1024


def body(file: bytes) -> bytes:
    return (
        b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; name=\"id\"\r\n\r\nx\r\n"
        b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; name=\"mms.zip\"; "
        b"filename=\"mms.zip\"\r\nContent-Type: application/zip\r\n\r\n"
        + file + b"\r\n--" + BOUNDARY + b"--\r\n"
    )


def hostile(size: int) -> bytes:
    """
    Data dense in CR, LF and partial delimiters (never the whole one).
    """
    piece = b"\r\n--" + BOUNDARY[:-1] + b"\r\r\n\n-\r\n-" + BOUNDARY[:5]
    return (piece * (size // len(piece) + 1))[:size]


class Multipart:
    name = "multipart 2.0.1"

    def __init__(self) -> None:
        from multipart import PushMultipartParser

        self.parser = PushMultipartParser(BOUNDARY)
        self.received = 0

    def feed(self, chunk: bytes) -> None:
        for event in self.parser.parse(chunk):
            if isinstance(event, bytes):
                self.received += len(event)

    def end(self) -> None:
        self.parser.close()


class PythonMultipart:
    name = "python-multipart 0.0.34"

    def __init__(self) -> None:
        from python_multipart import MultipartParser

        self.received = 0

        def onData(data, start, end):
            self.received += end - start

        self.parser = MultipartParser(BOUNDARY, {"on_part_data": onData})

    def feed(self, chunk: bytes) -> None:
        self.parser.write(chunk)

    def end(self) -> None:
        self.parser.finalize()


class StreamingFormData:
    name = "streaming-form-data 2.1.0"

    def __init__(self) -> None:
        from streaming_form_data import StreamingFormDataParser
        from streaming_form_data.targets import BaseTarget

        outer = self
        self.received = 0

        class Count(BaseTarget):
            def on_data_received(self, chunk: bytes) -> None:
                outer.received += len(chunk)

        self.parser = StreamingFormDataParser(
            {"Content-Type": "multipart/form-data; boundary=" + BOUNDARY.decode()}
        )
        self.parser.register("mms.zip", Count())
        self.parser.register("id", Count())

    def feed(self, chunk: bytes) -> None:
        self.parser.data_received(chunk)

    def end(self) -> None:
        pass  # it has no end-of-input call


def rate(kind, data: bytes) -> float:
    best = 0.0
    for _ in range(2):
        parser = kind()
        start = time.perf_counter()
        for i in range(0, len(data), CHUNK):
            parser.feed(data[i : i + CHUNK])
        parser.end()
        best = max(best, len(data) / (time.perf_counter() - start) / 1e6)
    return best


def truncated(kind) -> str:
    data = body(os.urandom(MiB))
    cut = data[: len(data) // 2]
    parser = kind()
    try:
        for i in range(0, len(cut), CHUNK):
            parser.feed(cut[i : i + CHUNK])
        parser.end()
    except Exception as e:
        return f"error ({type(e).__name__}: {e})"
    return f"accepted, {parser.received} bytes of file delivered"


def main() -> None:
    ordinary = body(os.urandom(64 * MiB))
    dense = body(hostile(16 * MiB))
    for kind in (Multipart, PythonMultipart, StreamingFormData):
        try:
            kind()
        except ImportError:
            print(f"{kind.name}: not installed")
            continue
        print(
            f"{kind.name}: random data {rate(kind, ordinary):.0f} MB/s, "
            f"hostile data {rate(kind, dense):.0f} MB/s, "
            f"body cut mid-part: {truncated(kind)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
