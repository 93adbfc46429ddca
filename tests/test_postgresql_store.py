"""
Storing a message from the spool in a real PostgreSQL: the row and its typed
columns, each id once, the parts streamed intact, the notification after the
commit, and what PostgreSQL cannot hold replaced and recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
from datetime import UTC, datetime
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mxrecv.deliver.postgresql.store import CHANNEL, MessageUnreadable, storeMessage
from mxrecv.message.model import Message, Part

from .postgresql import Database, database
from .support import exampleMessage


def messageDirectory(case, message: Message, parts: dict[str, bytes] | None = None) -> Path:
    """
    A message directory as the spool has it in C{new/}: C{message.json} and,
    for an MMS, its parts under C{parts/} (listed in C{message.json}).
    """
    directory = Path(case.mktemp())
    (directory / "parts").mkdir(parents=True)
    listed = []
    for i, (name, data) in enumerate((parts or {}).items()):
        path = f"parts/{i}-{name.encode('utf-8', 'surrogatepass').hex()[:20]}"
        (directory / path).write_bytes(data)
        listed.append(Part(name=name, path=path, size=len(data), content_type="image/jpeg"))
    if listed:
        message = message.replace(type="mms", message=None, charset=None, parts=tuple(listed))
    (directory / "message.json").write_bytes(message.encode())
    return directory


def notifications(connection, timeout: float = 5.0) -> list[str]:
    """
    The payloads of the notifications C{connection} (listening) has had,
    waiting up to C{timeout} seconds for the first.
    """
    received = [n.payload for n in connection.notifies(timeout=0, stop_after=1000)]
    if not received:
        select.select([connection.fileno()], [], [], timeout)
        received = [n.payload for n in connection.notifies(timeout=0, stop_after=1000)]
    return received


class StoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.db: Database = database(self)
        self.connection = self.db.connect()
        self.addCleanup(self.connection.close)

    def listen(self):
        listener = self.db.connect()
        self.addCleanup(listener.close)
        listener.execute(f"LISTEN {CHANNEL}")
        return listener

    def test_sms(self) -> None:
        """
        An SMS becomes one row: its document is message.json, and the typed
        columns say the same; the node that stored it is recorded.
        """
        message = exampleMessage(
            id="sms-1", to=("80000", "80001"), network="vodafone", message="Hello there"
        )
        stored = storeMessage(self.connection, messageDirectory(self, message), "node-a")
        self.assertEqual((stored.id, stored.inserted, stored.changes), ("sms-1", True, ()))
        [row] = self.db.query(
            "SELECT id, document, type, sender, recipients, cc, date, received, network, "
            "subject, text, parts_error, mms_size, mms_sha256, changes, original, node, "
            "inserted_at <= now() FROM mxrecv_message"
        )
        self.assertEqual(
            row,
            (
                "sms-1",
                message.toJSON(),
                "sms",
                "447700900123",
                ["80000", "80001"],
                [],
                "2026-11-25 10:30:00",
                datetime(2026, 11, 25, 10, 30, 1, tzinfo=UTC),
                "vodafone",
                None,
                "Hello there",
                None,
                None,
                None,
                [],
                None,
                "node-a",
                True,
            ),
        )
        self.assertEqual(self.db.query("SELECT count(*) FROM mxrecv_part"), [(0,)])

    def test_onceAndNotified(self) -> None:
        """
        A second store of the same id (another node's copy, or this node's
        after a crash before its record) inserts nothing and notifies
        nobody; the first is notified once, with the id, after its commit.
        """
        listener = self.listen()
        directory = messageDirectory(self, exampleMessage(id="once"))
        other = messageDirectory(self, exampleMessage(id="once", message="another copy"))
        self.assertTrue(storeMessage(self.connection, directory, "a").inserted)
        self.assertFalse(storeMessage(self.connection, other, "b").inserted)
        self.assertFalse(storeMessage(self.connection, directory, "a").inserted)
        self.assertEqual(notifications(listener), ["once"])
        self.assertEqual(
            self.db.query("SELECT id, node, text FROM mxrecv_message"), [("once", "a", "Hello")]
        )

    def test_mmsParts(self) -> None:
        """
        Each part of an MMS is a row of mxrecv_part with its bytes intact;
        the text of an MMS is its text column.
        """
        parts = {"photo.jpg": os.urandom(300_000), "note.txt": b"hi", "empty": b""}
        message = exampleMessage(
            id="mms-1", type="mms", subject="Look", text="hi", mms_sha256="ab" * 32, mms_size=9
        )
        storeMessage(self.connection, messageDirectory(self, message, parts), "n")
        rows = self.db.query(
            "SELECT name, content_type, size, data FROM mxrecv_part "
            "WHERE message_id = 'mms-1' ORDER BY name"
        )
        self.assertEqual(
            rows, [(name, "image/jpeg", len(data), data) for name, data in sorted(parts.items())]
        )
        self.assertEqual(
            self.db.query("SELECT type, subject, text, mms_size, mms_sha256 FROM mxrecv_message"),
            [("mms", "Look", "hi", 9, "ab" * 32)],
        )

    def test_largePartIntact(self) -> None:
        """
        A 100 MiB part arrives intact (its memory use is measured by
        bench/bench_postgresql.py, not here).
        """
        size = 100 * 1024 * 1024
        directory = messageDirectory(self, exampleMessage(id="big"), {"video.mp4": b""})
        digest = hashlib.sha256()
        [path] = (directory / "parts").iterdir()
        with path.open("wb") as f:
            block = os.urandom(1024 * 1024)
            for i in range(size // len(block)):
                chunk = block[i:] + block[:i]
                digest.update(chunk)
                f.write(chunk)
        storeMessage(self.connection, directory, "n")
        self.assertEqual(
            self.db.query(
                "SELECT size, length(data), encode(sha256(data), 'hex') FROM mxrecv_part"
            ),
            [(size, size, digest.hexdigest())],
        )

    def test_unstorableCharacters(self) -> None:
        """
        NUL and lone surrogates, which PostgreSQL text cannot hold, are
        replaced by U+FFFD wherever they are; the id is escaped instead (see
        test_distinctIds); each change is in the row's changes, and
        original holds message.json's bytes.
        """
        message = exampleMessage(
            id="bad\x00id", sender="44\udcff77", message="a\x00b\x00c", subject="\ud800"
        )
        directory = messageDirectory(self, message)
        stored = storeMessage(self.connection, directory, "n")
        self.assertTrue(stored.inserted)
        [(rowId, document, sender, text, changes, original)] = self.db.query(
            "SELECT id, document, sender, text, changes, original FROM mxrecv_message"
        )
        self.assertEqual(
            (rowId, document["id"], sender, text, document["message"]),
            ("bad\\x00id", "bad\ufffdid", "44\ufffd77", "a\ufffdb\ufffdc", "a\ufffdb\ufffdc"),
        )
        self.assertEqual(
            changes,
            [
                "id: 1 character PostgreSQL cannot store (U+0000) replaced by U+FFFD",
                "from: 1 character PostgreSQL cannot store (U+DCFF) replaced by U+FFFD",
                "subject: 1 character PostgreSQL cannot store (U+D800) replaced by U+FFFD",
                "message: 2 characters PostgreSQL cannot store (U+0000) replaced by U+FFFD",
                "id: stored as 'bad\\\\x00id' (an id holding a backslash, NUL or bytes that "
                "are not UTF-8 is written with backslash escapes)",
            ],
        )
        self.assertEqual(list(stored.changes), changes)
        self.assertEqual(bytes(original), (directory / "message.json").read_bytes())

    def test_distinctIds(self) -> None:
        """
        Ids that differ in their bytes as sent stay distinct rows, even when
        their text is the same (one was not UTF-8) or when their cleaned
        text would be (NUL and U+FFFD); and each is stored once.
        """
        ids = [
            exampleMessage(id="caf\u00e9"),
            exampleMessage(id="caf\u00e9", id_charset="iso-8859-15"),
            exampleMessage(id="caf\\xe9"),
            exampleMessage(id="x\x00"),
            exampleMessage(id="x\ufffd"),
        ]
        for message in ids + ids:
            storeMessage(self.connection, messageDirectory(self, message), "n")
        self.assertEqual(
            sorted(self.db.query("SELECT id, document->>'id_charset' FROM mxrecv_message")),
            [
                ("caf\\\\xe9", "utf-8"),
                ("caf\\xe9", "iso-8859-15"),
                ("caf\u00e9", "utf-8"),
                ("x\\x00", "utf-8"),
                ("x\ufffd", "utf-8"),
            ],
        )

    def test_partNames(self) -> None:
        """
        Part names are cleaned like any text, and a name that comes twice
        (a zip may hold two entries of one name) is made unique: the
        message is stored whole, and the row says what was changed.
        """
        parts = {"a\x00.jpg": b"1", "a\ufffd.jpg": b"2"}
        directory = messageDirectory(self, exampleMessage(id="names"), parts)
        stored = storeMessage(self.connection, directory, "n")
        self.assertEqual(
            self.db.query("SELECT name, data FROM mxrecv_part ORDER BY data"),
            [("a\ufffd.jpg", b"1"), ("a\ufffd.jpg (2)", b"2")],
        )
        self.assertEqual(
            stored.changes,
            (
                "parts[0].name: 1 character PostgreSQL cannot store (U+0000) replaced by U+FFFD",
                "parts[1].name: the name of an earlier part; stored as 'a\ufffd.jpg (2)'",
            ),
        )

    def test_partsErrorKeepsZip(self) -> None:
        """
        An MMS whose zip could not be unpacked has the zip, as received, as
        a part named mms.zip; when even that is missing, the message is
        stored all the same and the row says so.
        """
        message = exampleMessage(id="z", type="mms", parts_error="the zip is encrypted")
        directory = messageDirectory(self, message)
        (directory / "mms.zip").write_bytes(b"PK\x05\x06" + bytes(18))
        self.assertEqual(storeMessage(self.connection, directory, "n").changes, ())
        self.assertEqual(
            self.db.query("SELECT name, content_type, data FROM mxrecv_part"),
            [("mms.zip", "application/zip", b"PK\x05\x06" + bytes(18))],
        )

        gone = messageDirectory(self, message.replace(id="z2"))
        stored = storeMessage(self.connection, gone, "n")
        self.assertEqual(
            (stored.inserted, stored.changes),
            (True, ("mms.zip: not in the message directory; no part stored",)),
        )

    def test_missingPartStoresNothing(self) -> None:
        """
        A part listed in message.json but missing is an error that stores
        nothing: the message would be incomplete.
        """
        directory = messageDirectory(self, exampleMessage(id="m"), {"x.jpg": b"x"})
        for f in (directory / "parts").iterdir():
            f.unlink()
        e = self.assertRaises(MessageUnreadable, storeMessage, self.connection, directory, "n")
        self.assertIn("is listed in message.json but missing", str(e))
        self.assertEqual(self.db.query("SELECT count(*) FROM mxrecv_message"), [(0,)])

    def test_notMxrecvDocument(self) -> None:
        """
        A message.json that is not mxrecv's is refused, naming what is
        wrong, with nothing stored.
        """
        directory = messageDirectory(self, exampleMessage(id="d"))
        document = json.loads((directory / "message.json").read_bytes())
        for change, expected in [
            ({"to": "80000"}, "'to' is not a list of strings"),
            ({"received": "yesterday"}, "'received' is not an ISO 8601 time"),
            ({"parts": [{"name": "x", "path": "../../etc/passwd"}]}, "outside the message"),
        ]:
            (directory / "message.json").write_text(json.dumps({**document, **change}))
            e = self.assertRaises(
                MessageUnreadable, storeMessage, self.connection, directory, "n"
            )
            self.assertIn(expected, str(e))
        (directory / "message.json").write_bytes(b"{")
        self.assertRaises(MessageUnreadable, storeMessage, self.connection, directory, "n")
        self.assertEqual(self.db.query("SELECT count(*) FROM mxrecv_message"), [(0,)])

    def test_failedPartRollsBack(self) -> None:
        """
        A part whose file shrinks while it is read fails the whole
        transaction: neither the message nor any part is stored, and the
        connection can be used again.
        """
        directory = messageDirectory(self, exampleMessage(id="s"), {"a": b"aaaa", "b": b"bb"})
        [a, b] = sorted((directory / "parts").iterdir())
        original = os.fstat

        def shrinking(fd):
            result = original(fd)
            if os.readlink(f"/proc/self/fd/{fd}") == str(b.absolute()):
                b.write_bytes(b"")
            return result

        self.patch(os, "fstat", shrinking)
        e = self.assertRaises(MessageUnreadable, storeMessage, self.connection, directory, "n")
        self.assertIn("shrank", str(e))
        self.assertEqual(self.db.query("SELECT count(*) FROM mxrecv_message"), [(0,)])
        self.assertEqual(self.db.query("SELECT count(*) FROM mxrecv_part"), [(0,)])
        self.assertEqual(self.connection.execute("SELECT 1").fetchone(), (1,))
