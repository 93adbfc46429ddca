from hashlib import sha256

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mxrecv.spool.naming import isName, nameForId

from .strategies import messageIds


class NameForIdTests(SynchronousTestCase):
    @given(messageIds)
    def test_safe(self, messageId: str) -> None:
        """
        Any id gives a name that is one path component, not hidden, not an
        option, short enough for any filesystem, and recognised by isName.
        """
        name = nameForId(messageId)
        self.assertNotIn("/", name)
        self.assertNotIn("\0", name)
        self.assertFalse(name.startswith((".", "-")))
        self.assertTrue(0 < len(name.encode()) <= 255)
        self.assertTrue(name.isascii())
        self.assertTrue(isName(name), name)

    @given(messageIds)
    def test_stable(self, messageId: str) -> None:
        self.assertEqual(nameForId(messageId), nameForId(messageId))

    @given(messageIds, messageIds)
    def test_unique(self, one: str, other: str) -> None:
        if one != other:
            self.assertNotEqual(nameForId(one), nameForId(other))

    @given(st.text(alphabet="abcXYZ019_", min_size=1, max_size=120))
    def test_readable(self, messageId: str) -> None:
        """
        Ids of safe characters are kept as they are, for the operator.
        """
        self.assertEqual(nameForId(messageId), messageId)

    @given(st.binary(min_size=1), st.binary(min_size=1))
    def test_uniqueBytes(self, one: bytes, other: bytes) -> None:
        """
        Different byte strings, valid UTF-8 or not, have different names.
        """
        if one != other:
            self.assertNotEqual(nameForId(one), nameForId(other))

    @given(st.binary(min_size=1, max_size=300))
    def test_safeBytes(self, messageId: bytes) -> None:
        name = nameForId(messageId)
        self.assertTrue(name.isascii() and 0 < len(name) <= 145)
        self.assertFalse(name.startswith((".", "-")))
        self.assertTrue(isName(name), name)

    @given(messageIds)
    def test_utf8BytesAsText(self, messageId: str) -> None:
        """
        A valid UTF-8 id is named as before: its bytes and its text give
        the same name.
        """
        self.assertEqual(nameForId(messageId.encode()), nameForId(messageId))

    def test_notUTF8(self) -> None:
        """
        Ids that are not valid UTF-8 are named from their bytes, so that
        they differ from the UTF-8 ids their ISO-8859-15 decoding would
        encode to.
        """
        self.assertEqual(nameForId(b"x\xff"), "x=FF")
        self.assertEqual(nameForId(b"x\xc3\xbf"), "x=C3=BF")
        self.assertEqual(nameForId(b"caf\xe9"), "caf=E9")
        self.assertEqual(nameForId("café"), "caf=C3=A9")
        self.assertEqual(nameForId(b"\xff" * 100), "=FF" * 26 + "=F~" + sha256(b"\xff" * 100).hexdigest())

    def test_escapes(self) -> None:
        self.assertEqual(nameForId("../x"), "=2E=2E=2Fx")
        self.assertEqual(nameForId("-rf"), "=2Drf")
        self.assertEqual(nameForId("a-b"), "a-b")
        self.assertEqual(nameForId("é"), "=C3=A9")

    def test_longIdsHashed(self) -> None:
        """
        Long ids are cut and hashed; ids sharing the kept prefix still differ.
        """
        one, other = nameForId("a" * 200), nameForId("a" * 201)
        self.assertNotEqual(one, other)
        self.assertIn("~", one)
        self.assertEqual(len(one), 80 + 1 + 64)

    def test_isNameRejectsOthers(self) -> None:
        for other in ["", ".", "..", ".x", "-x", "a/b", "in.abc", "x~y", "=4"]:
            self.assertFalse(isName(other), other)
