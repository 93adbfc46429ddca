"""
Tests for L{mxrecv.mms.unpack}: the pure naming and typing rules, and unpacking
real zips (hostile ones included) into a temporary directory.
"""

import codecs
import io
import os
import struct
import zipfile
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from mxrecv.message.model import Part
from mxrecv.mms.unpack import (
    Limits,
    contentType,
    decodePart,
    fileNameFor,
    mediaType,
    smilTypes,
    unpackInto,
    unsafeName,
)

from .strategies import entryNames, zipOf

SMIL = b"""<smil xmlns="http://www.w3.org/2001/SMIL20/Language">
<head><layout><region id="Image"/><region id="Text"/></layout></head>
<body><par dur="5000ms">
  <img src="cid:photo" region="Image"/>
  <text src="words" region="Text"/>
  <audio src="sound.bin" type="audio/amr"/>
</par></body></smil>"""


class RuleTests(TestCase):
    @given(entryNames, st.lists(st.text(max_size=10), max_size=5))
    def test_fileNameIsOneSafeComponent(self, name, taken):
        """
        Any entry name maps to one plain file name: no separator, not
        hidden, not C{..}, not empty, short, and unlike those taken.
        """
        result = fileNameFor(name, taken)
        self.assertNotIn("/", result)
        self.assertNotIn("\\", result)
        self.assertNotIn("\0", result)
        self.assertFalse(result.startswith("."))
        self.assertTrue(0 < len(result.encode()) <= 100)
        self.assertNotIn(result.casefold(), {t.casefold() for t in taken})

    @given(
        st.text(st.characters(categories=("L", "N", "P")), min_size=80, max_size=300),
        st.text(max_size=10),
        st.integers(0, 20),
    )
    def test_longNamesFitInBytes(self, stem, extension, clashes):
        """
        However long the name and whatever its script, the file name is at
        most 100 bytes in UTF-8, numbering included (file systems count
        bytes: 255 at most, fewer on some), and keeps a short extension.
        """
        name = f"{stem}.{extension}" if extension else stem
        first = fileNameFor(name)
        taken = [first]
        for _ in range(clashes):
            taken.append(fileNameFor(name, taken))
        for result in taken:
            self.assertTrue(0 < len(result.encode()) <= 100, result)
        self.assertEqual(len(set(t.casefold() for t in taken)), len(taken))

    def test_longMultibyteName(self):
        """
        A name of 120 CJK characters (360 bytes) is cut to whole characters
        within 100 bytes, its extension kept.
        """
        result = fileNameFor("\u5199" * 120 + ".txt")
        self.assertEqual(result, "\u5199" * 29 + ".txt")
        self.assertEqual(fileNameFor("\u5199" * 120 + ".txt", [result]), "\u5199" * 29 + "-2.txt")
        self.assertEqual(fileNameFor("a" * 120 + ".jpeg"), "a" * 87 + ".jpeg")

    @given(entryNames)
    def test_unsafeNames(self, name):
        """
        A name is refused exactly when it is empty, absolute (C{/}, C{\\},
        drive letter), has a C{..} component or a control character.
        """
        components = name.replace("\\", "/").split("/")
        expected = (
            not name
            or components[0] == ""
            or (len(components[0]) >= 2 and components[0][1] == ":" and components[0][0].isascii() and components[0][0].isalpha())
            or ".." in components
            or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name)
        )
        self.assertEqual(unsafeName(name) is not None, expected, unsafeName(name))

    def test_examples(self):
        for name in ["../x", "a/../../x", "/etc/passwd", "\\x", "..\\x", "C:x", "c:\\x", "a\0b", ""]:
            self.assertIsNotNone(unsafeName(name), name)
        for name in ["image1.jpg", "a/b.txt", "..x", "x..", "é.txt"]:
            self.assertIsNone(unsafeName(name), name)
        self.assertEqual(fileNameFor(".htaccess"), "_htaccess")
        self.assertEqual(fileNameFor("a/b c.jpg", ["b_c.jpg"]), "b_c-2.jpg")
        self.assertEqual(fileNameFor("фото.JPG"), "фото.JPG")

    def test_contentTypes(self):
        """
        The SMIL's type attribute, then the file's extension, then the
        SMIL element (text), else application/octet-stream.
        """
        types = smilTypes(SMIL)
        self.assertEqual(types, {"words": "text/plain", "sound.bin": "audio/amr"})
        self.assertEqual(contentType("words", types), "text/plain")
        self.assertEqual(contentType("dir/sound.bin", types), "audio/amr")
        self.assertEqual(contentType("a.JPG", {}), "image/jpeg")
        self.assertEqual(contentType("clip.3gp", {}), "video/3gpp")
        self.assertEqual(contentType("photo", types), "application/octet-stream")

    def test_hostileSmil(self):
        """
        A SMIL with a DTD (entity expansion) or that does not parse gives
        no types, and no error.
        """
        bomb = b'<!DOCTYPE s [<!ENTITY a "aaaa">]><smil><text src="&a;"/></smil>'
        self.assertEqual(smilTypes(bomb), {})
        self.assertEqual(smilTypes(b"<smil><text src="), {})

    def test_smilEncodingNotSupported(self):
        """
        A SMIL in an encoding the XML parser cannot read (expat refuses
        multi-byte ones such as Shift_JIS, sent by Japanese phones) or whose
        encoding name is unknown gives no types, and no error.
        """
        for encoding in ["Shift_JIS", "GB2312", "Big5", "x-no-such-charset"]:
            smil = f'<?xml version="1.0" encoding="{encoding}"?><smil><text src="t"/></smil>'
            self.assertEqual(smilTypes(smil.encode()), {}, encoding)

    def test_smilTypeOnlyPlainMediaType(self):
        """
        A SMIL type attribute becomes a content type only if it is a plain
        ASCII C{type/subtype} (RFC 6838 characters, lowercased, parameters
        dropped); any other is ignored, as if absent.
        """
        types = smilTypes(
            """<smil><body><par>
            <img src="a.jpg" type="image/jpég"/>
            <img src="b.jpg" type="IMAGE/JPEG"/>
            <text src="c" type="text/plain; charset=utf-8"/>
            <img src="d.gif" type="image/gif\r\nX-Evil: 1"/>
            <video src="e.3gp" type="video/\u212a"/>
            <img src="f" type="image/png; name=f.png"/>
            </par></body></smil>""".encode()
        )
        self.assertEqual(types, {"b.jpg": "image/jpeg", "c": "text/plain", "f": "image/png"})
        self.assertEqual(contentType("a.jpg", types), "image/jpeg")
        self.assertEqual(contentType("d.gif", types), "image/gif")
        self.assertEqual(contentType("e.3gp", types), "video/3gpp")
        self.assertEqual(mediaType(" application/vnd.wap.mms-message "), "application/vnd.wap.mms-message")
        for bad in ["image/", "/jpeg", "image", "image/jpeg/x", "-x/y", "x/" + "y" * 128, "x/y z", ""]:
            self.assertIsNone(mediaType(bad), bad)

    @given(st.text())
    def test_mediaTypeIsAsciiToken(self, value):
        """
        Whatever the attribute holds, a content type taken from it is short
        lowercase ASCII without spaces, quotes or separators other than one
        C{/}.
        """
        found = mediaType(value)
        if found is not None:
            self.assertTrue(found.isascii() and found == found.lower())
            self.assertLessEqual(len(found), 255)
            self.assertEqual(found.count("/"), 1)
            self.assertFalse(set(found) & set(' \t\r\n;,"\\()<>@:=?[]{}'))

    def test_textByteOrderMark(self):
        """
        A text part that starts with a byte-order mark is decoded as the
        mark says, without it; with an invalid body, or without a mark, as
        UTF-8 if valid else ISO-8859-15.
        """
        text = "Hi from my phone \u263a"
        self.assertEqual(decodePart(text.encode("utf-16")), text)
        self.assertEqual(decodePart(b"\xff\xfe" + text.encode("utf-16-le")), text)
        self.assertEqual(decodePart(b"\xfe\xff" + text.encode("utf-16-be")), text)
        self.assertEqual(decodePart(b"\xef\xbb\xbf" + text.encode()), text)
        self.assertEqual(decodePart(text.encode("utf-32")), text)
        self.assertEqual(decodePart(codecs.BOM_UTF32_LE + text.encode("utf-32-le")), text)
        self.assertEqual(decodePart(codecs.BOM_UTF32_BE + text.encode("utf-32-be")), text)
        # A UTF-16-LE text whose first character is U+0000 is not UTF-32.
        self.assertEqual(decodePart(codecs.BOM_UTF16_LE + "\x00Hi".encode("utf-16-le")), "\x00Hi")
        self.assertEqual(decodePart(b"\xff\xfeH\x00i"), "\xff\xfeH\x00i")
        self.assertEqual(decodePart(b"\xef\xbb\xbf\xa4"), "\xef\xbb\xbf\u20ac")
        self.assertEqual(decodePart(b"\xa4 50"), "\u20ac 50")


class UnpackTests(TestCase):
    def unpack(self, data: bytes, limits: Limits = Limits()):
        base = Path(self.mktemp())
        base.mkdir()
        zipPath = base / "mms.zip"
        zipPath.write_bytes(data)
        partsDir = base / "parts"
        return unpackInto(zipPath, partsDir, limits), partsDir

    def assertRefused(self, data: bytes, reason: str, limits: Limits = Limits()):
        unpacked, partsDir = self.unpack(data, limits)
        self.assertEqual((unpacked.parts, unpacked.text), ((), None))
        self.assertIn(reason, unpacked.error)
        self.assertFalse(partsDir.exists())

    def test_mms(self):
        """
        Each file entry becomes a part, typed from the SMIL or its
        extension; text parts make C{text}, decoded as UTF-8 if valid, else
        ISO-8859-15.
        """
        unpacked, partsDir = self.unpack(
            zipOf(
                [
                    ("mms.smil", SMIL),
                    ("photo", b"\xff\xd8\xff"),
                    ("words", "Grüße".encode()),
                    ("images/", b""),
                    ("images/x.gif", b"GIF89a"),
                    ("note.txt", b"\xa4 50"),
                ]
            )
        )
        self.assertIsNone(unpacked.error)
        self.assertEqual(
            unpacked.parts,
            (
                Part("mms.smil", "parts/mms.smil", len(SMIL), "application/smil"),
                Part("photo", "parts/photo", 3, "application/octet-stream"),
                Part("words", "parts/words", len("Grüße".encode()), "text/plain"),
                Part("images/x.gif", "parts/x.gif", 6, "image/gif"),
                Part("note.txt", "parts/note.txt", 4, "text/plain"),
            ),
        )
        self.assertEqual(unpacked.text, "Grüße\n\u20ac 50")
        self.assertEqual((partsDir / "x.gif").read_bytes(), b"GIF89a")
        self.assertEqual(sorted(p.name for p in partsDir.iterdir()), sorted(p.path[6:] for p in unpacked.parts))

    def test_noText(self):
        unpacked, _ = self.unpack(zipOf([("a.jpg", b"x")]))
        self.assertIsNone(unpacked.text)

    def test_textLimit(self):
        """
        Text parts beyond the text limit are unpacked but left out of C{text}.
        """
        unpacked, _ = self.unpack(
            zipOf([("a.txt", b"a" * 10), ("b.txt", b"b" * 10), ("c.txt", b"c")]), Limits(text=12)
        )
        self.assertEqual(len(unpacked.parts), 3)
        self.assertEqual(unpacked.text, "a" * 10 + "\nc")

    def test_utf16Text(self):
        """
        A UTF-16 text part with its byte-order mark, as phones send them,
        makes readable C{text}.
        """
        text = "Hi from my phone \u263a"
        unpacked, _ = self.unpack(zipOf([("text_0.txt", text.encode("utf-16")), ("b.txt", b"ok")]))
        self.assertIsNone(unpacked.error)
        self.assertEqual(unpacked.text, text + "\nok")

    def test_smilEncodingNotSupported(self):
        """
        A SMIL in Shift_JIS (or an encoding Python does not know) loses no
        part: they are typed by their extensions.
        """
        for encoding in ["Shift_JIS", "x-no-such-charset"]:
            smil = (
                f'<?xml version="1.0" encoding="{encoding}"?>'
                '<smil><body><par><img src="photo.jpg"/></par></body></smil>'
            ).encode()
            unpacked, _ = self.unpack(zipOf([("mms.smil", smil), ("photo.jpg", b"\xff\xd8\xff")]))
            self.assertIsNone(unpacked.error, encoding)
            self.assertEqual(
                [(p.name, p.content_type) for p in unpacked.parts],
                [("mms.smil", "application/smil"), ("photo.jpg", "image/jpeg")],
            )

    def test_smilTypeNotAscii(self):
        """
        A part the SMIL types C{image/jpég} is typed by its extension.
        """
        smil = '<smil><body><par><img src="photo.jpg" type="image/jpég"/></par></body></smil>'
        unpacked, _ = self.unpack(zipOf([("mms.smil", smil.encode()), ("photo.jpg", b"\xff\xd8\xff")]))
        self.assertEqual(unpacked.parts[1].content_type, "image/jpeg")

    def test_longMultibyteName(self):
        """
        An entry named with 120 CJK characters (360 bytes, over the 255
        bytes a file name may have) is unpacked, and so are the others.
        """
        name = "\u5199" * 120 + ".txt"
        unpacked, partsDir = self.unpack(zipOf([("photo.jpg", b"\xff\xd8\xff"), (name, b"hi")]))
        self.assertIsNone(unpacked.error)
        self.assertEqual([p.name for p in unpacked.parts], ["photo.jpg", name])
        self.assertEqual((partsDir.parent / unpacked.parts[1].path).read_bytes(), b"hi")

    def test_sameNames(self):
        unpacked, partsDir = self.unpack(zipOf([("a.txt", b"1"), ("x/a.txt", b"2"), ("a.txt", b"3")]))
        self.assertEqual([p.path for p in unpacked.parts], ["parts/a.txt", "parts/a-2.txt", "parts/a-3.txt"])
        self.assertEqual((partsDir / "a-3.txt").read_bytes(), b"3")

    @settings(max_examples=40, deadline=None)
    @given(st.lists(entryNames, min_size=1, max_size=6))
    @example(["0\\"])
    def test_anyNamesInsidePartsOrRefused(self, names):
        """
        Whatever the entry names, every file written is inside parts/, one
        per file entry; or the zip is refused and parts/ does not exist.
        """
        unpacked, partsDir = self.unpack(zipOf([(n, n.encode()) for n in names]))
        base = partsDir.parent
        written = sorted(
            str(p.relative_to(base)) for p in base.rglob("*") if p.name != "mms.zip"
        )
        if unpacked.error is not None:
            self.assertEqual(written, [])
            self.assertEqual(unpacked.parts, ())
            return
        directories = ("/", "\\")
        stored = [n for n in (zipfile.ZipInfo(n).filename for n in names) if not n.endswith(directories)]
        self.assertEqual([p.name for p in unpacked.parts], stored)
        self.assertEqual(sorted(["parts"] + [p.path for p in unpacked.parts]), written)
        for part in unpacked.parts:
            path = (base / part.path).resolve()
            self.assertEqual(path.parent, partsDir.resolve())

    def test_traversal(self):
        self.assertRefused(zipOf([("ok.txt", b"1"), ("../evil", b"x")]), "'../evil' has '..'")
        self.assertRefused(zipOf([("a/../../evil", b"x")]), "has '..'")
        self.assertRefused(zipOf([("/etc/evil", b"x")]), "absolute")
        self.assertRefused(zipOf([("..\\evil", b"x")]), "has '..'")
        self.assertRefused(zipOf([("C:\\evil", b"x")]), "absolute")

    def test_zipBomb(self):
        """
        An entry that inflates beyond the ratio is refused once the bytes
        actually inflated say so, whatever its header claims.
        """
        self.assertRefused(zipOf([("bomb.txt", b"\0" * (20 * 1024 * 1024))]), "inflates more than 100 times")

    def test_manySmallEntriesBomb(self):
        """
        Entries each under 1 MiB, each within no ratio of its own, are
        refused together once the zip unpacks to more than 100 times its
        size: 40 entries of 1 MiB of zeros make 40 MiB from some 44 KB.
        """
        data = zipOf([(f"f{i}.bin", b"\0" * 1024 * 1024) for i in range(40)])
        self.assertLess(len(data), 64 * 1024)
        self.assertRefused(data, "the zip inflates more than 100 times its size")

    def test_overlappingEntries(self):
        """
        Entries that share one compressed stream (each directory entry
        pointing at the same data) are held to the zip's size on disk, not
        to the bytes read, which count that stream once per entry.
        """
        one = zipOf([("a.bin", b"\0" * 1024 * 1024)])
        at = one.find(b"PK\x01\x02")
        end = one.find(b"PK\x05\x06")
        data = one[:at] + one[at:end] * 40
        data += struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 40, 40, (end - at) * 40, at, 0)
        self.assertLess(len(data), 8 * 1024)
        self.assertRefused(data, "the zip inflates more than 100 times its size")

    def test_lyingCompressedSize(self):
        """
        An entry whose central directory claims a huge compressed size is
        still held to the ratio on the compressed bytes actually read
        (zipfile stops at the end of the deflate stream and the CRC
        matches).
        """
        size = 40 * 1024 * 1024
        data = bytearray(zipOf([("bomb.bin", b"\0" * size), ("pad.jpg", os.urandom(128 * 1024))]))
        at = data.find(b"PK\x01\x02")
        self.assertGreater(size // struct.unpack("<I", data[at + 20 : at + 24])[0], 100)
        data[at + 20 : at + 24] = struct.pack("<I", 0x7FFFFFFF)
        # The whole zip's limit stops it first, while it inflates.
        self.assertRefused(bytes(data), "inflates more than 100 times")

    def test_compressibleStartAccepted(self):
        """
        An entry whose start compresses far better than its whole (8 MiB of
        zeros, then 2 MiB of noise: a ratio of about 5 in all) is accepted:
        its ratio is judged on its whole, not on its first megabytes.
        """
        data = zipOf([("picture.bmp", b"\0" * (8 * 1024 * 1024) + os.urandom(2 * 1024 * 1024))])
        unpacked, _ = self.unpack(data)
        self.assertIsNone(unpacked.error)
        self.assertEqual([p.size for p in unpacked.parts], [10 * 1024 * 1024])

    def test_ordinaryMmsWithinRatio(self):
        """
        What an MMS holds passes the ratio checks: text and SMIL compress
        well but are small (the first 1 MiB in all is exempt), photos
        hardly compress.
        """
        unpacked, _ = self.unpack(
            zipOf(
                [
                    ("mms.smil", SMIL * 100),
                    ("text.txt", b"ha" * 400_000),
                    ("photo.jpg", os.urandom(3 * 1024 * 1024)),
                    ("photo2.jpg", os.urandom(200 * 1024)),
                ]
            )
        )
        self.assertIsNone(unpacked.error)
        self.assertEqual(len(unpacked.parts), 4)
        unpacked, _ = self.unpack(zipOf([("mms.smil", SMIL * 100), ("text.txt", b"ha" * 400_000)]))
        self.assertIsNone(unpacked.error)

    def test_lyingSize(self):
        """
        An entry whose header understates its size is caught by its CRC,
        not trusted.
        """
        data = bytearray(zipOf([("a.txt", b"x" * 5000)]))
        for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
            at = data.find(signature)
            data[at + offset : at + offset + 4] = struct.pack("<I", 10)
        self.assertRefused(bytes(data), "corrupt")

    def test_totalSize(self):
        self.assertRefused(
            zipOf([("a", b"1" * 600), ("b", b"2" * 600)], zipfile.ZIP_STORED),
            "unpacks to more than 1000 bytes",
            Limits(total=1000),
        )

    def test_tooManyEntries(self):
        """
        The count in the end of central directory is checked before zipfile
        reads the directory, and the directory itself after.
        """
        self.assertRefused(zipOf([(f"f{i}", b"") for i in range(11)]), "more than 10 entries", Limits(entries=10))

    def test_encrypted(self):
        data = bytearray(zipOf([("a.txt", b"secret")], zipfile.ZIP_STORED))
        for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            at = data.find(signature)
            data[at + offset] |= 1
        self.assertRefused(bytes(data), "'a.txt' is encrypted")

    def test_corrupt(self):
        data = zipOf([("a.txt", b"hello" * 100)])
        self.assertRefused(data[: len(data) // 2], "corrupt")
        self.assertRefused(b"not a zip at all", "corrupt")
        self.assertRefused(b"", "corrupt")
        flipped = bytearray(data)
        flipped[40] ^= 0xFF
        unpacked, partsDir = self.unpack(bytes(flipped))
        self.assertIsNotNone(unpacked.error)
        self.assertFalse(partsDir.exists())

    def test_corruptDeflateStream(self):
        """
        Garbage where the compressed data should be is a corrupt zip, not
        a crash.
        """
        data = bytearray(zipOf([("a.txt", os.urandom(3000) * 3)]))
        start = data.find(b"a.txt") + len("a.txt")
        data[start : start + 200] = b"\xff" * 200
        self.assertRefused(bytes(data), "corrupt")

    def test_zip64(self):
        """
        A ZIP64 end of central directory, which only an archive of more
        than 65,535 entries or 4 GiB needs, is refused, whether the classic
        end of central directory points at it (0xFFFF entries) or a ZIP64
        locator precedes it.
        """
        data = bytearray(zipOf([("a.txt", b"x")]))
        at = data.rfind(b"PK\x05\x06")
        data[at + 10 : at + 12] = b"\xff\xff"
        self.assertRefused(bytes(data), "a ZIP64 end of central directory")
        self.assertRefused(withZip64End(zipOf([("a.txt", b"x")])), "a ZIP64 end of central directory")

    def test_zip64Entries(self):
        """
        Entries with ZIP64 fields (as some zip writers always add them) are
        unpacked like any other.
        """
        for method in (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED):
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", method) as z:
                with z.open(zipfile.ZipInfo("a.txt"), "w", force_zip64=True) as f:
                    f.write(b"hello " * 100)
            unpacked, partsDir = self.unpack(buffer.getvalue())
            self.assertIsNone(unpacked.error)
            self.assertEqual([(p.name, p.size) for p in unpacked.parts], [("a.txt", 600)])
            self.assertEqual((partsDir / "a.txt").read_bytes(), b"hello " * 100)

    def test_zip64SizesNotTrusted(self):
        """
        The sizes an entry's ZIP64 field claims (here 16 EiB) are not
        trusted: the parts hold, and the limits count, what is actually
        read and inflated; a bomb that claims them is refused all the same;
        a stored entry whose claimed compressed size runs past the end of
        the file is corrupt, and the reason says so.
        """
        everything = 2**64 - 1
        data = claimZip64(zipOf([("a.txt", b"hello " * 100), ("b.txt", b"more")]), everything)
        unpacked, partsDir = self.unpack(data)
        self.assertIsNone(unpacked.error)
        self.assertEqual([(p.name, p.size) for p in unpacked.parts], [("a.txt", 600), ("b.txt", 4)])
        self.assertEqual((partsDir / "a.txt").read_bytes(), b"hello " * 100)

        bomb = claimZip64(zipOf([("bomb.bin", b"\0" * (40 * 1024 * 1024))]), everything)
        self.assertRefused(bomb, "'bomb.bin' inflates more than 100 times")

        past = claimZip64(
            zipOf([("a.bin", os.urandom(200_000)), ("b.txt", b"x")], zipfile.ZIP_STORED),
            everything,
            everything,
        )
        self.assertRefused(past, "the zip is corrupt: an entry runs past the end of the file")


def claimZip64(data: bytes, size: int, compressedSize: int | None = None) -> bytes:
    """
    C{data} (a zip) with its first entry's central directory record made
    ZIP64: its sizes 0xFFFFFFFF, and a ZIP64 field claiming C{size} bytes
    (and C{compressedSize} compressed, or the real compressed size).
    """
    at = data.find(b"PK\x01\x02")
    compressed, = struct.unpack("<I", data[at + 20 : at + 24])
    nameLength, extraLength, commentLength = struct.unpack("<3H", data[at + 28 : at + 34])
    extra = struct.pack(
        "<2H2Q", 1, 16, size, compressed if compressedSize is None else compressedSize
    )
    record = (
        data[at : at + 20]
        + struct.pack("<2I3H", 0xFFFFFFFF, 0xFFFFFFFF, nameLength, len(extra), commentLength)
        + data[at + 34 : at + 46 + nameLength]
        + extra
        + data[at + 46 + nameLength + extraLength : at + 46 + nameLength + extraLength + commentLength]
    )
    rest = at + 46 + nameLength + extraLength + commentLength
    end = data.rfind(b"PK\x05\x06")
    directory = record + data[rest:end]
    tail = bytearray(data[end:])
    tail[12:16] = struct.pack("<I", len(directory))
    return data[:at] + directory + bytes(tail)


def withZip64End(data: bytes) -> bytes:
    """
    C{data} (a zip) with a ZIP64 end of central directory record and its
    locator before the classic end of central directory.
    """
    end = data.rfind(b"PK\x05\x06")
    entries, size, offset = struct.unpack("<10xHII", data[end : end + 20])
    record = struct.pack("<IQ2H2I4Q", 0x06064B50, 44, 45, 45, 0, 0, entries, entries, size, offset)
    locator = struct.pack("<2IQI", 0x07064B50, 0, end, 1)
    return data[:end] + record + locator + data[end:]
