"""
The spool's layout (L{mxrecv.spool.layout}): its documents and their one
writer, and the handle on a message's directory
(L{mxrecv.spool.directory}), on real files.
"""

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mxrecv.message.model import SMS, Message, decodeJSON, encodeJSON
from mxrecv.spool.directory import MessageDirectory
from mxrecv.spool.layout import (
    FAILED,
    MESSAGE_ENTRIES,
    MESSAGE_JSON,
    NEW,
    PENDING,
    RETRIEVE_JSON,
    Attempt,
    Attempts,
    Layout,
    RetrieveState,
    failedDocument,
    requeuedDocument,
)

from .strategies import anyText, jsonValues

attempts = st.lists(st.builds(Attempt, anyText, anyText), max_size=14).map(Attempts.of)
documents = st.dictionaries(
    anyText.filter(lambda k: k not in ("error", "attempts", "attempt_count")), jsonValues
)


class DocumentTests(SynchronousTestCase):
    @given(documents, anyText, attempts)
    def test_failedAndRequeued(self, message, error, tried):
        """
        A failed message's document is the message's, then C{error},
        C{attempts} (the last ten) and C{attempt_count}; requeueing takes
        exactly those back.
        """
        failed = failedDocument(message, error, tried)
        self.assertEqual(list(failed)[-3:], ["error", "attempts", "attempt_count"])
        self.assertEqual(failed["error"], error)
        self.assertEqual([Attempt.fromJSON(a) for a in failed["attempts"]], list(tried.recent))
        self.assertLessEqual(len(failed["attempts"]), 10)
        self.assertEqual(failed["attempt_count"], tried.count)
        self.assertEqual(requeuedDocument(failed), message)

    @given(attempts, st.none() | anyText.filter(bool))
    def test_retrieveStateRoundTrip(self, tried, requeued):
        state = RetrieveState(tried, requeued)
        self.assertEqual(RetrieveState.fromJSON(decodeJSON(encodeJSON(state.toJSON()))), state)

    def test_retrieveStateRefused(self):
        """
        A C{retrieve.json} that does not follow the schema is refused with
        ValueError, whatever is wrong with it.
        """
        for document in (
            [],
            {},
            {"attempts": None},
            {"attempts": [{"at": "x"}]},
            {"attempts": ["x"]},
            {"attempts": [], "requeued": 5},
        ):
            self.assertRaises(ValueError, RetrieveState.fromJSON, document)

    def test_paths(self):
        layout = Layout(Path("/spool"))
        self.assertEqual(layout.dir(NEW), Path("/spool/new"))
        self.assertEqual(layout.message(FAILED, "m1"), Path("/spool/failed/m1"))
        self.assertEqual(layout.delivered(), Path("/spool/state/delivered"))


MESSAGE = Message(
    id="m1", type=SMS, sender="447700900123", to=("80000",), date="2026-11-25 10:30:00",
    delivery="get", received="2026-11-25T10:30:01.000Z", message="Hé",
)


class MessageDirectoryTests(SynchronousTestCase):
    def setUp(self):
        self.root = Path(self.mktemp())
        for which in (PENDING, NEW, FAILED):
            (self.root / which).mkdir(parents=True)
        self.pending = MessageDirectory.at(self.root, PENDING, "m1")
        self.pending.path.mkdir()
        self.pending.writeMessage(MESSAGE)

    def test_failThenRequeue(self):
        """
        A message failed with its reason, then requeued, has its own
        C{message.json} again and a new retrieval window, and keeps its
        C{retrieve.json} across the move back to C{pending/}.
        """
        self.pending.fail("gave up", Attempts.of([Attempt("2026-11-25T10:30:05Z", "HTTP 500")]))
        failed = self.pending.finishIn(self.root / FAILED)
        self.assertEqual(failed.path, self.root / FAILED / "m1")
        document = json.loads((failed.path / MESSAGE_JSON).read_bytes())
        self.assertEqual(document["error"], "gave up")
        self.assertEqual(document["attempts"], [{"at": "2026-11-25T10:30:05Z", "outcome": "HTTP 500"}])

        failed.requeue("2026-11-26T00:00:00.000Z")
        back = failed.moveTo(self.root / PENDING)
        self.assertEqual(back.readMessage(), MESSAGE)
        self.assertEqual(back.readDocument(), MESSAGE.toJSON())
        self.assertEqual(back.readRetrieveState(), RetrieveState(requeued="2026-11-26T00:00:00.000Z"))

    def test_finishInTakesOnlyTheMessage(self):
        """
        Out of C{pending/}, a message takes only what the layout allows:
        its retrieval record and a partial download stay behind, removed.
        """
        self.pending.writeRetrieveState(RetrieveState(Attempts.of([Attempt("t", "HTTP 503")])))
        self.pending.partialZip.write_bytes(b"PK")
        self.pending.zip.write_bytes(b"PK\x05\x06" + bytes(18))
        self.pending.parts.mkdir()
        done = self.pending.finishIn(self.root / NEW)
        self.assertEqual({p.name for p in done.path.iterdir()}, MESSAGE_ENTRIES)
        self.assertFalse(self.pending.exists())

    def test_noRetrieveState(self):
        self.assertIsNone(self.pending.readRetrieveState())
        (self.pending.path / RETRIEVE_JSON).write_bytes(b"{")
        self.assertRaises(ValueError, self.pending.readRetrieveState)

    def test_unreadableDocument(self):
        """
        For listings, a C{message.json} that cannot be read is an empty
        document.
        """
        (self.pending.path / MESSAGE_JSON).write_bytes(b"[1]\n")
        self.assertEqual(self.pending.readDocument(), {})
        (self.pending.path / MESSAGE_JSON).unlink()
        self.assertEqual(self.pending.readDocument(), {})
