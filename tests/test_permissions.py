"""
The spool's permissions (C{[spool] mode} and C{group}): one mode for every
file mxrecv writes, the directories enterable by whoever may read, whatever
the umask, on a whole running mxrecv and its real files.
"""

from __future__ import annotations

import grp
import io
import os
import stat
from pathlib import Path

from attrs import evolve
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from mxrecv.config import SpoolConfig
from mxrecv.mms.complete import Completer
from mxrecv.ops.cli import requeue
from mxrecv.spool.layout import FAILED, NEW, PENDING, Attempt, Attempts
from mxrecv.spool.mode import SpoolMode

from .running import client, run, runningConfig
from .strategies import contentTypeFor, multipartBody
from .support import BOUNDARY, MMS_ZIP, SMS, exampleMessage, mmsFields, openSpool


def otherGroup() -> grp.struct_group:
    """
    A group other than this process's own that it may give files to (any,
    as root), or its own if there is none.
    """
    mine = os.getegid()
    allowed = set(os.getgroups())
    for group in grp.getgrall():
        if group.gr_gid != mine and (os.geteuid() == 0 or group.gr_gid in allowed):
            return group
    return grp.getgrgid(mine)


def permissions(root: Path) -> dict[str, tuple[int, int]]:
    """
    The mode and group of everything under C{root} but the files of
    C{state/} (mxrecv's own), by path relative to it.
    """
    found = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[0] == "state" and len(relative.parts) > 1:
            continue
        status = path.stat()
        found[str(relative)] = (stat.S_IMODE(status.st_mode), status.st_gid)
    return found


class PermissionTestCase(TestCase):
    def setUp(self) -> None:
        # The most restrictive umask: the modes must not depend on it.
        previous = os.umask(0o077)
        self.addCleanup(os.umask, previous)

    def assertModes(self, root: Path, directory: int, file: int, gid: int) -> dict:
        found = permissions(root)
        wrong = {
            path: (oct(mode), group)
            for path, (mode, group) in found.items()
            if (mode, group) != ((directory if (root / path).is_dir() else file), gid)
        }
        self.assertEqual(wrong, {}, f"expected {oct(directory)}/{oct(file)}, group {gid}")
        return found


class RunningTests(PermissionTestCase):
    @inlineCallbacks
    def fill(self, spoolConfig: SpoolConfig) -> Path:
        """
        Run mxrecv with C{spoolConfig} and give it an SMS (GET), an MMS
        (POST, unpacked into new/), and a GET-mode MMS notification (left in
        pending/: retrieval is off); return the spool.
        """
        config = runningConfig(self)
        config = evolve(config, spool=evolve(spoolConfig, dir=config.spool.dir))
        running = run(self, config)
        landed: Deferred[str] = Deferred()
        running.service.spool.observeNew(
            lambda name: name == "mms-1" and not landed.called and landed.callback(name)
        )
        http = client()
        response = yield http.get(running.url, params=SMS)
        self.assertEqual(response.code, 200)
        yield response.content()
        response = yield http.post(
            running.url,
            data=multipartBody(BOUNDARY, mmsFields(), MMS_ZIP),
            headers={b"Content-Type": [contentTypeFor(BOUNDARY)]},
        )
        self.assertEqual(response.code, 200)
        yield response.content()
        response = yield http.get(running.url, params={**SMS, "id": "get-mms", "type": "2"})
        self.assertEqual(response.code, 200)
        yield response.content()
        yield landed
        yield running.stop()
        root = config.spool.dir
        self.assertTrue((root / NEW / "mms-1" / "parts" / "photo.jpg").is_file())
        self.assertTrue((root / PENDING / "get-mms" / "message.json").is_file())
        return root

    @inlineCallbacks
    def test_default(self):
        """
        By default every file is 0640 and every directory 0750, parts/
        included, whatever the umask: an application in mxrecv's group can
        enter every directory and read every file.
        """
        root = yield self.fill(SpoolConfig())
        found = self.assertModes(root, 0o750, 0o640, os.getegid())
        for path in ("new/mx-1/message.json", "new/mms-1/mms.zip", "new/mms-1/parts",
                     "new/mms-1/parts/photo.jpg", "pending/get-mms", "tmp", "cur", "state"):
            self.assertIn(path, found)

    @inlineCallbacks
    def test_groupWritable(self):
        """
        With C{mode = 0o660} and a group, every file is 0660 and every
        directory 0770 and set-group-ID, all of the group: an application
        in it can take messages out of new/ (a rename needs write access to
        new/).
        """
        group = otherGroup()
        root = yield self.fill(SpoolConfig(mode=0o660, group=group.gr_name))
        self.assertModes(root, 0o2770, 0o660, group.gr_gid)
        os.rename(root / NEW / "mx-1", root / "cur" / "mx-1")


class FailedTests(PermissionTestCase):
    @inlineCallbacks
    def test_failedAndRequeued(self):
        """
        An MMS moved to failed/, and requeued from there (its message.json
        and retrieve.json rewritten), keeps the spool's mode.
        """
        group = otherGroup()
        mode = SpoolMode(0o660, group.gr_gid)
        spool = openSpool(self, mode=mode)
        yield spool.accept(exampleMessage(id="m1", type="mms"), PENDING)
        completer = Completer(spool, reactor=reactor, pool=spool._pool)
        yield completer.fail("m1", "gave up", Attempts.of([Attempt("t", "HTTP 404")]))
        self.assertModes(spool.root / FAILED, 0o2770, 0o660, group.gr_gid)
        requeue(spool.root, "m1", io.StringIO(), mode=mode)
        self.assertModes(spool.root / PENDING, 0o2770, 0o660, group.gr_gid)
        self.assertEqual(
            sorted(p.name for p in (spool.root / PENDING / "m1").iterdir()),
            ["message.json", "retrieve.json"],
        )

    def test_directoryModes(self):
        """
        A directory may be entered by each class that may read the files.
        """
        for file, directory in [(0o600, 0o700), (0o640, 0o750), (0o660, 0o770), (0o644, 0o755)]:
            self.assertEqual(SpoolMode(file).directory, directory)
            self.assertEqual(SpoolMode(file, 0).directory, directory | stat.S_ISGID)
