"""
One spool shared by the worker processes of one server (C{[server]
workers}): the lock taken once by the parent and inherited, and C{tmp/}
cleared of each worker's own leftovers only.
"""

import os
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from mxrecv.spool.layout import NEW, TMP
from mxrecv.spool.store import Spool, SpoolLocked, claimSpool

from .support import exampleMessage, openSpool, startedPool


def contents(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


class SharedSpoolTests(TestCase):
    def claim(self) -> tuple[Path, int]:
        root = Path(self.mktemp())
        lock = claimSpool(root)
        self.addCleanup(os.close, lock)
        return root, lock

    def worker(self, root: Path, lock: int, number: int) -> Spool:
        """
        Worker C{number}'s spool, opened with its own copy of the inherited
        lock (as a child process has after exec).
        """
        spool = Spool(root, reactor=reactor, pool=startedPool(self), worker=number)
        spool.open(lock=os.dup(lock))
        self.addCleanup(spool.close)
        return spool

    def test_claimEmptiesTmp(self):
        """
        Claiming the spool for a new server empties all of C{tmp/}: none of
        its processes has started.
        """
        root = Path(self.mktemp())
        openSpool(self, root).close()
        for name in ("in.1", "w0.in.2", "w1.in.3"):
            (root / TMP / name).mkdir()
        lock = claimSpool(root)
        self.addCleanup(os.close, lock)
        self.assertEqual(contents(root / TMP), [])

    def test_workerClearsOnlyItsOwn(self):
        """
        A worker that starts (again, after its predecessor died) removes its
        own leftovers from C{tmp/} and leaves the other workers' staging
        directories, in use, alone.
        """
        root, lock = self.claim()
        self.worker(root, lock, 0)
        for name in ("w0.in.7", "w1.in.1", "w1.in.2", "w10.in.1"):
            (root / TMP / name).mkdir()
        (root / TMP / "w1.in.2" / "mms.zip").write_bytes(b"PK")
        self.worker(root, lock, 1)
        self.assertEqual(contents(root / TMP), ["w0.in.7", "w10.in.1"])

    @inlineCallbacks
    def test_stagingNamedByWorker(self):
        """
        A worker's staging directories carry its number, so that two workers'
        counters never pick the same name; both store into the same spool.
        """
        root, lock = self.claim()
        first, second = self.worker(root, lock, 0), self.worker(root, lock, 1)
        self.assertTrue(first.stage().path.name.startswith("w0.in."))
        self.assertTrue(second.stage().path.name.startswith("w1.in."))
        yield first.accept(exampleMessage(id="a"))
        yield second.accept(exampleMessage(id="b"))
        self.assertEqual(contents(root / NEW), ["a", "b"])

    def test_otherServerRefused(self):
        """
        While any process of the server holds the inherited lock (here a
        worker, after the parent let go of its copy), another server is
        refused, whether it runs one process or several.
        """
        root = Path(self.mktemp())
        lock = claimSpool(root)
        self.worker(root, lock, 0)
        os.close(lock)
        other = Spool(root, reactor=reactor, pool=startedPool(self))
        self.assertRaises(SpoolLocked, other.open)
        self.assertRaises(SpoolLocked, claimSpool, root)

    def test_claimRefusedWhileServed(self):
        """
        A server of several processes cannot claim a spool that a server of
        one process has open.
        """
        spool = openSpool(self)
        self.assertRaises(SpoolLocked, claimSpool, spool.root)

    def test_notTheLock(self):
        """
        A worker given some other file as its lock refuses to open the spool.
        """
        root, lock = self.claim()
        other = os.open(root / "state" / "other", os.O_RDWR | os.O_CREAT, 0o600)
        spool = Spool(root, reactor=reactor, pool=startedPool(self), worker=0)
        e = self.assertRaises(SpoolLocked, spool.open, lock=other)
        self.assertIn("not the lock", str(e))
        os.close(other)

    def test_lockNotInherited(self):
        """
        The worker's lock is closed on exec: a program it runs (a delivery
        command) never holds the spool.
        """
        root, lock = self.claim()
        copy = os.dup(lock)
        os.set_inheritable(copy, True)
        spool = Spool(root, reactor=reactor, pool=startedPool(self), worker=0)
        spool.open(lock=copy)
        self.addCleanup(spool.close)
        self.assertFalse(os.get_inheritable(copy))
