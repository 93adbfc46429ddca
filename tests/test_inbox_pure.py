"""
The inbox's pure rules: a message.json as a row, the query string as a
query, how parts are shown and in what order.
"""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mxrecv.mms.unpack import SmilReference, smilReferences
from mxrecv.ops.inbox.media import (
    AUDIO,
    DOWNLOAD,
    IMAGE,
    TEXT,
    VIDEO,
    PartView,
    kindOf,
    partViews,
    presentationOrder,
    safeComponent,
    servedInline,
)
from mxrecv.ops.inbox.query import BadQuery, Cursor, Query, parseQuery
from mxrecv.ops.inbox.summary import SUMMARY_LENGTH, summarize
from mxrecv.spool.naming import nameForId

json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
documentKeys = st.sampled_from(
    ["id", "type", "from", "to", "subject", "message", "text", "parts", "error",
     "parts_error", "received"]
)


class SummaryTests(SynchronousTestCase):
    def test_failedReasonFirst(self):
        row = summarize(
            "failed",
            "m1",
            {"id": "m1", "type": "mms", "from": "4477", "to": ["1", "2"], "subject": "Hi",
             "received": "2026-11-25T10:30:01.123Z", "parts": [], "error": "expired",
             "parts_error": "corrupt"},
        )
        self.assertEqual(
            (row.problem, row.summary, row.recipients, row.sender), ("expired", "Hi", ("1", "2"), "4477")
        )

    def test_firstLineOfTheText(self):
        row = summarize("new", "s", {"type": "sms", "message": "\n  \n  first \nsecond"})
        self.assertEqual(row.summary, "first")
        long = summarize("new", "s", {"message": "x" * 500})
        self.assertEqual(len(long.summary), SUMMARY_LENGTH)
        self.assertTrue(long.summary.endswith("\u2026"))

    def test_mmsTextWhenNoSubject(self):
        row = summarize("new", "m", {"type": "mms", "subject": None, "text": "Greetings", "parts": [{}, {}]})
        self.assertEqual((row.summary, row.parts), ("Greetings", 2))

    def test_notAnObject(self):
        row = summarize("cur", "x", ["a list"])
        self.assertEqual((row.name, row.problem), ("x", "message.json is not a JSON object"))

    @given(st.dictionaries(documentKeys, json, max_size=11) | json)
    def test_anyDocument(self, document):
        """
        Whatever the document holds, a row comes out, all of its text
        fields strings.
        """
        row = summarize("new", "n", document)
        for value in (row.received, row.id, row.type, row.sender, row.summary):
            self.assertIsInstance(value, str)
        self.assertTrue(all(isinstance(r, str) for r in row.recipients))
        self.assertIsInstance(row.parts, int)


def args(**values):
    return {k.encode(): [v.encode()] for k, v in values.items()}


class QueryTests(SynchronousTestCase):
    def test_empty(self):
        self.assertEqual(parseQuery({}), Query())
        self.assertEqual(parseQuery(args(folder="", type="", id="")), Query())

    def test_filters(self):
        query = parseQuery(args(folder="failed", type="mms", id="abc", **{"from": "+44 7700 900-123"}))
        self.assertEqual(
            (query.folder, query.type, query.ident, query.sender),
            ("failed", "mms", "abc", "447700900123"),
        )
        self.assertEqual(
            query.filters(),
            {"folder": "failed", "type": "mms", "id": "abc", "from": "447700900123"},
        )

    def test_refused(self):
        for bad, key in [
            (args(folder="tmp"), "folder"),
            (args(folder="../state"), "folder"),
            (args(type="fax"), "type"),
            (args(since="yesterday"), "since"),
            (args(until="2026-13-01"), "until"),
            (args(until="9999-12-31"), "until"),
            (args(before="x~new~y", after="x~new~y"), "before"),
            (args(before="2026~tmp~name"), "page link"),
            (args(before="2026~new~../x"), "page link"),
            ({b"id": [b"\xff"]}, "id"),
            (args(id="x" * 201), "id"),
        ]:
            with self.assertRaises(BadQuery) as e:
                parseQuery(bad)
            self.assertIn(key, str(e.exception))

    def test_receivedRange(self):
        """
        A date is its whole day, a time without seconds its whole minute,
        a time with seconds that second; all UTC.
        """
        self.assertEqual(
            parseQuery(args(since="2026-11-25", until="2026-11-25")).receivedRange(),
            ("2026-11-25T00:00:00", "2026-11-26T00:00:00"),
        )
        self.assertEqual(
            parseQuery(args(since="2026-11-25T10:30", until="2026-11-25T10:30")).receivedRange(),
            ("2026-11-25T10:30:00", "2026-11-25T10:31:00"),
        )
        self.assertEqual(
            parseQuery(args(until="2026-11-25T10:30:15")).receivedRange(),
            (None, "2026-11-25T10:30:16"),
        )
        self.assertEqual(
            parseQuery(args(since="2026-11-25T11:30+01:00")).receivedRange(),
            ("2026-11-25T10:30:00", None),
        )

    @given(st.text(max_size=30).filter(lambda t: "~" not in t), st.sampled_from(["new", "cur", "pending", "failed"]), st.text(min_size=1, max_size=200))
    def test_cursorRoundTrip(self, received, folder, ident):
        cursor = Cursor(received, folder, nameForId(ident))
        self.assertEqual(Cursor.decode(cursor.encode()), cursor)


def view(name, contentType, file=None):
    return PartView(name=name, file=file or name, size=1, contentType=contentType)


class MediaTests(SynchronousTestCase):
    def test_kinds(self):
        self.assertEqual(kindOf("image/png"), IMAGE)
        self.assertEqual(kindOf("image/jpeg"), IMAGE)
        self.assertEqual(kindOf("audio/mpeg"), AUDIO)
        self.assertEqual(kindOf("video/mp4"), VIDEO)
        self.assertEqual(kindOf("text/plain"), TEXT)
        for inert in ("image/svg+xml", "text/html", "application/xhtml+xml", "text/xml",
                      "application/xml", "application/smil", "audio/amr", "video/3gpp",
                      "image/vnd.wap.wbmp", "application/octet-stream", "text/x-vcard"):
            self.assertEqual(kindOf(inert), DOWNLOAD, inert)
            self.assertFalse(servedInline(inert), inert)
        self.assertFalse(servedInline("text/plain"))
        self.assertTrue(servedInline("image/gif"))

    def test_partViewsStayInParts(self):
        """
        Only C{parts/FILE} with FILE one plain component is a part: a
        message.json (the application's, in cur/) cannot point elsewhere.
        """
        parts = [
            {"name": "a.png", "path": "parts/a.png", "size": 3, "content_type": "IMAGE/PNG"},
            {"name": "x", "path": "parts/../message.json", "size": 1, "content_type": "text/plain"},
            {"name": "x", "path": "parts/sub/x", "size": 1, "content_type": "text/plain"},
            {"name": "x", "path": "/etc/passwd", "size": 1, "content_type": "text/plain"},
            {"name": "x", "path": "parts/.hidden", "size": 1, "content_type": "text/plain"},
            {"name": "x", "path": "parts/", "size": 1, "content_type": "text/plain"},
            {"name": "x", "path": "parts/a\\..\\b", "size": 1, "content_type": "text/plain"},
            {"name": "x", "path": "parts/a\x00b", "size": 1, "content_type": "text/plain"},
            {"name": "x", "path": 7},
            "not a part",
            {"path": "parts/b.txt", "size": True, "content_type": None},
        ]
        self.assertEqual(
            partViews(parts),
            [
                PartView("a.png", "a.png", 3, "image/png"),
                PartView("b.txt", "b.txt", 0, "application/octet-stream"),
            ],
        )
        self.assertEqual(partViews("nonsense"), [])

    @given(st.text())
    def test_safeComponent(self, name):
        if safeComponent(name):
            self.assertNotIn("/", name)
            self.assertNotIn("\x00", name)
            self.assertNotIn(name, ("", ".", ".."))

    def test_smilOrder(self):
        """
        The SMIL's order first, matched by name, last component or case;
        then the parts it does not name, in zip order; the SMIL itself is
        not presented.
        """
        parts = [
            view("layout.smil", "application/smil"),
            view("IMG_1.JPG", "image/jpeg"),
            view("dir/text_1.txt", "text/plain", "text_1.txt"),
            view("extra.amr", "audio/amr"),
            view("song.mp3", "audio/mpeg"),
        ]
        smil = (
            b'<smil><body><par><text src="cid:text_1.txt"/></par>'
            b'<par><img src="img_1.jpg"/><audio src="song.mp3"/></par>'
            b'<par><img src="missing.png"/></par></body></smil>'
        )
        order = presentationOrder(parts, smilReferences(smil))
        self.assertEqual(
            [p.name for p in order], ["dir/text_1.txt", "IMG_1.JPG", "song.mp3", "extra.amr"]
        )

    def test_zipOrderWithoutSmil(self):
        parts = [view("b.txt", "text/plain"), view("a.png", "image/png")]
        self.assertEqual(presentationOrder(parts, []), parts)

    @given(
        st.lists(st.sampled_from(["a.png", "b.txt", "c.smil", "A.PNG", "d/e.mp3"]), max_size=6),
        st.lists(st.sampled_from(["a.png", "B.TXT", "e.mp3", "zz", "cid:a.png"]), max_size=6),
    )
    def test_orderIsAPermutation(self, names, sources):
        parts = [
            view(n, "application/smil" if n.endswith(".smil") else "text/plain", f"f{i}")
            for i, n in enumerate(names)
        ]
        references = [SmilReference(s, "ref", None) for s in sources]
        order = presentationOrder(parts, references)
        self.assertEqual(
            sorted(p.file for p in order),
            sorted(p.file for p in parts if p.contentType != "application/smil"),
        )
