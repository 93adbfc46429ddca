import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mxrecv.message.model import MMS, Message, Part, decodeJSON, encodeJSON

from .strategies import anyText, jsonValues


class OneWriterTests(SynchronousTestCase):
    @given(jsonValues)
    def test_sameAsJSONModule(self, value):
        """
        The one JSON writer of the spool's documents writes byte for byte
        what json.dumps(indent=2) writes, non-ASCII as is, with a final
        newline (message.json's layout stays as it was, whatever the
        values), and reads back what it wrote.
        """
        data = encodeJSON(value)
        self.assertEqual(
            data,
            json.dumps(value, ensure_ascii=False, indent=2).encode("utf-8", "surrogatepass")
            + b"\n",
        )
        self.assertEqual(decodeJSON(data), json.loads(json.dumps(value)))


class MessageEncodingTests(SynchronousTestCase):
    @given(
        text=anyText,
        to=st.lists(anyText, min_size=1, max_size=3),
        size=st.integers(0, 2**40),
        names=st.lists(anyText, max_size=3),
    )
    def test_roundTrip(self, text, to, size, names):
        """
        A message with every kind of field (lists, nested parts, numbers,
        None) decodes to itself, and its bytes are json's own indented
        form.
        """
        message = Message(
            id="m1", type=MMS, sender="447700900123", to=tuple(to), date="2026-11-25 10:00:00 +0000",
            delivery="post", received="2026-11-25T10:00:01Z", message=text, mms_size=size,
            parts=tuple(Part(n, f"parts/{i}", size, "text/plain") for i, n in enumerate(names)),
        )
        data = message.encode()
        self.assertEqual(Message.decode(data), message)
        self.assertEqual(
            data,
            json.dumps(message.toJSON(), ensure_ascii=False, indent=2).encode("utf-8", "surrogatepass")
            + b"\n",
        )
