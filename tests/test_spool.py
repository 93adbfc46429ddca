import json
import os
import time
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from mxrecv.message.model import Message
from mxrecv.spool.layout import NEW, PENDING
from mxrecv.spool.seen import SeenIndex
from mxrecv.spool.store import Accepted, Spool, SpoolError, SpoolLocked

from .support import exampleMessage, fillUp, openSpool, smallFilesystem, startedPool


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
    def test_groupCommit(self):
        """
        Many concurrent messages are all stored, each exactly once.
        """
        spool = openSpool(self)
        ids = [f"id-{i}" for i in range(200)]
        results = yield gatherResults([spool.accept(sms(i)) for i in ids])
        self.assertEqual({r.name for r in results}, set(ids))
        self.assertEqual(contents(spool.dir(NEW)), sorted(ids))
        journal = (spool.dir("state") / "seen").read_text().split()
        self.assertEqual(sorted(journal[1::2]), sorted(ids))

    @inlineCallbacks
    def test_unwritable(self):
        """
        When the message cannot be put in place, accept fails with
        SpoolError, nothing is left in tmp/, and the id is not remembered:
        the retry is stored.
        """
        spool = openSpool(self)
        new = spool.dir(NEW)
        new.rmdir()
        new.write_bytes(b"not a directory")
        yield self.assertFailure(spool.accept(sms()), SpoolError)
        self.assertEqual(contents(spool.dir("tmp")), [])
        self.assertFalse(spool.isSeen("mx-1"))
        new.unlink()
        new.mkdir()
        accepted = yield spool.accept(sms())
        self.assertFalse(accepted.duplicate)

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

    def fullButOnePage(self, journalSize: int):
        """
        A spool on a small filesystem whose journal is C{journalSize} bytes,
        then filled up but for one page: a message's message.json takes that
        page, so the rename into new/ works and the journal append fails.
        """
        root = smallFilesystem(self, "256k")
        (root / "spool" / "state").mkdir(parents=True)
        head = b"%d " % int(time.time())
        padding = head + b"p" * (journalSize - len(head) - 1) + b"\n"
        (root / "spool" / "state" / "seen").write_bytes(padding)
        spool = openSpool(self, root / "spool")
        self.assertEqual((root / "spool" / "state" / "seen").stat().st_size, journalSize)
        return spool, fillUp(root, leave=4096)

    def journal(self, spool: Spool) -> list[bytes]:
        return (spool.dir("state") / "seen").read_bytes().split(b"\n")

    @inlineCallbacks
    def test_journalFullMessageStored(self):
        """
        A message that is durable in new/ when only its journal line cannot
        be written is accepted (the 200 is due: it is stored, and a 503 would
        have MX Telecom send it again), and its line is written with the next
        group once there is room.
        """
        spool, filler = self.fullButOnePage(4096 - 5)
        accepted = yield spool.accept(sms("mx-1"))
        self.assertEqual(accepted, Accepted("mx-1", duplicate=False))
        self.assertEqual(contents(spool.dir(NEW)), ["mx-1"])
        self.assertNotIn(b"mx-1", b"\n".join(self.journal(spool)))
        again = yield spool.accept(sms("mx-1"))
        self.assertTrue(again.duplicate)
        filler.unlink()
        yield spool.accept(sms("mx-2"))
        names = [line.split(b" ")[1] for line in self.journal(spool)[1:] if line]
        self.assertEqual(names, [b"mx-1", b"mx-2"])

    @inlineCallbacks
    def test_unjournaledWrittenAtClose(self):
        """
        An id kept out of the journal by a full disk is written when the
        spool closes (a clean stop before any other commit), so that after a
        restart a retry is still a duplicate once the application has taken
        the message.
        """
        spool, filler = self.fullButOnePage(4096 - 5)
        yield spool.accept(sms("mx-1"))
        filler.unlink()
        spool.close()
        os.rename(spool.dir(NEW) / "mx-1", spool.dir("cur") / "mx-1")
        reopened = openSpool(self, spool.root)
        again = yield reopened.accept(sms("mx-1"))
        self.assertTrue(again.duplicate)

    @inlineCallbacks
    def test_unjournaledAtCloseStillFull(self):
        """
        When the disk is still full at close, the error is logged and the
        spool's lock released all the same.
        """
        spool, filler = self.fullButOnePage(4096 - 5)
        yield spool.accept(sms("mx-1"))
        spool.close()
        filler.unlink()
        reopened = openSpool(self, spool.root)
        self.assertEqual(contents(reopened.dir(NEW)), ["mx-1"])

    @inlineCallbacks
    def test_shortJournalWriteCutBack(self):
        """
        A journal append cut short by a full disk is cut back to its last
        whole line: the next line is not glued to a fragment, and both ids
        are remembered after a restart, after the application has taken
        their messages.
        """
        spool, filler = self.fullButOnePage(4096 - 12)
        yield spool.accept(sms("mx-1"))
        filler.unlink()
        yield spool.accept(sms("mx-2"))
        spool.close()
        for name in ("mx-1", "mx-2"):
            os.rename(spool.dir(NEW) / name, spool.dir("cur") / name)
        reopened = openSpool(self, spool.root)
        for name in ("mx-1", "mx-2"):
            accepted = yield reopened.accept(sms(name))
            self.assertTrue(accepted.duplicate, name)
        self.assertEqual(contents(reopened.dir(NEW)), [])

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
    def test_startUpCleansTmpAndReadsDirectories(self):
        """
        At start-up tmp/ is emptied, a torn journal line is ignored, and a
        message present in new/ but missing from the journal (a crash between
        rename and journal) counts as seen.
        """
        root = Path(self.mktemp())
        first = openSpool(self, root)
        yield first.accept(sms("a"))
        first.close()
        (root / "tmp" / "in.leftover").mkdir()
        (root / "tmp" / "in.leftover" / "message.json").write_bytes(b"{")
        (root / NEW / "crashed").mkdir()
        with (root / "state" / "seen").open("ab") as f:
            f.write(b"17000")
        second = openSpool(self, root)
        self.assertEqual(contents(root / "tmp"), [])
        self.assertTrue(second.isSeen("a"))
        self.assertTrue(second.isSeen("crashed"))

    @inlineCallbacks
    def test_prune(self):
        """
        Ids older than the dedupe window are forgotten, in memory and in the
        journal; younger ones are kept.
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
        self.assertFalse(spool.isSeen("old"))
        self.assertTrue(spool.isSeen("young"))
        journal = (root / "state" / "seen").read_text()
        self.assertNotIn("old", journal)
        self.assertIn("young", journal)
        spool.close()
        # The journal is appended to after a prune; "old" stays forgotten
        # once the application has taken it out of new/.
        (root / NEW / "old" / "message.json").unlink()
        (root / NEW / "old").rmdir()
        again = openSpool(self, root, clock=clock)
        yield again.accept(sms("later"))
        self.assertEqual(
            [line.split()[1] for line in (root / "state" / "seen").read_text().splitlines()],
            ["young", "later"],
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



class PruneFailureTests(TestCase):
    @inlineCallbacks
    def test_failedPruneFailsOnlyThePrune(self):
        """
        A prune that cannot rewrite the journal fails alone: messages
        committed with it and after it are accepted, and journaled.
        """
        clock = Clock()
        clock.advance(1_800_000_000)
        root = Path(self.mktemp())
        spool = openSpool(self, root, clock=clock)
        (root / "state" / "seen.new").mkdir()
        pruned = spool.prune()
        during = spool.accept(sms("during"))
        yield self.assertFailure(pruned, OSError)
        self.assertFalse((yield during).duplicate)
        self.assertFalse((yield spool.accept(sms("after"))).duplicate)
        (root / "state" / "seen.new").rmdir()
        spool.close()
        for name in ("during", "after"):
            for f in (root / NEW / name).iterdir():
                f.unlink()
            (root / NEW / name).rmdir()
        again = openSpool(self, root, clock=clock)
        self.assertTrue(again.isSeen("during"))
        self.assertTrue(again.isSeen("after"))

    def test_rewriteKeepsJournaledNames(self):
        """
        A prune keeps what the journal holds, not only what memory knows:
        the names of the group committed with the prune are journaled
        before the reactor learns of them.
        """
        path = Path(self.mktemp())
        index = SeenIndex(path, keepSeconds=100)
        index.load(1000.0)
        index.append([("journaled", 1000.0), ("old", 800.0)])
        self.assertNotIn("journaled", index)
        cutoff = index.rewrite(1050.0)
        self.assertEqual(path.read_text().split(), ["1000", "journaled"])
        index.add("journaled", 1000.0)
        index.add("old", 800.0)
        self.assertEqual(index.forget(cutoff), 1)
        self.assertIn("journaled", index)
        index.append([("later", 1060.0)])
        index.close()
        self.assertEqual(path.read_text().split(), ["1000", "journaled", "1060", "later"])
