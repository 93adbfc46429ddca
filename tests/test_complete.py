"""
Completing an MMS out of pending/, and taking up what is there.
"""

import errno
import subprocess
import zipfile
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from mxrecv.message.model import Message
from mxrecv.mms.complete import Completer
from mxrecv.mms.pending import SWEEP_SECONDS, PendingService, PendingWork
from mxrecv.mms.recover import Recovery
from mxrecv.mms.unpack import unpackInto
from mxrecv.ops.metrics import Metrics
from mxrecv.spool.layout import FAILED, MESSAGE_JSON, MMS_ZIP, NEW, PENDING, Attempts
from mxrecv.testing.zips import makeZip

from .support import (
    LogWatch,
    exampleMessage,
    httpClient,
    openSpool,
    smallFilesystem,
    startedPool,
    startServer,
    turnsUntil,
)


def pendingMMS(spool, messageId: str) -> Deferred:
    """
    An MMS with its zip, accepted into pending/ without being taken up.
    """
    staging = spool.stage()
    staging.file(MMS_ZIP).write_bytes(makeZip(2048, name="image1.jpg"))
    return spool.accept(exampleMessage(id=messageId, type="mms"), PENDING, staging)


class CompleterTests(TestCase):
    @inlineCallbacks
    def test_onceAtATime(self):
        """
        Two completions of one message at once unpack it once; both learn
        the outcome, and new/NAME has the parts message.json lists.
        """
        spool = openSpool(self)
        calls = []

        def unpack(zipPath: Path, partsDir: Path):
            calls.append(zipPath)
            return unpackInto(zipPath, partsDir)

        completer = Completer(spool, reactor=reactor, pool=startedPool(self), unpack=unpack)
        yield pendingMMS(spool, "m1")
        first, second = yield gatherResults([completer.complete("m1"), completer.complete("m1")])
        self.assertEqual(len(calls), 1)
        self.assertEqual(first, second)
        stored = Message.decode((spool.dir(NEW) / "m1" / MESSAGE_JSON).read_bytes())
        self.assertEqual([p.name for p in stored.parts], ["mms.smil", "text.txt", "image1.jpg"])
        for part in stored.parts:
            self.assertTrue((spool.dir(NEW) / "m1" / part.path).is_file())
        self.assertFalse((spool.dir(PENDING) / "m1").exists())

    @inlineCallbacks
    def test_unpackerBugLoggedMessageDelivered(self):
        """
        An unpacker that fails in a way it does not foresee (a bug) does not
        turn into data alone: the failure is logged with its traceback, and
        the message still reaches new/ with its zip, no parts and the reason
        in parts_error, as a zip refused as unsafe does.
        """
        spool = openSpool(self)

        def unpack(zipPath: Path, partsDir: Path):
            partsDir.mkdir()
            raise KeyError("a bug")

        completer = Completer(spool, reactor=reactor, pool=startedPool(self), unpack=unpack)
        yield pendingMMS(spool, "m1")
        message = yield completer.complete("m1")
        [logged] = self.flushLoggedErrors(KeyError)
        self.assertIn("a bug", logged.getTraceback())
        self.assertEqual(message.parts, ())
        self.assertEqual(
            message.parts_error, "the zip could not be unpacked (an internal error, logged)"
        )
        stored = Message.decode((spool.dir(NEW) / "m1" / MESSAGE_JSON).read_bytes())
        self.assertEqual(stored, message)
        self.assertEqual(
            sorted(p.name for p in (spool.dir(NEW) / "m1").iterdir()), ["message.json", "mms.zip"]
        )

    @inlineCallbacks
    def test_nothingInternalReachesNew(self):
        """
        Whatever internal files a crash or a failed write left in
        pending/NAME (a half-written replacement of message.json or of the
        retrieval record, the record itself, a partial download, a stray
        directory), the message arrives in new/NAME with only what the
        layout allows: message.json, mms.zip and parts/.
        """
        spool = openSpool(self)
        completer = Completer(spool, reactor=reactor, pool=startedPool(self))
        yield pendingMMS(spool, "m1")
        directory = spool.dir(PENDING) / "m1"
        for leftover in ("message.json.new", "retrieve.json", "retrieve.json.new", "mms.zip.part"):
            (directory / leftover).write_bytes(b"internal")
        (directory / "stray").mkdir()
        (directory / "stray" / "file").write_bytes(b"internal")
        yield completer.complete("m1")
        self.assertEqual(
            sorted(p.name for p in (spool.dir(NEW) / "m1").iterdir()),
            [MESSAGE_JSON, MMS_ZIP, "parts"],
        )

    @inlineCallbacks
    def test_nothingInternalReachesFailed(self):
        """
        A message moved to failed/ likewise keeps only message.json (and
        mms.zip, if it had one).
        """
        spool = openSpool(self)
        completer = Completer(spool, reactor=reactor, pool=startedPool(self))
        yield spool.accept(exampleMessage(id="m2", type="mms"), PENDING)
        directory = spool.dir(PENDING) / "m2"
        for leftover in ("message.json.new", "retrieve.json", "retrieve.json.new"):
            (directory / leftover).write_bytes(b"internal")
        yield completer.fail("m2", "gave up", Attempts())
        self.assertEqual(
            [p.name for p in (spool.dir(FAILED) / "m2").iterdir()], [MESSAGE_JSON]
        )


class TakeUpTests(TestCase):
    @inlineCallbacks
    def test_duplicateTakesUpStrandedMMS(self):
        """
        An MMS left in pending/ with nothing working on it (its first commit
        failed after the rename, so its callback got 503) is completed when
        MX Telecom's retry arrives, although the retry is a duplicate.
        """
        spool = openSpool(self)
        completer = Completer(spool, reactor=reactor, pool=startedPool(self))
        pending = PendingWork(spool, completer, clock=Clock())
        yield pendingMMS(spool, "stranded")
        completed: Deferred[None] = Deferred()

        def observe(event):
            if event.get("name") == "stranded" and "parts" in event and not completed.called:
                completed.callback(None)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        server = startServer(self, spool=spool, onPending=pending)
        response = yield httpClient(self).get(
            server.url,
            params={"id": "stranded", "from": "1", "to": "2", "type": "2",
                    "date": "2026-11-25 10:30:00"},
        )
        self.assertEqual(response.code, 200)
        yield completed
        self.assertTrue((spool.dir(NEW) / "stranded" / MMS_ZIP).is_file())
        self.assertFalse((spool.dir(PENDING) / "stranded").exists())

    @inlineCallbacks
    def test_takingUpWhatIsNotThere(self):
        """
        Taking up a name that is not (or no longer) in pending/ does nothing.
        """
        spool = openSpool(self)
        retrieved = []

        class Retrieval:
            __call__ = staticmethod(retrieved.append)

            def handles(self, name):
                return False

            def whenDone(self, name):
                return Deferred()

        pending = PendingWork(
            spool,
            Completer(spool, reactor=reactor, pool=startedPool(self)),
            Retrieval(),
            clock=Clock(),
        )
        pending("absent")
        yield spool.accept(exampleMessage(id="n1", type="mms"), PENDING)
        pending("n1")
        self.assertEqual(retrieved, ["n1"])


class DiskTroubleTests(TestCase):
    @inlineCallbacks
    def pendingOverSize(self):
        """
        A spool on a 512 KiB filesystem with MMS m1 in pending/, whose zip
        unpacks to 900 KiB.
        """
        root = smallFilesystem(self, "512k")
        spool = openSpool(self, root / "spool")
        staging = spool.stage()
        with zipfile.ZipFile(staging.file(MMS_ZIP), "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("big.txt", b"\0" * (900 * 1024))
        yield spool.accept(exampleMessage(id="m1", type="mms"), PENDING, staging)
        return root, spool

    @inlineCallbacks
    def test_fullDiskKeepsMessagePending(self):
        """
        When the disk fills up while the parts are written, the MMS stays in
        pending/ with its zip (not delivered without parts), and is
        completed once there is room.
        """
        root, spool = yield self.pendingOverSize()
        completer = Completer(spool, reactor=reactor, pool=startedPool(self))
        failure = yield self.assertFailure(completer.complete("m1"), OSError)
        self.assertEqual(failure.errno, errno.ENOSPC)
        self.assertEqual(sorted(p.name for p in (spool.dir(PENDING) / "m1").iterdir()),
                         [MESSAGE_JSON, MMS_ZIP])
        subprocess.run(["mount", "-o", "remount,size=8m", str(root)], check=True)
        message = yield completer.complete("m1")
        self.assertIsNone(message.parts_error)
        self.assertEqual([p.size for p in message.parts], [900 * 1024])

    @inlineCallbacks
    def test_recoveredOnItsOwn(self):
        """
        An MMS whose completion stops on a full disk is taken up again on
        its own, not at the next sweep of pending/: after 1 s, then 2 s, 4
        s... (growing, up to a minute) while the disk stays full, and
        completed at the first try once there is room.  Until then the
        metrics (and so /health) count it as waiting.
        """
        root, spool = yield self.pendingOverSize()
        completer = Completer(spool, reactor=reactor, pool=startedPool(self))
        landed: Deferred[str] = Deferred()
        spool.observeNew(landed.callback)
        clock = Clock()
        metrics = Metrics()
        pending = PendingWork(spool, completer, clock=clock, metrics=metrics)
        service = PendingService(pending, clock)
        log = LogWatch()
        globalLogPublisher.addObserver(log)
        self.addCleanup(globalLogPublisher.removeObserver, log)

        def stopped(event):
            return "stopped on a local error" in event.get("log_format", "")

        def waiting():
            return metrics.registry.get_sample_value("mxrecv_mms_local_error_waiting")

        def nextTries():
            return sorted(c.getTime() for c in clock.getDelayedCalls())

        failed = log.next(stopped)
        service.startService()
        self.addCleanup(service.stopService)
        # The start-up's completion, which the disk stops.
        yield failed
        self.assertEqual((pending.recovery.waiting, waiting()), (1, 1))
        self.assertEqual(nextTries(), [1.0, SWEEP_SECONDS])
        for now, wait in [(1.0, 2.0), (3.0, 4.0)]:
            failed = log.next(stopped)
            clock.advance(now - clock.seconds())
            yield failed
            self.assertEqual(nextTries(), [now + wait, SWEEP_SECONDS])
        self.flushLoggedErrors(OSError)
        self.assertFalse(landed.called)
        subprocess.run(["mount", "-o", "remount,size=8m", str(root)], check=True)
        clock.advance(7.0 - clock.seconds())
        # A bound on a failure, not a synchronisation: only the new try
        # would complete it before the sweep.
        name = yield landed.addTimeout(30, reactor)
        self.assertEqual(name, "m1")
        self.assertTrue((spool.dir(NEW) / "m1" / "parts" / "big.txt").is_file())
        yield turnsUntil(lambda: pending.recovery.waiting == 0)
        self.assertEqual(waiting(), 0)
        self.assertEqual(nextTries(), [SWEEP_SECONDS])

    @inlineCallbacks
    def test_sweepTakesUpWhatNothingHolds(self):
        """
        An MMS put in pending/ while nothing takes it up (moved back by
        mxrecv requeue, without --admin) is completed at the next sweep of
        pending/.
        """
        spool = openSpool(self)
        completer = Completer(spool, reactor=reactor, pool=startedPool(self))
        landed: Deferred[str] = Deferred()
        spool.observeNew(landed.callback)
        clock = Clock()
        service = PendingService(PendingWork(spool, completer, clock=clock), clock)
        service.startService()
        self.addCleanup(service.stopService)
        yield service.resumed
        yield pendingMMS(spool, "late")
        clock.advance(SWEEP_SECONDS - 1)
        self.assertFalse(landed.called)
        clock.advance(1)
        # A bound on a failure, not a synchronisation: without the sweep
        # nothing would ever complete it.
        name = yield landed.addTimeout(30, reactor)
        self.assertEqual(name, "late")


class RecoveryTests(TestCase):
    def test_backoff(self):
        """
        An MMS held up by a local error is taken up again after 1 s, then
        twice as long after each failure, up to a minute; once it is past
        it, the next error starts again at 1 s.  Stopped, nothing more is
        taken up.
        """
        clock = Clock()
        takenUp = []
        recovery = Recovery(clock, takenUp.append)
        waits = []
        for _ in range(9):
            waits.append(recovery.failed("m1"))
            clock.advance(waits[-1])
        self.assertEqual(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60])
        self.assertEqual(takenUp, ["m1"] * 9)
        self.assertEqual(recovery.waiting, 1)
        recovery.recovered("m1")
        self.assertEqual(recovery.waiting, 0)
        self.assertEqual(recovery.failed("m1"), 1)
        self.assertEqual(recovery.failed("m2"), 1)
        self.assertEqual(recovery.waiting, 2)
        recovery.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertIsNone(recovery.failed("m3"))
        clock.advance(120)
        self.assertEqual(takenUp, ["m1"] * 9)
