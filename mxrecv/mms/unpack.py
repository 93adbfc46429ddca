# -*- test-case-name: tests.test_unpack -*-
"""
Unpacking an MMS zip into C{parts/}, safely.

The zip comes from the network, so nothing in it is trusted: entry names
may try to leave C{parts/}, the central directory may claim a million
entries, an entry may inflate a thousandfold, or be encrypted, or corrupt.
Every check is made on what is actually read, not on what the zip's headers
claim (ZIP64 fields in entries included: their sizes are never trusted; only
a ZIP64 end of central directory, which an MMS never needs, is refused), and
all or nothing is unpacked: a zip that fails a check leaves no
C{parts/} and an L{Unpacked} whose C{error} says why (the message is still
delivered with its raw C{mms.zip}).

The naming and content-type rules are pure functions, property-tested
without a zip; L{unpackInto} is the blocking step, run in a worker thread.
"""

from __future__ import annotations

import codecs
import errno
import lzma
import mimetypes
import os
import re
import struct
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from xml.etree import ElementTree

from attrs import frozen

from mxrecv.message.model import Part
from mxrecv.message.text import decodeText
from mxrecv.spool.durable import createFile, makeDirectory, removeTree
from mxrecv.spool.layout import PARTS
from mxrecv.spool.mode import SpoolMode

TEXT_PLAIN = "text/plain"
OCTET_STREAM = "application/octet-stream"
SMIL = "application/smil"

# MMS media types, before Python's own table (whose answers for these are
# missing or differ between versions).
_MMS_TYPES = {
    ".smil": SMIL,
    ".smi": SMIL,
    ".txt": TEXT_PLAIN,
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".png": "image/png",
    ".bmp": "image/bmp",
    ".wbmp": "image/vnd.wap.wbmp",
    ".amr": "audio/amr",
    ".awb": "audio/amr-wb",
    ".mid": "audio/midi",
    ".midi": "audio/midi",
    ".mp3": "audio/mpeg",
    ".aac": "audio/aac",
    ".wav": "audio/wav",
    ".imy": "text/x-imelody",
    ".3gp": "video/3gpp",
    ".3g2": "video/3gpp2",
    ".mp4": "video/mp4",
    ".vcf": "text/x-vcard",
    ".vcs": "text/x-vcalendar",
}
# Only the built-in table: the system's /etc/mime.types differs by host.
_PYTHON_TYPES = mimetypes.MimeTypes(filenames=())
# SMIL media elements whose kind fixes a content type when the extension
# does not tell.
_SMIL_KINDS = {"text": TEXT_PLAIN}
_SMIL_MEDIA = frozenset({"text", "img", "image", "audio", "video", "ref", "animation", "textstream"})

# A media type as RFC 6838 names them (restricted-name), lowercase, no
# parameters: the only SMIL type attribute taken as a content type.
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")

_UNSAFE_CHARACTER = re.compile(r"[^\w.+-]")
# In UTF-8, suffix included: file systems allow 255 bytes (some fewer).
_MAX_FILE_NAME = 100
# Kept for a suffix such as "-2" when names clash.
_SUFFIX_ROOM = 8
_CHUNK = 64 * 1024


@frozen
class Limits:
    """
    What a zip may hold before it is refused.

    @ivar entries: most entries (directories included).
    @ivar total: most bytes unpacked, all entries together.
    @ivar ratio: most bytes unpacked per byte actually read from the zip:
        per entry (its compressed bytes as read, whatever its header
        claims), once the entry is over C{ratioFloor} bytes; and for the
        zip as a whole (its file's size), once all entries together are
        over C{ratioFloor} bytes.
    @ivar ratioFloor: bytes exempt from C{ratio}, per entry and in all:
        text and SMIL compress well, but are small.
    @ivar text: most bytes of text/plain parts read into C{text}.
    @ivar smil: largest SMIL document read for content types.
    """

    entries: int = 500
    total: int = 512 * 1024 * 1024
    ratio: int = 100
    ratioFloor: int = 1024 * 1024
    text: int = 1024 * 1024
    smil: int = 256 * 1024


@frozen
class Unpacked:
    """
    What unpacking produced: the parts written, the text of the text parts,
    and why unpacking stopped, if it did.
    """

    parts: tuple[Part, ...] = ()
    text: str | None = None
    error: str | None = None


class Refused(Exception):
    """
    The zip fails a check; the message is a sentence for C{parts_error}.
    """


# Pure rules


def unsafeName(name: str) -> str | None:
    """
    Why the entry name C{name} is not acceptable, or L{None} if it is.

    Backslashes count as separators (zips made on Windows use them), so
    neither C{../x} nor C{..\\x} nor C{/x}, C{\\x} or C{C:x} gets through.
    """
    if not name:
        return "has an empty name"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "has a control character in its name"
    components = name.replace("\\", "/").split("/")
    if components[0] == "" or re.match(r"\A[A-Za-z]:", components[0]):
        return "has an absolute name"
    if ".." in components:
        return "has '..' in its name"
    return None


def fileNameFor(name: str, taken: Iterable[str] = ()) -> str:
    """
    The file name under C{parts/} of the entry C{name} (a safe one): its
    last component, with characters other than letters, digits, C{.+-_}
    replaced, no leading dot, at most 100 bytes in UTF-8 (its extension
    kept, no character cut in two), and numbered if C{taken} already holds
    it.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE_CHARACTER.sub("_", unicodedata.normalize("NFC", base))
    if base.startswith("."):
        base = "_" + base[1:]
    stem, dot, extension = base.rpartition(".")
    if not dot or not stem or len(extension) > 10:
        stem, extension = base, ""
    extension = "." + extension if extension else ""
    room = _MAX_FILE_NAME - len(extension.encode()) - _SUFFIX_ROOM
    stem = stem.encode()[:room].decode("utf-8", "ignore") or "part"
    taken = {t.casefold() for t in taken}
    candidate = stem + extension
    number = 1
    while candidate.casefold() in taken:
        number += 1
        candidate = f"{stem}-{number}{extension}"
    return candidate


def typeByExtension(name: str) -> str | None:
    extension = PurePosixPath(name.replace("\\", "/")).suffix.lower()
    if not extension:
        return None
    return _MMS_TYPES.get(extension) or _PYTHON_TYPES.types_map[1].get(extension)


def mediaType(value: str) -> str | None:
    """
    C{value} lowercased, without parameters, if it is a plain media type,
    C{type/subtype} in RFC 6838's restricted-name characters (ASCII), else
    L{None}.  Only such a type goes into a part's C{content_type}: it ends
    up in HTTP headers (URL delivery) and the application's own checks.
    """
    value = value.split(";", 1)[0].strip()
    if not value.isascii():
        return None
    value = value.lower()
    return value if _MEDIA_TYPE.fullmatch(value) else None


@frozen
class SmilReference:
    """
    One media element of a SMIL document, in document order.

    @ivar source: its C{src}, with any C{cid:} and angle brackets dropped.
    @ivar kind: the element's local name, lowercased (C{img}, C{text}, ...).
    @ivar declared: its C{type} attribute if that is a plain media type
        (L{mediaType}), else L{None}.
    """

    source: str
    kind: str
    declared: str | None


def smilReferences(document: bytes) -> list[SmilReference]:
    """
    The media elements of a SMIL document that name a C{src}, in document
    order.  A document that does not parse, is in an encoding the parser
    does not support (Shift_JIS, an unknown name, ...), or declares a DTD
    (entities are not expanded), gives nothing.
    """
    if b"<!DOCTYPE" in document or b"<!ENTITY" in document:
        return []
    try:
        root = ElementTree.fromstring(document)
    except (ElementTree.ParseError, ValueError, LookupError):
        # ValueError: expat's "multi-byte encodings are not supported";
        # LookupError: an encoding name Python does not know.
        return []
    references = []
    for element in root.iter():
        kind = element.tag.rsplit("}", 1)[-1].lower()
        source = element.get("src")
        if kind not in _SMIL_MEDIA or not source:
            continue
        if source.lower().startswith("cid:"):
            source = source[4:].strip("<>")
        references.append(SmilReference(source, kind, mediaType(element.get("type", ""))))
    return references


def smilTypes(document: bytes) -> dict[str, str]:
    """
    From a SMIL document, the content type it implies for each file it
    refers to, by C{src} (L{smilReferences}): a C{type} attribute if it is
    a plain media type, else C{text/plain} for a C{<text>} element.
    """
    types: dict[str, str] = {}
    for reference in smilReferences(document):
        found = reference.declared or _SMIL_KINDS.get(reference.kind)
        if found:
            types.setdefault(reference.source, found)
    return types


def contentType(name: str, fromSmil: Mapping[str, str]) -> str:
    """
    The content type of entry C{name}: as the SMIL says (by full name or
    last component), else by its extension, else C{application/octet-stream}.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return (
        fromSmil.get(name)
        or fromSmil.get(base)
        or typeByExtension(name)
        or OCTET_STREAM
    )


# Byte-order marks, and the encoding each announces.  UTF-32-LE's begins
# with UTF-16-LE's, so it is tried first: FF FE 00 00 is read as UTF-32 (as
# XML and other sniffers read it), not as UTF-16 starting with U+0000.
_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def decodePart(data: bytes) -> str:
    """
    The text of a text part.  The zip says nothing of its charset: a part
    that starts with a byte-order mark (UTF-8, UTF-16 as many phones send,
    or UTF-32) is decoded as the mark says, without it, if it is valid in
    that encoding; any other is decoded as UTF-8 if valid, else
    ISO-8859-15.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(encoding)
            except UnicodeDecodeError:
                continue
    return decodeText(data)[0]


def joinText(texts: Sequence[bytes]) -> str | None:
    """
    The C{text} of a message: its text parts, each decoded by
    L{decodePart}, joined by newlines; L{None} if there are none.
    """
    if not texts:
        return None
    return "\n".join(decodePart(t) for t in texts)


# The blocking step


def unpackInto(
    zipPath: Path, partsDir: Path, limits: Limits = Limits(), mode: SpoolMode = SpoolMode()
) -> Unpacked:
    """
    Unpack the zip at C{zipPath} into C{partsDir} (which does not exist yet),
    its directory and files made with C{mode}.  Blocking: called in a worker
    thread.  The caller fsyncs what is written.

    @return: the parts, or no parts and the reason in C{error}; C{partsDir}
        exists only when parts were written.
    """
    try:
        with zipPath.open("rb") as raw:
            size = _checkDirectorySize(raw, limits)
            counted = _CountingFile(raw)
            with zipfile.ZipFile(counted) as archive:
                return _unpack(archive, partsDir, _Budget(limits, size, counted), mode)
    except Refused as e:
        error = str(e)
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, ValueError, struct.error) as e:
        error = f"the zip is corrupt: {str(e) or _CORRUPT.get(type(e), type(e).__name__)}"
    except NotImplementedError as e:
        error = f"the zip uses an unsupported feature: {e}"
    except OSError as e:
        removeTree(partsDir)
        if e.errno in _LOCAL_TROUBLE:
            # Not the zip's fault: the message stays in pending/ and is
            # unpacked again later, rather than delivered without parts.
            raise
        error = f"the zip could not be read or unpacked: {e.strerror or e}"
    removeTree(partsDir)
    return Unpacked(error=error)


# What an error without a message of its own meant.
_CORRUPT: dict[type[BaseException], str] = {EOFError: "an entry runs past the end of the file"}

# Errors of our own disk, not of the zip: worth trying again.
_LOCAL_TROUBLE = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EMFILE, errno.ENFILE, errno.ENOMEM}
)


def _checkDirectorySize(raw, limits: Limits) -> int:
    """
    Refuse a zip whose central directory is too big, before C{zipfile}
    reads it all into memory (it makes an object per entry).

    @return: the size of the zip file.
    """
    size = raw.seek(0, os.SEEK_END)
    tail = min(size, 20 + 22 + 65535)
    raw.seek(size - tail)
    data = raw.read(tail)
    at = data.rfind(b"PK\x05\x06")
    if at < 0 or len(data) - at < 22:
        raise zipfile.BadZipFile("no end of central directory")
    entries, directorySize = struct.unpack("<xxxxxxxxxxHI", data[at : at + 16])
    if (at >= 20 and data[at - 20 : at - 16] == b"PK\x06\x07") or (
        entries == 0xFFFF or directorySize == 0xFFFFFFFF
    ):
        # Only needed past 65,535 entries or 4 GiB; it would let a small
        # file claim a huge directory.  ZIP64 fields in entries are fine:
        # the sizes they claim are not trusted (see _Budget).
        raise Refused(
            "the zip has a ZIP64 end of central directory (for more than 65535 "
            "entries or 4 GiB), which an MMS never needs"
        )
    # An entry takes at least 46 bytes, plus its name, extra and comment.
    if entries > limits.entries or directorySize > limits.entries * (46 + 3 * 1024):
        raise Refused(f"the zip has more than {limits.entries} entries")
    return size


def _unpack(
    archive: zipfile.ZipFile, partsDir: Path, budget: _Budget, mode: SpoolMode
) -> Unpacked:
    limits = budget.limits
    entries = archive.infolist()
    if len(entries) > limits.entries:
        raise Refused(f"the zip has more than {limits.entries} entries")
    files = []
    for entry in entries:
        reason = unsafeName(entry.filename)
        if reason is not None:
            raise Refused(f"entry {entry.filename!r} {reason}")
        if entry.flag_bits & 0x1:
            raise Refused(f"entry {entry.filename!r} is encrypted")
        if not entry.filename.endswith(("/", "\\")):
            files.append(entry)

    fromSmil = _readSmil(archive, files, limits)
    makeDirectory(partsDir, mode.directory)
    parts: list[Part] = []
    texts: list[bytes] = []
    textRoom = limits.text
    for entry in files:
        fileName = fileNameFor(entry.filename, (p.path[len(PARTS) + 1 :] for p in parts))
        kind = contentType(entry.filename, fromSmil)
        keep = textRoom if kind == TEXT_PLAIN else 0
        size, kept = _extract(archive, entry, partsDir / fileName, budget, keep, mode.file)
        parts.append(Part(entry.filename, f"{PARTS}/{fileName}", size, kind))
        if kind == TEXT_PLAIN and size <= textRoom:
            texts.append(kept)
            textRoom -= size
    return Unpacked(parts=tuple(parts), text=joinText(texts))


def _readSmil(
    archive: zipfile.ZipFile, files: Sequence[zipfile.ZipInfo], limits: Limits
) -> dict[str, str]:
    """
    The content types the zip's first SMIL document gives, if it is small.
    """
    for entry in files:
        if typeByExtension(entry.filename) == SMIL:
            with archive.open(entry) as source:
                document = source.read(limits.smil + 1)
            return smilTypes(document) if len(document) <= limits.smil else {}
    return {}


class _CountingFile:
    """
    The zip file as C{zipfile} reads it, counting the bytes it reads: the
    compressed bytes an entry really took, whatever its header claims.
    """

    def __init__(self, file) -> None:
        self._file = file
        self.consumed = 0

    def read(self, n: int = -1) -> bytes:
        data = self._file.read(n)
        self.consumed += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def seekable(self) -> bool:
        return self._file.seekable()


class _Budget:
    """
    Counts what is actually inflated, and what is actually read from the
    zip file, against the limits.
    """

    def __init__(self, limits: Limits, zipSize: int, counted: _CountingFile) -> None:
        self.limits = limits
        self.total = 0
        self._zipSize = zipSize
        self._counted = counted
        self._entryStart = 0

    def start(self) -> None:
        """
        An entry is about to be read: count its compressed bytes from here.
        """
        self._entryStart = self._counted.consumed

    def spend(self, entry: zipfile.ZipInfo, entryBytes: int, more: int) -> None:
        """
        C{more} bytes of C{entry} inflated, C{entryBytes} of it so far.  Its
        ratio is checked against what its header claims or what was read,
        whichever is more, so that an entry whose start compresses far
        better than the rest is not refused half-way; L{finish} checks it
        against what was read.
        """
        limits = self.limits
        self.total += more
        if self.total > limits.total:
            raise Refused(f"the zip unpacks to more than {limits.total} bytes")
        self._checkEntry(entry, entryBytes, max(self._compressed(), entry.compress_size))
        # Many entries each under the floor, entries sharing compressed data,
        # or headers that lie: the whole zip against its size on disk.
        if self.total > limits.ratioFloor and self.total > limits.ratio * self._zipSize:
            raise Refused(
                f"the zip inflates more than {limits.ratio} times its size (a zip bomb?)"
            )

    def finish(self, entry: zipfile.ZipInfo, entryBytes: int) -> None:
        """
        C{entry} is inflated whole: its ratio against the compressed bytes
        actually read for it (its local header and at most one read-ahead,
        64 KiB, included), whatever its header claimed.
        """
        self._checkEntry(entry, entryBytes, self._compressed())

    def _compressed(self) -> int:
        return self._counted.consumed - self._entryStart

    def _checkEntry(self, entry: zipfile.ZipInfo, entryBytes: int, compressed: int) -> None:
        limits = self.limits
        if entryBytes > limits.ratioFloor and entryBytes > limits.ratio * max(compressed, 1):
            raise Refused(
                f"entry {entry.filename!r} inflates more than {limits.ratio} times"
                " (a zip bomb?)"
            )
        # Many entries each under the floor, or entries sharing compressed
        # data: the whole zip against its size on disk.
        if self.total > limits.ratioFloor and self.total > limits.ratio * self._zipSize:
            raise Refused(
                f"the zip inflates more than {limits.ratio} times its size (a zip bomb?)"
            )


def _extract(
    archive: zipfile.ZipFile,
    entry: zipfile.ZipInfo,
    path: Path,
    budget: _Budget,
    keep: int,
    fileMode: int,
) -> tuple[int, bytes]:
    """
    Copy one entry to C{path}, counting every byte inflated.

    @return: its size, and its first C{keep} bytes.
    """
    size = 0
    kept: list[bytes] = []
    budget.start()
    with archive.open(entry) as source:
        fd = createFile(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, fileMode)
        with os.fdopen(fd, "wb") as target:
            while chunk := source.read(_CHUNK):
                size += len(chunk)
                budget.spend(entry, size, len(chunk))
                target.write(chunk)
                if size - len(chunk) < keep:
                    kept.append(chunk[: keep - (size - len(chunk))])
    budget.finish(entry, size)
    return size, b"".join(kept)
