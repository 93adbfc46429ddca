"""
The seen-id index (an SQLite database in WAL mode) and the import of the
journal that came before it.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from mxrecv.spool.layout import NEW, STATE
from mxrecv.spool.seen import Claim, PruneStep, SeenIndex, SeenIndexError, connectIndex
from mxrecv.spool.seenjournal import readJournal
from mxrecv.testing.seen import generateIndex

from .support import openSpool, turnsUntil


def claims(*names: str, at: float = 1000.0) -> list[Claim]:
    return [Claim(n, f"tmp/in.{n}", NEW, at) for n in names]


def seenOf(spool, *ids: str):
    """
    Fire with whether each id is seen by C{spool}.
    """
    return gatherResults([spool.isSeen(i) for i in ids])


class Counting:
    """
    Opens index connections that count the statements SQLite runs and the
    steps of its virtual machine (every row read costs steps).
    """

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.steps = 0
        self.connections: list[sqlite3.Connection] = []

    def __call__(self, path: Path) -> sqlite3.Connection:
        db = connectIndex(path)
        db.set_trace_callback(self.statements.append)
        db.set_progress_handler(self._step, 1)
        self.connections.append(db)
        return db

    def _step(self) -> int:
        self.steps += 1
        return 0


def openIndex(case: TestCase, directory: Path | None = None, **kwargs) -> SeenIndex:
    if directory is None:
        directory = Path(case.mktemp())
        directory.mkdir()
    index = SeenIndex(directory / "seen.sqlite", directory / "seen.lock", **kwargs)
    index.open()
    case.addCleanup(index.close)
    return index


def bytesRead() -> int:
    """
    Bytes this process has read with read(2) and friends so far (page
    cache hits included).
    """
    for line in Path("/proc/self/io").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "rchar":
            return int(value)
    raise AssertionError("no rchar in /proc/self/io")


class ClaimTests(TestCase):
    def test_newNamesWon(self):
        """
        A claim returns the names that were not seen before, and writes a
        staged row for each of them only.
        """
        index = openIndex(self)
        won, pruned = index.claim(claims("a", "b"))
        self.assertEqual((won, pruned), ({"a", "b"}, None))
        won, _ = index.claim(claims("b", "c"))
        self.assertEqual(won, {"c"})
        self.assertEqual([c.name for c in index.staged()], ["a", "b", "c"])
        self.assertIn("b", index)
        self.assertNotIn("d", index)

    def test_settledRowsDeleted(self):
        """
        The staged rows of settled directories are deleted with the next
        claim (or by settle).
        """
        index = openIndex(self)
        index.claim(claims("a", "b"))
        index.claim(claims("c"), settled=["tmp/in.a", "tmp/in.b"])
        self.assertEqual([c.dir for c in index.staged()], ["tmp/in.c"])
        index.settle(["tmp/in.c"])
        self.assertEqual(index.staged(), [])
        self.assertIn("a", index)

    def test_manyInOneTransaction(self):
        """
        Groups bigger than one statement's worth of names are claimed whole.
        """
        index = openIndex(self)
        names = [f"n{i}" for i in range(2500)]
        won, _ = index.claim(claims(*names))
        self.assertEqual(won, set(names))
        won, _ = index.claim(claims(*names[-10:], "other"))
        self.assertEqual(won, {"other"})

    def test_durable(self):
        """
        What one index claimed, another opened on the same file later sees.
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        first = openIndex(self, directory)
        first.claim(claims("a"))
        first.close()
        second = openIndex(self, directory)
        self.assertIn("a", second)
        self.assertEqual(second.staged(), claims("a", at=0.0))

    def test_synchronous(self):
        """
        With sync the WAL is fsynced at each commit (synchronous=FULL);
        without (spool.fsync = false), only at checkpoints (NORMAL).
        """
        for sync, expected in ((True, 2), (False, 1)):
            counting = Counting()
            openIndex(self, sync=sync, connect=counting)
            db = counting.connections[0]
            self.assertEqual(db.execute("PRAGMA synchronous").fetchone()[0], expected)
            self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")

    def test_fileMode(self):
        """
        The database is created with the spool's file mode, not SQLite's
        0644.
        """
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)
        index = openIndex(self)
        self.assertEqual(index.path.stat().st_mode & 0o777, 0o640)

    def test_notAnIndex(self):
        """
        A file that is not an index, or one of another schema version, is
        refused at open with the path in the error.
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "seen.sqlite").write_bytes(b"not a database" * 100)
        index = SeenIndex(directory / "seen.sqlite", directory / "seen.lock")
        error = self.assertRaises(SeenIndexError, index.open)
        self.assertIn("seen.sqlite", str(error))
        other = directory / "other.sqlite"
        db = sqlite3.connect(other)
        db.execute("PRAGMA user_version = 7")
        db.close()
        index = SeenIndex(other, directory / "seen.lock")
        self.assertIn("version 7", str(self.assertRaises(SeenIndexError, index.open)))

    def test_closed(self):
        index = openIndex(self)
        index.close()
        self.assertRaises(SeenIndexError, index.claim, claims("a"))


class SeveralProcessesTests(TestCase):
    @inlineCallbacks
    def test_writersQueueOnTheLockFile(self):
        """
        A writer waits for the lock file (woken as soon as it is released),
        not in SQLite's busy handler.
        """
        index = openIndex(self)
        lockPath = index.path.with_name("seen.lock")
        held = os.open(lockPath, os.O_RDWR)
        self.addCleanup(os.close, held)
        fcntl.flock(held, fcntl.LOCK_EX)
        d = deferToThread(index.claim, claims("a"))
        inode = os.stat(lockPath).st_ino

        def waiting() -> bool:
            return any(
                "->" in line and f":{inode} " in line
                for line in Path("/proc/locks").read_text().splitlines()
            )

        yield turnsUntil(waiting)
        self.assertFalse(d.called)
        fcntl.flock(held, fcntl.LOCK_UN)
        won, _ = yield d
        self.assertEqual(won, {"a"})

    def test_eachNameWonOnce(self):
        """
        Processes claiming the same names at the same time in groups each
        win a share of them, and every name is won by exactly one.
        """
        directory = Path(self.mktemp()).absolute()
        directory.mkdir()
        openIndex(self, directory).close()
        script = (
            "import sys\n"
            "from mxrecv.spool.seen import Claim, SeenIndex\n"
            "d, order = sys.argv[1], sys.argv[2]\n"
            "index = SeenIndex(__import__('pathlib').Path(d) / 'seen.sqlite',\n"
            "                  __import__('pathlib').Path(d) / 'seen.lock')\n"
            "index.open()\n"
            "names = [f'n{i}' for i in range(1200)]\n"
            "if order == 'down': names.reverse()\n"
            "for s in range(0, len(names), 16):\n"
            "    won, _ = index.claim([Claim(n, 'tmp/' + order + n, 'new', 1.0)\n"
            "                          for n in names[s:s + 16]])\n"
            "    print(*sorted(won))\n"
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in sys.path)}
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", script, str(directory), order],
                stdout=subprocess.PIPE,
                env=env,
            )
            for order in ("up", "down", "up")
        ]
        outputs = [p.communicate(timeout=120)[0].split() for p in processes]
        self.assertEqual([p.returncode for p in processes], [0, 0, 0])
        won = [name for output in outputs for name in output]
        self.assertEqual(sorted(won), sorted(f"n{i}".encode() for i in range(1200)))


class PruneTests(TestCase):
    def test_chunks(self):
        """
        A prune forgets the names older than its cutoff a chunk of rows at a
        time, and keeps the younger ones.
        """
        index = openIndex(self, pruneChunk=3)
        for t in range(10):
            index.claim(claims(f"n{t}", at=t))
        step = PruneStep(cutoff=7)
        counts = []
        while True:
            pruned = index.prune(step)
            counts.append(pruned.forgotten)
            if pruned.done:
                break
            step = pruned.next(step)
        self.assertEqual(counts, [3, 3, 1, 0])
        self.assertEqual([f"n{t}" in index for t in range(10)], [False] * 7 + [True] * 3)

    def test_withClaim(self):
        """
        A chunk of a prune rides in a claim's transaction.
        """
        index = openIndex(self, pruneChunk=2)
        index.claim(claims("old1", "old2", "old3", at=10))
        won, pruned = index.claim(claims("young", at=100), prune=PruneStep(cutoff=50))
        self.assertEqual((won, pruned.forgotten, pruned.done), ({"young"}, 2, False))
        self.assertNotIn("old2", index)
        self.assertIn("old3", index)

    @settings(max_examples=60, deadline=None)
    @given(
        times=st.lists(st.integers(min_value=0, max_value=100), max_size=40),
        cutoff=st.integers(min_value=0, max_value=110),
        chunk=st.integers(min_value=1, max_value=7),
    )
    def test_neverEarly(self, times, cutoff, chunk):
        """
        Whatever the order of the times (a clock stepped back, processes a
        little apart), a prune never forgets a name younger than its cutoff;
        when the times are in order it forgets every older one.
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        index = SeenIndex(directory / "s.sqlite", directory / "s.lock", pruneChunk=chunk)
        index.open()
        try:
            for i, t in enumerate(times):
                index.claim(claims(f"n{i}", at=t))
            step = PruneStep(cutoff)
            for _ in range(len(times) + 2):
                pruned = index.prune(step)
                self.assertLessEqual(pruned.forgotten, chunk)
                if pruned.done:
                    break
                step = pruned.next(step)
            else:
                self.fail("the prune did not end")
            kept = [f"n{i}" in index for i in range(len(times))]
        finally:
            index.close()
        for i, t in enumerate(times):
            if t >= cutoff:
                self.assertTrue(kept[i], (i, t))
        if times == sorted(times):
            self.assertEqual(kept, [t >= cutoff for t in times])


class StartUpTests(TestCase):
    def test_millionIdsStartUp(self):
        """
        Opening an index of a million names (and a spool with it) does the
        same work as opening an empty one: the same statements, the same
        steps of SQLite's virtual machine, and well under a megabyte read.
        The time it takes is measured in bench/bench_seen.py.
        """
        work = {}
        for count in (0, 1_000_000):
            directory = Path(self.mktemp())
            (directory / STATE).mkdir(parents=True)
            generateIndex(
                directory / STATE / "seen.sqlite", count, oldest=1000.0, newest=2000.0
            )
            counting = Counting()
            before = bytesRead()
            index = openIndex(self, directory / STATE, connect=counting)
            self.assertEqual(index.staged(), [])
            read = bytesRead() - before
            work[count] = (list(counting.statements), counting.steps)
            if count:
                self.assertIn("g000000000000", index)
            index.close()
            self.assertLess(read, 1024 * 1024)
            before = bytesRead()
            openSpool(self, directory).close()
            self.assertLess(bytesRead() - before, 1024 * 1024)
        self.assertEqual(work[1_000_000], work[0])
        self.assertGreater(work[0][1], 0)


class JournalTests(TestCase):
    def test_readJournal(self):
        """
        The old journal is read a line at a time; torn lines and names the
        spool could not have made are skipped.
        """
        path = Path(self.mktemp())
        path.write_bytes(b"100 a\n101 b c\nxx d\n102 ../e\n103 f\n104")
        self.assertEqual(list(readJournal(path)), [("a", 100.0), ("f", 103.0)])

    @inlineCallbacks
    def test_importedOnce(self):
        """
        On the first start after an upgrade the journal's names within the
        window, and the names of the messages in the spool (the old order
        could leave one unjournaled), are imported; the journal is kept as
        state/seen.imported and not read again.
        """
        root = Path(self.mktemp())
        (root / STATE).mkdir(parents=True)
        (root / NEW / "unjournaled").mkdir(parents=True)
        now = reactor.seconds()
        journal = root / STATE / "seen"
        journal.write_bytes(
            b"%d old\n%d young\n%d torn" % (now - 8 * 86400, now - 86400, now)
        )
        spool = openSpool(self, root)
        seen = yield seenOf(spool, "old", "young", "torn", "unjournaled")
        self.assertEqual(seen, [False, True, False, True])
        self.assertFalse(journal.exists())
        self.assertTrue((root / STATE / "seen.imported").is_file())
        spool.close()
        # A crash before the rename: imported again, to the same effect.
        (root / STATE / "seen.imported").rename(journal)
        with journal.open("ab") as f:
            f.write(b"\n%d later\n" % now)
        again = openSpool(self, root)
        seen = yield seenOf(again, "young", "later", "unjournaled")
        self.assertEqual(seen, [True, True, True])
