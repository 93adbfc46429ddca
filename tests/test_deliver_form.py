"""
The multipart/form-data body of a POST to the application: what a
multipart parser (the one mxrecv itself uses for MX Telecom's POSTs) reads
back from it is what was put in, and it reads the same twice.
"""

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from multipart import MultipartSegment, PushMultipartParser
from twisted.trial.unittest import SynchronousTestCase

from mxrecv.deliver.form import CHUNK, FormBody, FormField, quoteParameter

# Names as a zip or a form may hold them (no "%": "%22" would read back as '"',
# as it does from a browser).
names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="%\x00"), max_size=30
)
contentTypes = st.sampled_from(["text/plain", "image/jpeg", "application/octet-stream"])


def parse(body: bytes, boundary: bytes):
    parser = PushMultipartParser(boundary)
    fields = []
    for event in parser.parse(body):
        if isinstance(event, MultipartSegment):
            fields.append([event.name, event.filename, event.header("Content-Type"), b""])
        elif event:
            fields[-1][3] += bytes(event)
    list(parser.parse(b""))
    assert parser.closed
    return [tuple(f) for f in fields]


class FormTests(SynchronousTestCase):
    @settings(deadline=None)
    @given(
        st.lists(
            st.tuples(names, names, contentTypes, st.binary(max_size=3 * CHUNK // 2)),
            min_size=1,
            max_size=4,
        ),
        st.data(),
    )
    def test_roundTrip(self, fields, data):
        """
        Fields of inline data or files, with any names, read back as they
        were given.
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        form = []
        for i, (name, filename, kind, content) in enumerate(fields):
            if data.draw(st.booleans()):
                form.append(FormField(name, filename, kind, data=content))
            else:
                path = directory / str(i)
                path.write_bytes(content)
                form.append(FormField(name, filename, kind, path=path))
        body = FormBody.withRandomBoundary(form)
        encoded = b"".join(body.chunks())
        self.assertEqual(encoded, b"".join(body.chunks()))
        self.assertEqual(body.contentType, b"multipart/form-data; boundary=" + body.boundary)
        self.assertEqual(parse(encoded, body.boundary), fields)

    def test_quoting(self):
        """
        Quotes and line breaks in names are percent-encoded, as browsers do;
        anything else is UTF-8.
        """
        self.assertEqual(quoteParameter('a"b\r\nc é'), b"a%22b%0D%0Ac \xc3\xa9")

    def test_missingFile(self):
        body = FormBody.withRandomBoundary(
            [FormField("part", "x", "text/plain", path=Path("/nonexistent"))]
        )
        self.assertRaises(FileNotFoundError, b"".join, body.chunks())
