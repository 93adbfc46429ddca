"""
Tests for L{mxrecv.spool.durable}: the blocking steps that make files and
renames survive a crash, on real files (a small real filesystem where the
disk must fill up).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from twisted.trial.unittest import TestCase

from mxrecv.spool.durable import createFile, keepOnly, makeDirectory, replaceFile

from .support import fillUp, smallFilesystem


class ReplaceFileTests(TestCase):
    def test_replaced(self):
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "record.json"
        path.write_bytes(b"old")
        replaceFile(path, b"new")
        self.assertEqual(path.read_bytes(), b"new")
        self.assertEqual([p.name for p in directory.iterdir()], ["record.json"])

    def test_failedWriteLeavesNoTemporary(self):
        """
        When the new contents cannot be written (a full disk, after the
        temporary file was created), the error is raised, the old file is
        kept, and the temporary file is removed: nothing internal is left
        beside it to be moved on with the message.
        """
        root = smallFilesystem(self, "256k")
        directory = root / "message"
        directory.mkdir()
        path = directory / "retrieve.json"
        path.write_bytes(b"old")
        fillUp(root)
        e = self.assertRaises(OSError, replaceFile, path, b"x" * 8192)
        self.assertEqual(e.errno, errno.ENOSPC)
        self.assertEqual(path.read_bytes(), b"old")
        self.assertEqual([p.name for p in directory.iterdir()], ["retrieve.json"])


class KeepOnlyTests(TestCase):
    def test_keepOnly(self):
        """
        Everything but the names kept is removed, directories included;
        what is kept is left as it is; the answer says whether anything
        was removed.
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "message.json").write_bytes(b"{}")
        (directory / "parts").mkdir()
        (directory / "parts" / "a.txt").write_bytes(b"a")
        (directory / "retrieve.json.new").write_bytes(b"internal")
        (directory / "stray").mkdir()
        (directory / "stray" / "x").write_bytes(b"internal")
        self.assertTrue(keepOnly(directory, {"message.json", "parts", "mms.zip"}))
        self.assertEqual(sorted(p.name for p in directory.iterdir()), ["message.json", "parts"])
        self.assertEqual((directory / "parts" / "a.txt").read_bytes(), b"a")
        self.assertFalse(keepOnly(directory, {"message.json", "parts", "mms.zip"}))


class ModeTests(TestCase):
    def test_exactWhateverTheUmask(self):
        """
        Files and directories get exactly the mode asked for, however
        restrictive the umask, a directory's set-group-ID bit included.
        """
        previous = os.umask(0o077)
        self.addCleanup(os.umask, previous)
        directory = Path(self.mktemp())
        makeDirectory(directory, 0o2770)
        self.assertEqual(stat.S_IMODE(directory.stat().st_mode), 0o2770)
        os.close(createFile(directory / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660))
        self.assertEqual(stat.S_IMODE((directory / "f").stat().st_mode), 0o660)
        replaceFile(directory / "g", b"x", mode=0o644)
        self.assertEqual(stat.S_IMODE((directory / "g").stat().st_mode), 0o644)
        self.assertRaises(FileExistsError, makeDirectory, directory, 0o750)
