"""
What the two peer receivers (aiohttp, Starlette) share, so that they do
mxrecv's job the way a careful engineer would write it on those frameworks:

- the same validation: mxrecv's own pure parser (L{mxrecv.message.params}), fed the
  raw bytes of the query string or form fields;
- the same durability before the 200: each message written in its own
  directory under tmp/, the files and the directory fsynced, renamed into
  new/ (SMS) or pending/ (MMS), the parent fsynced, in a pool of 16 worker
  threads (mxrecv's IO_THREADS) so that concurrent fsyncs share journal
  commits, but without group commit (one rename + parent fsync each);
- the zip of a POST streamed to a file under tmp/ and hashed on the way;
- one log line per callback to a file, as mxrecv logs one event.

What they leave out, to their advantage: the durable seen-id journal (their
dedupe is an in-memory set plus the rename failing on an existing name), the
spool lock and the unpacking of the zip after the answer.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import ipaddress
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote_to_bytes
from zoneinfo import ZoneInfo

import multipart

from mxrecv.message.dates import isoFromTimestamp
from mxrecv.message.model import MMS, Message
from mxrecv.message.params import BadParameter, parseCallback
from mxrecv.spool.naming import nameForId

ACK = b"OK\n"
# The same limit as the [server] max_body bench/run.py gives mxrecv (S4 sends 200 MiB).
MAX_BODY = 300 * 1024 * 1024
FIELD_LIMIT = 65536 + 1024
ZONE = ZoneInfo("Europe/London")
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
CHUNK = 64 * 1024


def allowed(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host) in LOOPBACK
    except ValueError:
        return False


def queryParams(raw: bytes) -> dict[bytes, list[bytes]]:
    """
    A query string or urlencoded form as bytes (MX Telecom may send
    ISO-8859-15 text, which must reach the validation undecoded).
    """
    params: dict[bytes, list[bytes]] = {}
    for pair in raw.split(b"&"):
        if not pair:
            continue
        name, _, value = pair.partition(b"=")
        params.setdefault(unquote_to_bytes(name.replace(b"+", b" ")), []).append(
            unquote_to_bytes(value.replace(b"+", b" "))
        )
    return params


def validate(params: dict[bytes, list[bytes]], delivery: str) -> Message:
    """
    @raise BadParameter: as mxrecv would.
    """
    return parseCallback(
        params, delivery=delivery, received=isoFromTimestamp(time.time()), zone=ZONE
    )


class ZipSink:
    """
    The C{mms.zip} part of a POST, written to a file in a staging directory
    as it arrives (blocking writes to the page cache, on the event loop; the
    fsync is done in a worker by L{PeerSpool.store}), hashed on the way.
    """

    def __init__(self, staging: Path) -> None:
        self.staging = staging
        self._file = open(staging / "mms.zip", "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def close(self) -> None:
        self._file.close()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class PeerSpool:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        for which in ("tmp", "new", "cur", "pending", "failed"):
            (self.root / which).mkdir(parents=True, exist_ok=True)
        self.executor = ThreadPoolExecutor(16, thread_name_prefix="peer-io")
        self.seen: set[str] = set()
        self.log = logging.getLogger("peer")
        handler = logging.FileHandler(self.root / "peer.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        self.log.addHandler(handler)
        self.log.setLevel(logging.INFO)
        self.log.propagate = False

    def stage(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="in.", dir=self.root / "tmp"))

    def discard(self, staging: Path) -> None:
        self.executor.submit(_removeTree, staging)

    def store(self, message: Message, staging: Path | None) -> bool:
        """
        In a worker: make C{message} durable; L{False} if it was a duplicate.
        """
        target = self.root / ("pending" if message.type == MMS else "new")
        path = staging or Path(tempfile.mkdtemp(prefix="in.", dir=self.root / "tmp"))
        try:
            for existing in path.iterdir():
                _fsync(existing)
            fd = os.open(path / "message.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                os.write(fd, message.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync(path)
            try:
                os.rename(path, target / nameForId(message.id))
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    _removeTree(path)
                    return False
                raise
            _fsync(target)
            return True
        except BaseException:
            _removeTree(path)
            raise

    def logged(self, message: Message | None, started: float) -> None:
        self.log.info(
            "callback %s (%s) in %.3fs",
            message.id if message else None,
            message.type if message else None,
            time.monotonic() - started,
        )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _removeTree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


async def handle(
    spool: PeerSpool,
    *,
    method: str,
    path: str,
    host: str | None,
    contentType: str,
    contentLength: int | None,
    rawQuery: bytes,
    chunks: AsyncIterator[bytes],
) -> tuple[int, bytes]:
    """
    One callback, whatever the framework: its status and body.  The two
    peers differ only in the HTTP server and event loop around this.
    """
    started = time.monotonic()
    message = None
    staging: Path | None = None
    sink: ZipSink | None = None
    try:
        if path != "/":
            return 404, b"no callback at this path\n"
        if not allowed(host):
            return 403, b"client address not allowed\n"
        if method not in ("GET", "POST"):
            return 405, b"callbacks are GET or POST\n"
        if contentLength is not None and contentLength > MAX_BODY:
            return 413, b"body over the limit\n"
        kind = contentType.split(";", 1)[0].strip().lower()
        if method == "GET":
            params = queryParams(rawQuery)
            async for _ in chunks:
                pass
            delivery = "get"
        elif kind == "application/x-www-form-urlencoded":
            body = bytearray()
            async for chunk in chunks:
                body += chunk
                if len(body) > 1024 * 1024:
                    return 413, b"form body too large\n"
            params = {**queryParams(rawQuery), **queryParams(bytes(body))}
            delivery = "post"
        elif kind == "multipart/form-data":
            boundary = multipart.parse_options_header(contentType)[1].get("boundary")
            if not boundary:
                return 400, b"no boundary\n"
            staging = spool.stage()
            try:
                params, sink = await _readMultipart(boundary, contentLength, chunks, staging)
            except multipart.MultipartError as e:
                return 400, f"malformed multipart body: {e}\n".encode()
            delivery = "post"
        else:
            return 415, b"unsupported content type\n"
        try:
            message = validate(params, delivery)
        except BadParameter as e:
            return 400, f"{e}\n".encode()
        if delivery == "post" and message.type == MMS:
            if staging is None or sink is None:
                return 400, b"an MMS sent by POST must carry its zip\n"
            message = message.replace(mms_size=sink.size, mms_sha256=sink.sha256)
        elif staging is not None:
            spool.discard(staging)
            staging = None
        name = nameForId(message.id)
        if name in spool.seen:
            if staging is not None:
                spool.discard(staging)
                staging = None
            return 200, ACK
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(spool.executor, spool.store, message, staging)
        except OSError as e:
            return 503, f"message not stored, please retry: {e.strerror}\n".encode()
        finally:
            staging = None
        spool.seen.add(name)
        return 200, ACK
    finally:
        if staging is not None:
            spool.discard(staging)
        spool.logged(message, started)


async def _readMultipart(
    boundary: str, contentLength: int | None, chunks: AsyncIterator[bytes], staging: Path
) -> tuple[dict[bytes, list[bytes]], ZipSink | None]:
    """
    Stream a multipart body: fields into memory (bounded), the C{mms.zip}
    part to a file in C{staging}.
    """
    params: dict[bytes, list[bytes]] = {}
    sink: ZipSink | None = None
    current: bytearray | None = None
    name = ""
    with multipart.PushMultipartParser(
        boundary,
        contentLength if contentLength is not None else -1,
        max_header_size=4224,
        max_header_count=8,
        max_segment_count=1000,
    ) as parser:
        try:
            async for chunk in chunks:
                for event in parser.parse(chunk):
                    if isinstance(event, multipart.MultipartSegment):
                        name = event.name
                        if name == "mms.zip":
                            sink = ZipSink(staging)
                        else:
                            current = bytearray()
                    elif event is None:
                        if name != "mms.zip" and current is not None:
                            params.setdefault(name.encode(), []).append(bytes(current))
                        current = None
                    elif name == "mms.zip":
                        sink.write(event)
                    else:
                        current += event
                        if len(current) > FIELD_LIMIT:
                            raise multipart.MultipartError(f"field {name!r} too long")
            for event in parser.parse(b""):
                pass
        finally:
            if sink is not None:
                sink.close()
    return params, sink
