"""
What goes to PostgreSQL, decided without it: strings cleaned of what
PostgreSQL text cannot hold, message.json as a row, binary COPY framing.
"""

from __future__ import annotations

import json
import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mxrecv.deliver.postgresql.copyformat import HEADER, MAX_FIELD, TRAILER, partHead
from mxrecv.deliver.postgresql.row import BadDocument, PartSource, idKey, messageRow
from mxrecv.deliver.postgresql.sanitise import cleanDocument, cleanText
from mxrecv.message.model import Part

from .support import exampleMessage

# Any Python string, lone surrogates and NUL included.
anyText = st.text(st.characters(codec=None, categories=None))
jsonValues = st.recursive(
    st.none() | st.booleans() | st.integers() | anyText,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(anyText, inner, max_size=4),
    max_leaves=20,
)


def storable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


class CleanTests(SynchronousTestCase):
    @given(anyText)
    def test_cleanTextStorable(self, text: str) -> None:
        """
        Whatever a string holds, its cleaned form can be stored; it is the
        same length, only the refused characters differ, and a change is
        recorded exactly when there was one.
        """
        changes: list[str] = []
        cleaned = cleanText(text, "f", changes)
        self.assertTrue(storable(cleaned))
        self.assertEqual(len(cleaned), len(text))
        for before, after in zip(text, cleaned, strict=True):
            self.assertEqual(after, before if storable(before) else "\ufffd")
        self.assertEqual(len(changes), 0 if cleaned == text else 1)

    @given(jsonValues)
    def test_cleanDocumentStorable(self, value) -> None:
        """
        A cleaned JSON document encodes to strict UTF-8 without NUL (which
        jsonb refuses too, even escaped); a clean one is returned equal.
        """
        changes: list[str] = []
        cleaned = cleanDocument(value, changes)
        self.assertTrue(storable(json.dumps(cleaned, ensure_ascii=False)))
        if not changes:
            self.assertEqual(cleaned, value)

    def test_changeNamesField(self) -> None:
        changes: list[str] = []
        cleanDocument({"to": ["ok", "\x00\x00\ud800"], "parts": [{"n\x00": 1}]}, changes)
        self.assertEqual(
            changes,
            [
                "to[1]: 3 characters PostgreSQL cannot store (U+0000, U+D800) replaced by U+FFFD",
                "parts[0].n\x00 (the key): 1 character PostgreSQL cannot store (U+0000) "
                "replaced by U+FFFD",
            ],
        )


class IdKeyTests(SynchronousTestCase):
    @given(st.binary(max_size=20), st.binary(max_size=20))
    def test_distinct(self, a: bytes, b: bytes) -> None:
        """
        Distinct ids (as bytes) have distinct keys, which PostgreSQL can
        store.
        """
        self.assertTrue(storable(idKey(a)))
        self.assertEqual(idKey(a) == idKey(b), a == b)

    @given(st.text().filter(lambda t: "\\" not in t and "\x00" not in t))
    def test_plain(self, text: str) -> None:
        """
        A UTF-8 id without NUL or backslash is its own key.
        """
        self.assertEqual(idKey(text.encode("utf-8")), text)

    def test_escapes(self) -> None:
        self.assertEqual(idKey(b"caf\xe9"), "caf\\xe9")
        self.assertEqual(idKey(b"a\\b\x00"), "a\\\\b\\x00")


class RowTests(SynchronousTestCase):
    def test_smsText(self) -> None:
        """
        An SMS's text column is its message; received is a UTC time.
        """
        row = messageRow(exampleMessage(message="Hi").encode())
        self.assertEqual((row.type, row.text, row.parts, row.changes), ("sms", "Hi", (), ()))
        self.assertEqual(row.received.isoformat(), "2026-11-25T10:30:01+00:00")
        self.assertIsNone(row.original)

    def test_mmsParts(self) -> None:
        """
        An MMS's text column is its text; its parts are listed in order,
        with their files; the raw zip joins them only when unpacking failed.
        """
        parts = (Part("a.jpg", "parts/a.jpg", 1, "image/jpeg"), Part("b", "parts/b", 2, "x/y"))
        message = exampleMessage(type="mms", text="words", parts=parts)
        row = messageRow(message.encode())
        self.assertEqual(row.text, "words")
        self.assertEqual(
            row.parts,
            (PartSource("a.jpg", "image/jpeg", "parts/a.jpg"), PartSource("b", "x/y", "parts/b")),
        )
        failed = messageRow(message.replace(parts_error="corrupt").encode())
        self.assertEqual(
            failed.parts[-1], PartSource("mms.zip", "application/zip", "mms.zip", optional=True)
        )

    def test_sameNames(self) -> None:
        """
        Names that come more than once get a number, avoiding every name in
        the message.
        """
        parts = tuple(Part(n, f"parts/{i}", 1, "x/y") for i, n in enumerate(["a", "a", "a (2)"]))
        row = messageRow(exampleMessage(type="mms", parts=parts).encode())
        self.assertEqual([p.name for p in row.parts], ["a", "a (3)", "a (2)"])
        self.assertEqual(len(row.changes), 1)

    def test_refused(self) -> None:
        """
        What is not mxrecv's message.json is refused with a reason.
        """
        good = exampleMessage().toJSON()
        for change, expected in [
            ({"id": None}, "'id' is missing or not a string"),
            ({"to": [1]}, "'to' is not a list of strings"),
            ({"mms_size": "9"}, "'mms_size' is not a whole number"),
            ({"parts": [{"name": "x", "path": "/etc/passwd"}]}, "outside the message"),
            ({"parts": [{"name": "x", "path": ""}]}, "outside the message"),
            ({"parts": ["x"]}, "parts[0] is not an object"),
        ]:
            e = self.assertRaises(BadDocument, messageRow, json.dumps({**good, **change}).encode())
            self.assertIn(expected, str(e))
        self.assertRaises(BadDocument, messageRow, b"[]")
        self.assertRaises(BadDocument, messageRow, b"\xff")


class CopyFormatTests(SynchronousTestCase):
    def test_partHead(self) -> None:
        """
        A row's start: 5 fields, each text as its UTF-8 length and bytes,
        size as an 8-byte integer, then the length of the data to follow.
        """
        head = partHead("id", "n\u00e9", "t/x", 7)
        self.assertEqual(
            head,
            struct.pack("!h", 5)
            + struct.pack("!i", 2) + b"id"
            + struct.pack("!i", 3) + "n\u00e9".encode()
            + struct.pack("!i", 3) + b"t/x"
            + struct.pack("!iq", 8, 7)
            + struct.pack("!i", 7),
        )
        self.assertEqual(HEADER[:11], b"PGCOPY\n\xff\r\n\x00")
        self.assertEqual(TRAILER, b"\xff\xff")
        self.assertRaises(ValueError, partHead, "id", "n", "t", MAX_FIELD + 1)
