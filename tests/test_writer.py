"""
Tests for L{mxrecv.spool.writer}: uploads written and hashed by real worker
threads into real files, and the backpressure they put on the connection.
"""

import hashlib
import os
import resource
from pathlib import Path

from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from mxrecv.spool.layout import PENDING, TMP
from mxrecv.spool.writer import FileWriters, Written
from mxrecv.web.service import buildSite

from .strategies import contentTypeFor, examples, multipartBody
from .support import (
    GatedPool,
    mmsFields,
    openFiles,
    openSpool,
    rawExchange,
    serverConfig,
    startServer,
)

BOUNDARY = "mxrecv-writer-test"
FIELDS = mmsFields()


class Producer:
    """
    Stands in for the connection: records pauses and resumes, and refuses
    the ones a transport would not accept.
    """

    def __init__(self, case):
        self.case = case
        self.paused = False
        self.pauses = 0
        self.resumed = Deferred()

    def pauseProducing(self):
        self.case.assertFalse(self.paused, "paused twice")
        self.paused = True
        self.pauses += 1

    def resumeProducing(self):
        self.case.assertTrue(self.paused, "resumed while producing")
        self.paused = False
        resumed, self.resumed = self.resumed, Deferred()
        resumed.callback(None)

    def stopProducing(self):
        pass


class FileWriterTests(TestCase):
    def setUp(self):
        self.pool = GatedPool(self)
        self.directory = Path(self.mktemp()).absolute()
        self.directory.mkdir()

    @inlineCallbacks
    def test_anyChunkingKeepsOrderAndContent(self):
        """
        Whatever the chunks, how they interleave between uploads, the
        bounds, the batch size and the moments the reactor lets completions
        in: each file holds its chunks in order, with their digest and size;
        each producer is paused and resumed in turn; once the chunks stop
        coming every paused producer is resumed (nothing waits forever on
        bytes another upload holds); and nothing stays buffered.
        """
        strategy = st.tuples(
            st.lists(
                st.tuples(st.integers(0, 2), st.binary(max_size=3000), st.booleans()),
                max_size=40,
            ),
            st.integers(1, 5000),
            st.integers(1, 8000),
            st.integers(1, 4000),
        )
        for index, (chunks, fileLimit, totalLimit, batch) in enumerate(examples(strategy, 40)):
            writers = FileWriters(
                reactor=reactor,
                pool=self.pool.pool,
                fileLimit=fileLimit,
                totalLimit=totalLimit,
                batch=batch,
            )
            producers = [Producer(self) for _ in range(3)]
            paths = [self.directory / f"upload-{index}-{n}" for n in range(3)]
            uploads = [writers.open(path, p) for path, p in zip(paths, producers)]
            for n, data, turn in chunks:
                uploads[n].write(data)
                if turn:
                    yield deferLater(reactor, 0, lambda: None)
            for producer in producers:
                if producer.paused:
                    yield producer.resumed
            for n in range(3):
                written = yield uploads[n].close()
                content = b"".join(data for m, data, _ in chunks if m == n)
                self.assertEqual(paths[n].read_bytes(), content)
                self.assertEqual(
                    written, Written(len(content), hashlib.sha256(content).hexdigest())
                )
                self.assertFalse(producers[n].paused)
            self.assertEqual(writers.buffered, 0)
        self.assertEqual(openFiles(self.directory), [])

    test_anyChunkingKeepsOrderAndContent.timeout = 60

    @inlineCallbacks
    def test_pausedWhileBehind(self):
        """
        While the workers are held, the producer is paused once the upload
        buffers more than its bound, and resumed once they have caught up.
        """
        writers = FileWriters(reactor=reactor, pool=self.pool.pool, fileLimit=1000, batch=100)
        producer = Producer(self)
        writer = writers.open(self.directory / "upload", producer)
        self.pool.hold()
        fed = 0
        while not producer.paused:
            writer.write(b"x" * 300)
            fed += 300
        self.assertEqual(fed, 1200)
        resumed = producer.resumed
        self.pool.release()
        yield resumed
        self.assertLessEqual(writer.buffered, 500)
        self.assertEqual((yield writer.close()).size, 1200)

    @inlineCallbacks
    def test_totalBound(self):
        """
        Uploads that are each within their own bound are paused when all of
        them together buffer more than the total bound.
        """
        writers = FileWriters(
            reactor=reactor, pool=self.pool.pool, fileLimit=1000, totalLimit=1500, batch=100
        )
        self.pool.hold()
        producers = [Producer(self) for _ in range(3)]
        uploads = [writers.open(self.directory / f"u{i}", p) for i, p in enumerate(producers)]
        for upload in uploads:
            upload.write(b"y" * 600)
        self.assertEqual([p.paused for p in producers], [False, False, True])
        self.pool.release()
        yield producers[2].resumed
        closed = yield uploads[0].close()
        self.assertEqual(closed.size, 600)
        for upload in uploads[1:]:
            yield upload.close()

    @inlineCallbacks
    def test_heldBytesDoNotStallOthers(self):
        """
        Bytes that quiet uploads hold short of a batch are written once the
        total bound is reached, so that the upload paused by it resumes.
        """
        writers = FileWriters(
            reactor=reactor, pool=self.pool.pool, fileLimit=10000, totalLimit=1000, batch=10000
        )
        producers = [Producer(self) for _ in range(3)]
        uploads = [writers.open(self.directory / f"u{i}", p) for i, p in enumerate(producers)]
        for upload in uploads:
            upload.write(b"q" * 400)
        self.assertEqual([p.paused for p in producers], [False, False, True])
        yield producers[2].resumed
        self.assertLessEqual(writers.buffered, 500)
        for upload in uploads:
            self.assertEqual((yield upload.close()).size, 400)

    test_heldBytesDoNotStallOthers.timeout = 10

    @inlineCallbacks
    def test_abortWaitsForTheJobInFlight(self):
        """
        Aborting while a job is held drops what is buffered, fails the close
        with CancelledError, and fires once the file is closed.
        """
        writers = FileWriters(reactor=reactor, pool=self.pool.pool, batch=1)
        producer = Producer(self)
        writer = writers.open(self.directory / "upload", producer)
        self.pool.hold()
        writer.write(b"a" * 10)
        closing = writer.close()
        aborted = writer.abort()
        self.assertFailure(closing, CancelledError)
        yield closing
        self.assertFalse(aborted.called)
        self.assertEqual(len(openFiles(self.directory)), 1)
        self.pool.release()
        yield aborted
        self.assertEqual(openFiles(self.directory), [])
        self.assertEqual(writers.buffered, 0)


class RecordingTransport(StringTransport):
    """
    Twisted's StringTransport, telling when it is resumed or answered.
    """

    def __init__(self, **kw):
        super().__init__(**kw)
        self.resumed = Deferred()
        self.answered = Deferred()

    def resumeProducing(self):
        super().resumeProducing()
        resumed, self.resumed = self.resumed, Deferred()
        resumed.callback(None)

    def write(self, data):
        super().write(data)
        if b"\r\n\r\n" in self.value() and not self.answered.called:
            self.answered.callback(self.value())


class BackpressureTests(TestCase):
    """
    The callback site, its real spool and writers whose threads the test
    holds, on a connection the test feeds as fast as the server lets it.
    """

    def connect(self, fileLimit, **server):
        self.pool = GatedPool(self)
        self.spool = openSpool(self)
        self.clock = Clock()
        writers = FileWriters(
            reactor=reactor, pool=self.pool.pool, fileLimit=fileLimit, batch=fileLimit // 4
        )
        site = buildSite(serverConfig(**server), self.spool, self.clock, writers=writers)
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        self.transport = RecordingTransport(peerAddress=peer)
        self.protocol = site.buildProtocol(peer)
        self.protocol.makeConnection(self.transport)

    def request(self, zipData):
        body = multipartBody(BOUNDARY, FIELDS, zipData)
        return (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(body)
            + b"Content-Type: " + contentTypeFor(BOUNDARY) + b"\r\n\r\n" + body
        )

    def feedUntilPaused(self, data: bytes) -> int:
        """
        Feed C{data} in 64 KiB pieces for as long as the server reads.

        @return: how much of it was fed.
        """
        offset = 0
        while self.transport.producerState == "producing" and offset < len(data):
            self.protocol.dataReceived(data[offset : offset + 65536])
            offset += 65536
        return offset

    @inlineCallbacks
    def feedRest(self, data: bytes, offset: int):
        """
        Feed the rest of C{data} from C{offset}, as fast as the server lets
        it; fire with its answer.
        """
        while offset < len(data):
            if self.transport.producerState == "paused":
                yield self.transport.resumed
            self.protocol.dataReceived(data[offset : offset + 65536])
            offset += 65536
        answer = yield self.transport.answered
        return answer

    @inlineCallbacks
    def test_slowWriterPausesTheConnection(self):
        """
        While the writer is held, the connection is paused once an upload
        buffers more than its bound, and resumed once the writer has caught
        up; the zip arrives whole.
        """
        self.connect(fileLimit=256 * 1024)
        zipData = os.urandom(1024 * 1024)
        data = self.request(zipData)
        self.pool.hold()
        offset = self.feedUntilPaused(data)
        self.assertLess(offset, 512 * 1024)
        resumed = self.transport.resumed
        self.pool.release()
        yield resumed
        answer = yield self.feedRest(data, offset)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        stored = self.spool.dir(PENDING) / "mms-1" / "mms.zip"
        self.assertEqual(stored.read_bytes(), zipData)

    @inlineCallbacks
    def assertHeldBackNotTheClients(self, **server):
        """
        Hold an upload back (its writer behind) for twice twisted.web's idle
        timeout, and more than two windows of the minimum body rate: the
        connection is neither cut off nor answered meanwhile, and once the
        writer catches up the upload is answered 200.
        """
        self.connect(fileLimit=256 * 1024, **server)
        data = self.request(os.urandom(1024 * 1024))
        self.pool.hold()
        offset = self.feedUntilPaused(data)
        idle = self.protocol.timeOut
        self.assertLess(idle * 2, serverConfig().server.request_timeout)
        for _ in range(int(idle * 2)):
            self.clock.advance(1)
        self.assertEqual(self.transport.value(), b"")
        self.assertFalse(self.transport.disconnecting)
        resumed = self.transport.resumed
        self.pool.release()
        yield resumed
        answer = yield self.feedRest(data, offset)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)

    def test_pausedTimeNotTheClients(self):
        """
        While the server holds an upload back, neither the clock of the
        minimum body rate nor twisted.web's idle timeout runs: however long
        the disk takes, the client is not cut off for the time it was not
        let send (the request's own deadline still bounds it).
        """
        return self.assertHeldBackNotTheClients()

    def test_pausedTimeWithoutMinimumRate(self):
        """
        The same without a minimum body rate: twisted.web's idle timeout
        does not drop an upload the server holds back.
        """
        return self.assertHeldBackNotTheClients(min_body_rate=0.0)

    @inlineCallbacks
    def test_connectionLostWhileWriting(self):
        """
        A client that goes away once the whole body is in, while the writer
        is still behind, leaves nothing in tmp/, no file open, no call
        scheduled.
        """
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        self.connect(fileLimit=4 * 1024 * 1024)
        self.pool.hold()
        self.protocol.dataReceived(self.request(os.urandom(300000)))
        self.assertEqual(len(list(self.spool.dir(TMP).iterdir())), 1)
        self.protocol.connectionLost(Failure(ConnectionLost()))
        self.pool.release()
        yield self.spool.whenIdle()
        self.assertEqual(list(self.spool.dir(TMP).iterdir()), [])
        self.assertEqual(openFiles(self.spool.dir(TMP)), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.transport.value(), b"")


class WriteErrorTests(TestCase):
    def setUp(self):
        self.limits = resource.getrlimit(resource.RLIMIT_FSIZE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_FSIZE, self.limits)

    @inlineCallbacks
    def test_writeErrorIs503(self):
        """
        An upload that cannot be written (here: over the process's file size
        limit, EFBIG) is answered 503 so that MX Telecom retries, and its
        staging directory is removed.
        """
        server = startServer(self)
        # Above every file this process may be appending to (its logs).
        biggest = max(
            [os.fstat(fd).st_size for fd in (1, 2) if Path(f"/proc/self/fd/{fd}").is_file()]
            + [Path("test.log").stat().st_size if Path("test.log").exists() else 0]
        )
        limit = biggest + 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, self.limits[1]))
        body = multipartBody(BOUNDARY, FIELDS, b"z" * (limit + 200000))
        response = yield rawExchange(
            server.port,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(body)
            + b"Content-Type: " + contentTypeFor(BOUNDARY) + b"\r\n\r\n" + body,
        )
        resource.setrlimit(resource.RLIMIT_FSIZE, self.limits)
        self.assertTrue(response.startswith(b"HTTP/1.1 503 "), response[:200])
        self.assertIn(b"cannot write to the spool: File too large", response)
        yield server.spool.whenIdle()
        self.assertEqual(list(server.spool.dir(TMP).iterdir()), [])
        self.assertEqual(list(server.spool.dir(PENDING).iterdir()), [])
        self.assertEqual(openFiles(server.spool.dir(TMP)), [])
