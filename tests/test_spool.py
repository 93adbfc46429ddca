import json
import os
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from mxrecv.message.model import Message
from mxrecv.spool.layout import NEW, PENDING
from mxrecv.spool.seen import Claim, SeenIndex
from mxrecv.spool.store import Accepted, Spool, SpoolError, SpoolLocked, claimSpool
from mxrecv.testing.memory import DrivenThreadPool, MemoryReactor
from mxrecv.testing.seen import generateIndex

from .support import (
    DrivenPool,
    exampleMessage,
    fillUp,
    openSpool,
    reactorTurns,
    smallFilesystem,
    startedPool,
)


def sms(messageId: str = "mx-1", text: str = "Hello") -> Message:
    return exampleMessage(id=messageId, message=text)


def contents(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


class AcceptTests(TestCase):
    @inlineCallbacks
    def test_storedInNew(self):
        """
        An accepted message is in new/NAME/message.json, fsynced and renamed
        there, and nothing is left in tmp/.
        """
        spool = openSpool(self)
        accepted = yield spool.accept(sms("a/b"))
        self.assertEqual(accepted, Accepted("a=2Fb", duplicate=False))
        path = spool.dir(NEW) / "a=2Fb" / "message.json"
        self.assertEqual(Message.decode(path.read_bytes()), sms("a/b"))
        self.assertEqual(contents(spool.dir("tmp")), [])

    @inlineCallbacks
    def test_pending(self):
        spool = openSpool(self)
        yield spool.accept(sms("m"), PENDING)
        self.assertEqual(contents(spool.dir(PENDING)), ["m"])
        self.assertEqual(contents(spool.dir(NEW)), [])

    @inlineCallbacks
    def test_stagedFilesKept(self):
        """
        Files written in a staging directory arrive beside message.json.
        """
        spool = openSpool(self)
        staging = spool.stage()
        staging.file("mms.zip").write_bytes(b"PK zip")
        yield spool.accept(sms("m"), PENDING, staging)
        self.assertEqual(contents(spool.dir(PENDING) / "m"), ["message.json", "mms.zip"])
        self.assertEqual((spool.dir(PENDING) / "m" / "mms.zip").read_bytes(), b"PK zip")
        self.assertFalse(staging.path.exists())

    @inlineCallbacks
    def test_stagingNamesDistinct(self):
        """
        Staging directories are new and empty, each its own, however many
        are made at once (in the workers too), even where a name is taken.
        """
        spool = openSpool(self)
        (spool.dir("tmp") / "in.2").mkdir()
        (spool.dir("tmp") / "in.2" / "other").write_bytes(b"x")
        staged = [spool.stage() for _ in range(3)]
        yield gatherResults([spool.accept(sms(f"m{i}")) for i in range(20)])
        self.assertEqual(len({s.path for s in staged}), 3)
        self.assertNotIn(spool.dir("tmp") / "in.2", [s.path for s in staged])
        self.assertEqual([list(s.path.iterdir()) for s in staged], [[], [], []])
        self.assertEqual(len(contents(spool.dir(NEW))), 20)
        self.assertEqual(contents(spool.dir("tmp") / "in.2"), ["other"])

    @inlineCallbacks
    def test_duplicate(self):
        """
        A second message with the same id is reported as a duplicate and not
        stored again, even after the application removed the first.
        """
        spool = openSpool(self)
        yield spool.accept(sms(text="first"))
        (spool.dir(NEW) / "mx-1" / "message.json").unlink()
        (spool.dir(NEW) / "mx-1").rmdir()
        accepted = yield spool.accept(sms(text="second"))
        self.assertTrue(accepted.duplicate)
        self.assertEqual(contents(spool.dir(NEW)), [])

    @inlineCallbacks
    def test_concurrentSameId(self):
        """
        Retries that arrive while the first copy is being committed are
        answered with its outcome; one copy is stored.
        """
        spool = openSpool(self)
        results = yield gatherResults([spool.accept(sms(text=str(i))) for i in range(5)])
        self.assertEqual([r.duplicate for r in results], [False, True, True, True, True])
        stored = Message.decode((spool.dir(NEW) / "mx-1" / "message.json").read_bytes())
        self.assertEqual(stored.message, "0")

    @inlineCallbacks
    def test_manyConcurrent(self):
        """
        Many concurrent messages, on real threads, are all stored, each
        exactly once.
        """
        spool = openSpool(self)
        ids = [f"id-{i}" for i in range(200)]
        results = yield gatherResults([spool.accept(sms(i)) for i in ids])
        self.assertEqual({r.name for r in results}, set(ids))
        self.assertEqual(contents(spool.dir(NEW)), sorted(ids))
        seen = yield gatherResults([spool.isSeen(i) for i in ids])
        self.assertEqual(set(seen), {True})

    def test_groupCommit(self):
        """
        Messages prepared while a commit is under way are committed together:
        each message accepted at once adds one job (writing and fsyncing its
        own files) and nothing to the commits, which take as many jobs for
        200 messages as for 20; and the messages of the last group are
        answered together, by its last step.
        """

        def accept(count: int) -> tuple[int, list]:
            reactor, pool = MemoryReactor(), DrivenThreadPool()
            spool = Spool(Path(self.mktemp()), reactor=reactor, pool=pool)
            spool.open()
            self.addCleanup(spool.close)
            ids = [f"id-{i}" for i in range(count)]
            results = [spool.accept(sms(i)) for i in ids]
            lastSteps = 0

            def due() -> bool:
                return any(c.getTime() <= reactor.seconds() for c in reactor.getDelayedCalls())

            while pool.pending or due():
                if not pool.pending:
                    reactor.advance(0)
                    continue
                if len(pool.pending) == 1 and not due() and not results[1].called:
                    # Maybe the last step of the last group: nothing of it yet.
                    lastSteps += 1
                    for d in results[1:]:
                        self.assertNoResult(d)
                pool.runNext()
            self.assertGreater(lastSteps, 0)
            self.assertEqual({self.successResultOf(d).name for d in results}, set(ids))
            self.assertEqual(contents(spool.dir(NEW)), sorted(ids))
            return pool.ran, results

        few, _ = accept(20)
        many, _ = accept(200)
        self.assertEqual(many - few, 180)
        self.assertLess(few, 2 * 20)

    @inlineCallbacks
    def test_unwritable(self):
        """
        When the message cannot be put in place, accept fails with
        SpoolError; its id is seen already, so it stays staged and is put in
        place with the next group: the retry is answered as a duplicate,
        and the first copy is stored, once.
        """
        spool = openSpool(self)
        new = spool.dir(NEW)
        new.rmdir()
        new.write_bytes(b"not a directory")
        yield self.assertFailure(spool.accept(sms(text="first")), SpoolError)
        self.assertEqual(len(contents(spool.dir("tmp"))), 1)
        self.assertTrue((yield spool.isSeen("mx-1")))
        new.unlink()
        new.mkdir()
        accepted = yield spool.accept(sms(text="retry"))
        self.assertTrue(accepted.duplicate)
        self.assertEqual(contents(new), ["mx-1"])
        self.assertEqual(Message.decode((new / "mx-1" / "message.json").read_bytes()).message, "first")
        self.assertEqual(contents(spool.dir("tmp")), [])

    @inlineCallbacks
    def test_diskFull(self):
        """
        On a full filesystem accept fails with SpoolError and leaves nothing
        half-written; once space is freed the retry is stored.
        """
        root = smallFilesystem(self, "256k")
        spool = openSpool(self, root / "spool")
        filler = fillUp(root)
        failure = yield self.assertFailure(spool.accept(sms(text="x" * 20000)), SpoolError)
        self.assertIn("No space left", str(failure))
        self.assertEqual(contents(spool.dir("tmp")), [])
        self.assertEqual(contents(spool.dir(NEW)), [])
        filler.unlink()
        accepted = yield spool.accept(sms(text="x" * 20000))
        self.assertFalse(accepted.duplicate)
        self.assertEqual(contents(spool.dir(NEW)), ["mx-1"])

    @inlineCallbacks
    def test_indexFull(self):
        """
        When the message is written but its id cannot be marked seen (the
        index's transaction finds the disk full), the callback is refused
        with SpoolError, the message is not put in new/ and nothing is left
        in tmp/; once there is room the retry is stored.
        """
        root = smallFilesystem(self, "256k")
        spool = openSpool(self, root / "spool")
        filler = fillUp(root, leave=4096)
        failure = yield self.assertFailure(spool.accept(sms("mx-1")), SpoolError)
        self.assertIn("seen.sqlite", str(failure))
        self.assertEqual(contents(spool.dir(NEW)), [])
        self.assertEqual(contents(spool.dir("tmp")), [])
        self.assertFalse((yield spool.isSeen("mx-1")))
        filler.unlink()
        accepted = yield spool.accept(sms("mx-1"))
        self.assertEqual(accepted, Accepted("mx-1", duplicate=False))
        self.assertEqual(contents(spool.dir(NEW)), ["mx-1"])

    def test_rejectsSecondProcess(self):
        spool = openSpool(self)
        other = Spool(spool.root, reactor=reactor, pool=startedPool(self))
        self.assertRaises(SpoolLocked, other.open)


class RestartTests(TestCase):
    @inlineCallbacks
    def test_seenSurvivesRestart(self):
        """
        The seen-id index survives a restart, and covers messages the
        application already deleted.
        """
        root = Path(self.mktemp())
        first = openSpool(self, root)
        yield first.accept(sms("a"))
        yield first.accept(sms("b"))
        first.close()
        for name in ("a", "b"):
            for f in (root / NEW / name).iterdir():
                f.unlink()
            (root / NEW / name).rmdir()
        second = openSpool(self, root)
        self.assertTrue((yield second.accept(sms("a"))).duplicate)
        self.assertFalse((yield second.accept(sms("c"))).duplicate)

    @inlineCallbacks
    def test_startUpCleansTmp(self):
        """
        At start-up tmp/ is emptied: what was being received when the server
        stopped was never acknowledged, and its id is not seen.
        """
        root = Path(self.mktemp())
        first = openSpool(self, root)
        yield first.accept(sms("a"))
        first.close()
        (root / "tmp" / "in.leftover").mkdir()
        (root / "tmp" / "in.leftover" / "message.json").write_bytes(b"{")
        second = openSpool(self, root)
        self.assertEqual(contents(root / "tmp"), [])
        self.assertTrue((yield second.isSeen("a")))
        self.assertFalse((yield second.isSeen("leftover")))

    @inlineCallbacks
    def test_prune(self):
        """
        Ids older than the dedupe window are forgotten; younger ones are
        kept, and stay kept after a restart.
        """
        clock = Clock()
        clock.advance(1_800_000_000)
        root = Path(self.mktemp())
        spool = openSpool(self, root, clock=clock, dedupeSeconds=7 * 86400)
        yield spool.accept(sms("old"))
        clock.advance(6 * 86400)
        yield spool.accept(sms("young"))
        clock.advance(86400 + 1)
        forgotten = yield spool.prune()
        self.assertEqual(forgotten, 1)
        self.assertFalse((yield spool.isSeen("old")))
        self.assertTrue((yield spool.isSeen("young")))
        spool.close()
        again = openSpool(self, root, clock=clock)
        self.assertEqual(
            (yield gatherResults([again.isSeen("old"), again.isSeen("young")])), [False, True]
        )

    def test_messageJsonKeys(self):
        """
        message.json has every key of the public interface.
        """
        document = json.loads(sms().encode())
        self.assertEqual(
            list(document),
            ["id", "id_charset", "type", "from", "to", "cc", "date", "network", "subject", "message",
             "charset", "expiry", "delivery", "received", "mms_size", "mms_sha256",
             "parts", "text", "parts_error"],
        )



class PruneTests(TestCase):
    def oldIds(self, count: int) -> tuple[Clock, Path]:
        """
        A spool whose index holds C{count} ids accepted more than the dedupe
        window ago, and the clock of now.
        """
        clock = Clock()
        clock.advance(1_800_000_000)
        root = Path(self.mktemp())
        (root / "state").mkdir(parents=True)
        generateIndex(
            root / "state" / "seen.sqlite",
            count,
            oldest=clock.seconds() - 9 * 86400,
            newest=clock.seconds() - 8 * 86400,
        )
        return clock, root

    @inlineCallbacks
    def test_inChunks(self):
        """
        With no callbacks coming in, a prune forgets the old ids a chunk per
        transaction, and fires with how many it forgot.
        """
        clock, root = self.oldIds(10)
        spool = openSpool(self, root, clock=clock, pruneChunk=3)
        forgotten = yield spool.prune()
        self.assertEqual(forgotten, 10)
        self.assertFalse((yield spool.isSeen("g000000000000")))

    @inlineCallbacks
    def test_callbacksDuringPrune(self):
        """
        Callbacks accepted while a prune is under way are stored and stay
        seen; a second prune asked for meanwhile joins the first.
        """
        clock, root = self.oldIds(50)
        spool = openSpool(self, root, clock=clock, pruneChunk=2)
        first = spool.prune()
        accepted = yield gatherResults([spool.accept(sms(f"during-{i}")) for i in range(20)])
        second = spool.prune()
        self.assertEqual((yield first), 50)
        self.assertEqual((yield second), 50)
        self.assertEqual({a.duplicate for a in accepted}, {False})
        seen = yield gatherResults([spool.isSeen(f"during-{i}") for i in range(20)])
        self.assertEqual(set(seen), {True})
        self.assertEqual(len(contents(spool.dir(NEW))), 20)

    @inlineCallbacks
    def test_closeEndsPrune(self):
        """
        Closing the spool ends a prune under way with what it forgot so far.
        """
        clock, root = self.oldIds(10)
        spool = openSpool(self, root, clock=clock, pruneChunk=3)
        pruned = spool.prune()
        yield spool.whenIdle()
        spool.close()
        self.assertEqual((yield pruned), 3)


class HandOffTests(TestCase):
    @inlineCallbacks
    def test_onePerTurn(self):
        """
        The messages accepted in one turn of the reactor go to the worker
        threads together, each prepared by a job of its own, and come back
        together, once the last is done: one group commit for them all.
        """
        pool = DrivenPool()
        spool = Spool(Path(self.mktemp()), reactor=reactor, pool=pool)
        spool.open()
        self.addCleanup(spool.close)
        accepted = [spool.accept(sms(f"m{i}")) for i in range(3)]
        self.assertEqual(pool.queued(), [])
        yield reactorTurns(1)
        self.assertEqual(pool.queued(), ["_prepare"] * 3)
        yield pool.run("_prepare", "_prepare")
        yield reactorTurns(2)
        self.assertEqual(pool.queued(), ["_prepare"])
        yield pool.run("_prepare", "_claimGroup", "_placeGroup")
        results = yield gatherResults(accepted)
        self.assertEqual([r.name for r in results], ["m0", "m1", "m2"])
        self.assertEqual(pool.queued(), [])


class CrashWindowTests(TestCase):
    """
    A crash at each point of a group commit, the application taking what is
    in new/ meanwhile: the id is seen if and only if its message is stored,
    once.  The commit's blocking steps run in a pool the test drives; the
    crash is the spool closing (its lock and index released, as the kernel
    would) with the rest of its steps never run.
    """

    def drivenSpool(self, root: Path) -> tuple[Spool, DrivenPool]:
        pool = DrivenPool()
        spool = Spool(root, reactor=reactor, pool=pool)
        spool.open()
        self.addCleanup(spool.close)
        return spool, pool

    def stored(self, root: Path, name: str) -> list[str]:
        """
        The texts of the copies of message C{name} in new/ and cur/.
        """
        return [
            Message.decode((root / where / name / "message.json").read_bytes()).message
            for where in (NEW, "cur")
            if (root / where / name).is_dir()
        ]

    @inlineCallbacks
    def test_beforeClaim(self):
        """
        Written but not yet marked seen: rolled back at start-up, and the
        retry is stored.
        """
        root = Path(self.mktemp())
        spool, pool = self.drivenSpool(root)
        spool.accept(sms("a", text="first"))
        yield pool.run("_prepare")
        self.assertEqual(len(contents(root / "tmp")), 1)
        spool.close()
        again = openSpool(self, root)
        self.assertEqual(contents(root / "tmp"), [])
        self.assertFalse((yield again.isSeen("a")))
        self.assertFalse((yield again.accept(sms("a", text="retry"))).duplicate)
        self.assertEqual(self.stored(root, "a"), ["retry"])

    @inlineCallbacks
    def test_afterClaim(self):
        """
        Marked seen, not yet renamed into new/: another process's retry is
        a duplicate already, and start-up rolls the message forward.
        """
        root = Path(self.mktemp())
        spool, pool = self.drivenSpool(root)
        accepted = spool.accept(sms("a", text="first"))
        yield pool.run("_prepare", "_claimGroup")
        self.assertEqual(contents(root / NEW), [])
        other = SeenIndex(root / "state" / "seen.sqlite", root / "state" / "seen.lock")
        other.open()
        self.assertEqual(other.claim([Claim("a", "tmp/in.x", NEW, 0.0)])[0], set())
        other.close()
        spool.close()
        again = openSpool(self, root)
        self.assertEqual(self.stored(root, "a"), ["first"])
        self.assertEqual(contents(root / "tmp"), [])
        self.assertTrue((yield again.accept(sms("a", text="retry"))).duplicate)
        self.assertEqual(self.stored(root, "a"), ["first"])
        self.assertFalse(accepted.called)

    @inlineCallbacks
    def test_afterRename(self):
        """
        Renamed into new/ and taken by the application before the staged
        row went: start-up leaves it alone, and the retry is a duplicate.
        """
        root = Path(self.mktemp())
        spool, pool = self.drivenSpool(root)
        spool.accept(sms("a", text="first"))
        yield pool.run("_prepare", "_claimGroup", "_placeGroup")
        os.rename(root / NEW / "a", root / "cur" / "a")
        spool.close()
        index = SeenIndex(root / "state" / "seen.sqlite", root / "state" / "seen.lock")
        index.open()
        self.assertEqual([c.name for c in index.staged()], ["a"])
        index.close()
        again = openSpool(self, root)
        self.assertEqual(contents(root / NEW), [])
        self.assertTrue((yield again.accept(sms("a", text="retry"))).duplicate)
        self.assertEqual(self.stored(root, "a"), ["first"])
        again.close()
        index.open()
        self.assertEqual(index.staged(), [])
        index.close()

    @inlineCallbacks
    def test_rollForwardRetried(self):
        """
        A message that start-up cannot roll forward stays staged (its id
        seen) and is put in place with the next group commit.
        """
        root = Path(self.mktemp())
        spool, pool = self.drivenSpool(root)
        spool.accept(sms("a", text="first"))
        yield pool.run("_prepare", "_claimGroup")
        spool.close()
        (root / NEW / "a").write_bytes(b"in the way")
        again = openSpool(self, root)
        self.assertEqual(len(contents(root / "tmp")), 1)
        landed = []
        again.observeNew(landed.append)
        (root / NEW / "a").unlink()
        yield again.accept(sms("b"))
        # Observers hear of new messages after the acks of the group.
        yield reactorTurns(1)
        self.assertEqual(contents(root / NEW), ["a", "b"])
        self.assertEqual(self.stored(root, "a"), ["first"])
        self.assertEqual(sorted(landed), ["a", "b"])
        self.assertEqual(contents(root / "tmp"), [])

    @inlineCallbacks
    def test_workers(self):
        """
        With several worker processes on one spool, a worker that starts
        again rolls forward its own staged messages only (another worker's
        may be mid-commit), and a server claiming the spool rolls forward
        every process's.
        """
        root = Path(self.mktemp())
        lock = claimSpool(root)

        def worker(number: int, pool) -> Spool:
            spool = Spool(root, reactor=reactor, pool=pool, worker=number)
            spool.open(lock=os.dup(lock))
            self.addCleanup(spool.close)
            return spool

        pools = [DrivenPool(), DrivenPool()]
        first, second = worker(0, pools[0]), worker(1, pools[1])
        first.accept(sms("a", text="from 0"))
        second.accept(sms("b", text="from 1"))
        for pool in pools:
            yield pool.run("_prepare", "_claimGroup")
        first.close()
        worker(0, startedPool(self)).close()
        self.assertEqual(contents(root / NEW), ["a"])
        self.assertEqual([p.name for p in (root / "tmp").iterdir()], ["w1.in.1"])
        second.close()
        os.close(lock)
        self.addCleanup(os.close, claimSpool(root))
        self.assertEqual(contents(root / NEW), ["a", "b"])
        self.assertEqual(self.stored(root, "b"), ["from 1"])
        self.assertEqual(contents(root / "tmp"), [])


class FailedPlacementTests(TestCase):
    """
    A message whose id is durably seen but which cannot be renamed into
    place (the callback is answered 503): another process may already have
    answered MX Telecom's retry of it as a duplicate, so the message must
    still be stored.
    """

    @inlineCallbacks
    def test_duplicateAnsweredElsewhere(self):
        """
        Worker 0 marks an id seen; worker 1 answers the retry of it as a
        duplicate; then worker 0 cannot rename the message into new/.  The
        message is still put in place (with worker 0's next group), once.
        """
        root = Path(self.mktemp())
        lock = claimSpool(root)
        self.addCleanup(os.close, lock)
        pools = [DrivenPool(), DrivenPool()]
        first, second = (self.worker(root, lock, n, pools[n]) for n in (0, 1))
        accepted = first.accept(sms("a", text="first"))
        yield pools[0].run("_prepare", "_claimGroup")
        retry = second.accept(sms("a", text="retry"))
        yield pools[1].run("_prepare", "_claimGroup", "_placeGroup")
        self.assertEqual((yield retry), Accepted("a", duplicate=True))

        new = root / NEW
        new.rmdir()
        new.write_bytes(b"not a directory")
        yield pools[0].run("_placeGroup")
        yield self.assertFailure(accepted, SpoolError)
        new.unlink()
        new.mkdir()

        later = first.accept(sms("b"))
        yield pools[0].run("_prepare", "_claimGroup", "_placeGroup")
        yield later
        self.assertEqual(contents(new), ["a", "b"])
        self.assertEqual(
            Message.decode((new / "a" / "message.json").read_bytes()).message, "first"
        )
        self.assertEqual(contents(root / "tmp"), [])

    def worker(self, root: Path, lock: int, number: int, pool: DrivenPool) -> Spool:
        spool = Spool(root, reactor=reactor, pool=pool, worker=number)
        spool.open(lock=os.dup(lock))
        self.addCleanup(spool.close)
        return spool
