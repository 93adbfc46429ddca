"""
The inbox's catalog against a real spool directory: it follows what mxrecv
and the application do to the folders, lists a folder again only when its
time changed (or was too recent to trust), and pages through everything
exactly once.
"""

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mxrecv.ops.inbox.catalog import RACY_MARGIN_NS, SCHEMA_VERSION, Catalog, CatalogBusy
from mxrecv.ops.inbox.query import Query, parseQuery
from mxrecv.testing.examples import mms, put, sms

SECOND = 1_000_000_000


def stamp(i: int) -> str:
    return f"2026-11-25T{10 + i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}.000Z"


class Clock:
    """
    The wall clock in nanoseconds, unless a test sets C{now}.
    """

    def __init__(self) -> None:
        self.now = None

    def __call__(self) -> int:
        return self.now if self.now is not None else time.time_ns()


class CatalogTests(SynchronousTestCase):
    def setUp(self):
        self.root = Path(self.mktemp())
        put(self.root, "new", sms("first", stamp(0)))
        self.clock = Clock()
        self.catalog = self.open()

    def open(self, root=None):
        catalog = Catalog(root or self.root, now=self.clock)
        catalog.open()
        self.addCleanup(catalog.close)
        return catalog

    def names(self, query=Query(), catalog=None):
        catalog = catalog or self.catalog
        catalog.refresh()
        return [(r.folder, r.name) for r in catalog.page(query).rows]

    def test_followsTheFolders(self):
        """
        What lands in new/, what the application moves to cur/ or deletes,
        what fails and is requeued: each refresh shows the spool as it is,
        newest first.
        """
        self.assertEqual(self.names(), [("new", "first")])
        put(self.root, "new", sms("second", stamp(1)))
        put(self.root, "failed", mms("third", stamp(2)), error="expired")
        self.assertEqual(
            self.names(), [("failed", "third"), ("new", "second"), ("new", "first")]
        )
        os.rename(self.root / "new" / "first", self.root / "cur" / "first")
        shutil.rmtree(self.root / "new" / "second")
        os.rename(self.root / "failed" / "third", self.root / "pending" / "third")
        self.assertEqual(self.names(), [("pending", "third"), ("cur", "first")])
        page = self.catalog.page(Query())
        self.assertEqual(page.counts, {"new": 0, "cur": 1, "pending": 1, "failed": 0})

    def test_unchangedFolderNotListed(self):
        """
        A folder whose time is unchanged (and old enough to trust) is not
        listed: an entry slipped in with the folder's time put back stays
        unseen, which shows the listing was skipped.
        """
        self.clock.now = 1 << 62
        self.names()
        folder = self.root / "new"
        before = os.stat(folder)
        put(self.root, "new", sms("sneaky", stamp(5)))
        os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))
        self.assertEqual(self.catalog.refresh(), 0)
        self.assertEqual(self.names(), [("new", "first")])

    def test_racyFolderListedAgain(self):
        """
        A folder whose time was within the margin of the listing is listed
        again next time, even if its time has not changed since: a change
        in the same clock tick is not missed.
        """
        folder = self.root / "new"
        self.clock.now = os.stat(folder).st_mtime_ns + RACY_MARGIN_NS // 2
        self.names()
        before = os.stat(folder)
        put(self.root, "new", sms("same-tick", stamp(5)))
        os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))
        self.assertEqual(self.names(), [("new", "same-tick"), ("new", "first")])

    def test_rewrittenInPlace(self):
        """
        A failed message requeued and failed again between two refreshes
        (the same name in failed/, its message.json replaced) is read
        again: its reason is the new one.
        """
        put(self.root, "failed", mms("m", stamp(1)), error="first reason")
        self.names()
        directory = self.root / "failed" / "m"
        later = os.stat(directory).st_mtime_ns + SECOND
        os.rename(directory, self.root / "pending" / "m")
        document = json.loads((self.root / "pending" / "m" / "message.json").read_text())
        document["error"] = "second reason"
        (self.root / "pending" / "m" / "new.json").write_text(json.dumps(document))
        os.rename(self.root / "pending" / "m" / "new.json", self.root / "pending" / "m" / "message.json")
        os.rename(self.root / "pending" / "m", directory)
        # As the rewrite leaves it, however fast this test runs.
        os.utime(directory, ns=(later, later))
        self.catalog.refresh()
        self.assertEqual(self.catalog.page(Query(folder="failed")).rows[0].problem, "second reason")

    def test_unreadableListed(self):
        """
        A message whose message.json is missing or broken is listed with
        the reason; a stray file is not a message.
        """
        (self.root / "cur" / "broken").mkdir()
        (self.root / "cur" / "broken" / "message.json").write_text("{nope")
        (self.root / "cur" / "empty").mkdir()
        (self.root / "cur" / "stray").write_text("not a directory")
        (self.root / "cur" / ".hidden").mkdir()
        rows = {r.name: r.problem for r in self._refreshAll(Query(folder="cur"))}
        self.assertEqual(
            rows, {"broken": "message.json is not valid JSON", "empty": "no message.json"}
        )

    def test_openedAsThePageOpensIt(self):
        """
        A message.json is read as the message's page reads it: a FIFO in
        its place is not waited on (the refresh would hang, and every page
        of the inbox with it), a symbolic link to a document elsewhere is
        not followed; each is listed as having no message.json.
        """
        (self.root / "cur" / "fifo").mkdir()
        os.mkfifo(self.root / "cur" / "fifo" / "message.json")
        (self.root / "state" / "elsewhere.json").write_text(json.dumps({"id": "s3cret"}))
        (self.root / "cur" / "linked").mkdir()
        os.symlink(
            self.root / "state" / "elsewhere.json", self.root / "cur" / "linked" / "message.json"
        )
        rows = {r.name: (r.id, r.problem) for r in self._refreshAll(Query(folder="cur"))}
        self.assertEqual(
            rows, {"fifo": ("", "no message.json"), "linked": ("", "no message.json")}
        )

    def test_halfWrittenReadAgain(self):
        """
        A message.json caught half-written (copied into cur/ in place rather
        than renamed) is listed with the reason, and read again at the next
        refresh, though its folder's time has not changed.
        """
        self.clock.now = 1 << 62
        directory = self.root / "cur" / "copied"
        directory.mkdir()
        (directory / "message.json").write_text('{"id": "copied", "rec')
        rows = self._refreshAll(Query(folder="cur"))
        self.assertEqual([r.problem for r in rows], ["message.json is not valid JSON"])
        folder = os.stat(self.root / "cur")
        (directory / "message.json").write_text(
            json.dumps({"id": "copied", "type": "sms", "received": stamp(9), "message": "whole"})
        )
        os.utime(self.root / "cur", ns=(folder.st_atime_ns, folder.st_mtime_ns))
        rows = self._refreshAll(Query(folder="cur"))
        self.assertEqual([(r.id, r.summary, r.problem) for r in rows], [("copied", "whole", None)])
        self.assertEqual(self.catalog.refresh(), 0)
        self.catalog.close()
        self.assertEqual(self.open().refresh(), 0)

    def _refreshAll(self, query):
        self.catalog.refresh()
        return self.catalog.page(query).rows

    def test_pagesCoverAllOnce(self):
        """
        Walking older pages from the first, then newer pages back, visits
        every message once, in order, whatever arrives meanwhile.
        """
        for i in range(1, 40):
            put(self.root, "new" if i % 3 else "cur", sms(f"m{i:02d}", stamp(i % 17)))
        self.catalog.refresh()
        everything = self.catalog.page(Query(size=1000)).rows
        self.assertEqual(len(everything), 40)
        keys = [(r.received, r.folder, r.name) for r in everything]
        self.assertEqual(keys, sorted(keys, reverse=True))
        seen, page = [], self.catalog.page(Query(size=7))
        put(self.root, "new", sms("late", stamp(99)))
        while True:
            seen.extend(page.rows)
            if page.older is None:
                break
            page = self.catalog.page(Query(size=7, before=page.older))
        self.assertEqual(seen, list(everything))
        back = []
        while page.newer is not None:
            back = list(page.rows) + back
            page = self.catalog.page(Query(size=7, after=page.newer))
        self.assertEqual(list(page.rows) + back, list(everything)[: len(page.rows) + len(back)])

    def test_filters(self):
        put(self.root, "new", mms("mms-a", stamp(60), sender="447700900999"))
        put(self.root, "failed", mms("mms-b", stamp(120)), error="expired")
        put(self.root, "cur", sms("sms-c", "2026-11-26T00:00:00.000Z", sender="MyBank"))
        self.catalog.refresh()

        def names(**values):
            query = parseQuery({k.encode(): [v.encode()] for k, v in values.items()})
            return sorted(r.name for r in self.catalog.page(query).rows)

        self.assertEqual(names(type="mms"), ["mms-a", "mms-b"])
        self.assertEqual(names(folder="failed"), ["mms-b"])
        self.assertEqual(names(**{"from": "+44 7700 900 999"}), ["mms-a"])
        self.assertEqual(names(**{"from": "mybank"}), ["sms-c"])
        self.assertEqual(names(id="mms-b"), ["mms-b"])
        self.assertEqual(names(since="2026-11-25T10:01", until="2026-11-25T10:02"), ["mms-a", "mms-b"])
        self.assertEqual(names(until="2026-11-25"), ["first", "mms-a", "mms-b"])
        self.assertEqual(names(since="2026-11-26"), ["sms-c"])
        self.assertEqual(self.catalog.page(parseQuery({b"type": [b"mms"]})).total, 2)

    def test_keptAcrossRestarts(self):
        """
        A reopened catalog has its rows: nothing is read again.
        """
        for i in range(5):
            put(self.root, "cur", sms(f"c{i}", stamp(i)))
        self.catalog.refresh()
        self.catalog.close()
        again = self.open()
        self.assertEqual(again.refresh(), 0)
        self.assertEqual(len(again.page(Query()).rows), 6)

    def test_rebuiltWhenCorruptOrOld(self):
        self.catalog.refresh()
        self.catalog.close()
        path = self.catalog.path
        db = sqlite3.connect(path)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
        db.close()
        reopened = self.open()
        self.assertEqual(self.names(catalog=reopened), [("new", "first")])
        reopened.close()
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        path.write_bytes(b"this is not a database" * 100)
        self.assertEqual(self.names(catalog=self.open()), [("new", "first")])

    def test_oneProcessOnly(self):
        """
        The catalog is kept by one process (the one serving the admin
        listener): a second is refused.
        """
        other = Catalog(self.root)
        self.assertRaises(CatalogBusy, other.open)
