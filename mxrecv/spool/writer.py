# -*- test-case-name: tests.test_writer -*-
"""
Files streamed in from the network, written and hashed in worker threads, in
order, with backpressure: POST-mode uploads (L{mxrecv.web.multipart}) and
RetrieveMMS downloads (L{mxrecv.mms.fetch}), on one shared budget.

The reactor only appends each chunk of a file to that file's buffer; a
worker thread hashes (SHA-256) and writes whatever has accumulated, one job
at a time per file so that the file's bytes stay in order.  A C{write}
into the page cache can block for a long time under writeback throttling,
and hashing costs about as much as the disk: neither belongs on the reactor,
and in a worker both overlap the reactor's parsing of the next chunks
(hashlib and C{os.write} release the GIL on large buffers).

Buffers are bounded per file and across all files: past the bound the
file's producer (the upload's connection, or the download's response) is
paused, and resumed once the writers have caught up, so memory stays bounded
however slow the disk is.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from attrs import frozen
from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.internet.interfaces import IPushProducer, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from mxrecv.spool.durable import createFile
from mxrecv.spool.mode import DEFAULT_MODE

MiB = 1024 * 1024
# Bytes buffered for one file, and for all of them (uploads and downloads),
# before pausing.  On top of the total, each connection holds at most one
# read (256 KiB): 32 concurrent uploads stay within 14 MiB however slow the
# disk (docs/post.md).
FILE_LIMIT = 4 * MiB
TOTAL_LIMIT = 6 * MiB
# A worker job takes at least this much (unless the file is ending or over
# its bounds), so that the hand-over between threads, which costs context
# switches and GIL hand-offs, is paid per batch, not per read: measured, a
# 1 MiB batch was faster than 256 KiB (docs/post.md).
BATCH = 1024 * 1024
_IOV_MAX = os.sysconf("SC_IOV_MAX")


@frozen
class Written:
    """
    What L{FileWriter} wrote: C{size} bytes whose SHA-256 is C{sha256} (hex).
    """

    size: int
    sha256: str


class FileWriters:
    """
    Makes the L{FileWriter}s of a server (for its uploads and its
    downloads) and holds their shared budget.

    @param reactor: where completions are reported.
    @param pool: a started L{twisted.python.threadpool.ThreadPool} whose
        threads do the writing and hashing.
    @param fileLimit: bytes buffered for one file before its producer is
        paused.
    @param totalLimit: bytes buffered for all files before any file that
        buffers more has its producer paused.
    @param mode: the permissions of the files (C{[spool] mode}).
    """

    def __init__(
        self,
        *,
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        fileLimit: int = FILE_LIMIT,
        totalLimit: int = TOTAL_LIMIT,
        batch: int = BATCH,
        mode: int = DEFAULT_MODE,
    ) -> None:
        self._reactor = reactor
        self._pool = pool
        self.fileLimit = fileLimit
        self.totalLimit = totalLimit
        self.batch = batch
        self.mode = mode
        self.buffered = 0
        self._paused: set[FileWriter] = set()
        # Writers holding chunks (less than a batch) with no job running.
        self._holding: set[FileWriter] = set()

    def open(
        self, path: Path, producer: IPushProducer | None, *, replace: bool = False
    ) -> FileWriter:
        """
        Create C{path} and return its writer.

        Creating is a metadata operation, done here so that the file exists
        (and can be removed) from the start; only writes go to the workers.

        @param producer: paused while the file buffers too much.
        @param replace: truncate C{path} if it exists, instead of failing.
        @raise OSError: if C{path} cannot be created (or exists, unless
            C{replace}).
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        flags |= os.O_TRUNC if replace else os.O_EXCL
        fd = createFile(path, flags, self.mode)
        return FileWriter(self, fd, producer)

    def _run(self, job: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._pool, job, *args)

    def _overBudget(self, writer: FileWriter) -> bool:
        return writer.buffered > self.fileLimit or (
            self.buffered > self.totalLimit and writer.buffered > 0
        )

    def _pausing(self, writer: FileWriter) -> None:
        self._paused.add(writer)
        self._flush()

    def _flush(self) -> None:
        """
        Over the total bound: hand the workers what the other files hold
        short of a batch, or a paused file could wait on bytes held by
        files whose peers have gone quiet.
        """
        if self.buffered > self.totalLimit // 2:
            for writer in list(self._holding):
                writer._next()

    def _released(self, writer: FileWriter) -> None:
        self._paused.discard(writer)

    def _drained(self) -> None:
        """
        Some buffer shrank: resume the files that are back under half of
        their bounds (the other half is slack, so that a connection is not
        paused and resumed for every chunk).
        """
        if self.buffered > self.totalLimit // 2:
            if self._paused:
                self._flush()
            return
        for writer in [w for w in self._paused if w.buffered <= self.fileLimit // 2]:
            writer._resume()


class FileWriter:
    """
    One file (an upload or a download), written and hashed by a worker, one
    job at a time.

    All methods are called on the reactor thread.
    """

    def __init__(self, writers: FileWriters, fd: int, producer: IPushProducer | None) -> None:
        self._writers = writers
        self._fd: int | None = fd
        self._producer = producer
        self._paused = False
        self._digest = hashlib.sha256()
        self._size = 0
        self._chunks: list[bytes] = []
        self._pending = 0
        self.buffered = 0
        self._running = False
        self._closing = False
        self._error: OSError | None = None
        self._done: Deferred[Written] | None = None
        self._whenClosed: list[Deferred[None]] = []

    def write(self, data: bytes) -> None:
        """
        Append C{data} to the file, in a worker.

        @raise OSError: if an earlier write failed; nothing more is written.
        """
        if self._error is not None:
            raise self._error
        if self._closing:
            raise ValueError("write after close or abort")
        self._chunks.append(data)
        self._pending += len(data)
        self._account(len(data))
        if not self._running:
            self._writers._holding.add(self)
        overBudget = self._writers._overBudget(self)
        if overBudget or self._pending >= self._writers.batch:
            self._next()
        if overBudget and not self._paused and self._producer is not None:
            self._paused = True
            self._writers._pausing(self)
            self._producer.pauseProducing()

    def close(self) -> Deferred[Written]:
        """
        Write what is buffered and close the file.

        @return: fires with the L{Written} size and digest once the file is
            closed, or fails with the L{OSError} of the first failed write
            (the file is closed either way).
        """
        if self._closing:
            raise ValueError("already closed or aborted")
        self._closing = True
        self._done = Deferred()
        done = self._done
        if self._fd is None:
            self._finished()
        else:
            self._next()
        return done

    def abort(self) -> Deferred[None]:
        """
        Stop writing (what is buffered is dropped) and close the file.

        @return: fires once the file is closed (a job in flight finishes
            first), so that the file can then be removed.
        """
        self._closing = True
        self._drop()
        self._resume()
        done, self._done = self._done, None
        if done is not None:
            done.errback(CancelledError("the file was aborted"))
        if self._fd is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._whenClosed.append(d)
        self._next()
        return d

    def _account(self, size: int) -> None:
        self.buffered += size
        self._writers.buffered += size

    def _drop(self) -> None:
        self._writers._holding.discard(self)
        self._account(-self._pending)
        self._chunks = []
        self._pending = 0

    def _next(self) -> None:
        """
        Unless a job is running, start the next: write what has accumulated,
        and close the file if nothing more will come (or a write failed).
        """
        if self._running or self._fd is None:
            return
        self._writers._holding.discard(self)
        if self._error is not None:
            self._drop()
        chunks, self._chunks = self._chunks, []
        size, self._pending = self._pending, 0
        last = self._closing or self._error is not None
        if not chunks and not last:
            return
        self._running = True
        # Hashing and writing cost about the same: two workers do them side
        # by side, both finished before the next batch starts.
        d = gatherResults(
            [
                self._writers._run(_hashChunks, self._digest, chunks),
                self._writers._run(_writeChunks, self._fd, chunks, last),
            ],
            consumeErrors=True,
        )
        d.addErrback(lambda f: f.value.subFailure)
        d.addBoth(self._ran, size, last)

    def _ran(self, result: None | Failure, size: int, last: bool) -> None:
        self._running = False
        self._account(-size)
        if isinstance(result, Failure):
            if self._error is None:
                error = result.value
                self._error = error if isinstance(error, OSError) else OSError(str(error))
            # Let the rest of the body in, to meet the error at the next write.
            self._drop()
            self._resume()
        else:
            self._size += size
        self._writers._drained()
        if last:
            self._fd = None
            self._resume()
            self._finished()
        else:
            self._next()

    def _finished(self) -> None:
        waiting, self._whenClosed = self._whenClosed, []
        for d in waiting:
            d.callback(None)
        done, self._done = self._done, None
        if done is None:
            return
        if self._error is not None:
            done.errback(self._error)
        else:
            done.callback(Written(self._size, self._digest.hexdigest()))

    def _resume(self) -> None:
        self._writers._released(self)
        if self._paused:
            self._paused = False
            if self._producer is not None:
                self._producer.resumeProducing()


def _hashChunks(digest: Any, chunks: list[bytes]) -> None:
    """
    In a worker: add C{chunks} to C{digest}, in order.
    """
    for chunk in chunks:
        digest.update(chunk)


def _writeChunks(fd: int, chunks: list[bytes], last: bool) -> None:
    """
    In a worker: write C{chunks} in order; close C{fd} if C{last} (even if a
    write failed).
    """
    try:
        views = [memoryview(chunk) for chunk in chunks if chunk]
        first = 0
        while first < len(views):
            # One system call (and one release of the GIL) per batch.
            written = os.writev(fd, views[first : first + _IOV_MAX])
            while written and written >= len(views[first]):
                written -= len(views[first])
                first += 1
            if written:
                views[first] = views[first][written:]
    finally:
        if last:
            os.close(fd)
