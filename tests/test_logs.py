"""
Logs: one structured event per callback, the JSON-lines format, redaction,
and how the observer reaches twistd.
"""

import io
import json
import re

from hypothesis import given
from hypothesis import strategies as st
from twisted.application.service import Application
from twisted.internet.defer import inlineCallbacks
from twisted.logger import (
    ILogObserver,
    Logger,
    LogPublisher,
    formatEvent,
    formatTime,
    globalLogPublisher,
)
from twisted.trial.unittest import TestCase

from mxrecv.ops.logs import (
    REDACTED,
    Redactor,
    installObserver,
    jsonObserver,
    secondsCache,
    textObserver,
)

from .running import SMS, client, run, runningConfig


class CallbackEventTests(TestCase):
    @inlineCallbacks
    def test_fields(self):
        """
        Each callback is logged once with its id, type, mode, status, bytes,
        time to ack and client address.
        """
        running = run(self, runningConfig(self))
        events = []

        def observe(event):
            if event.get("log_namespace") == "mxrecv.web.resource":
                events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        response = yield client().get(running.url, params=SMS)
        self.assertEqual(response.code, 200)
        [event] = events
        self.assertEqual(
            {
                k: event[k]
                for k in ("id", "type", "mode", "status", "bytes", "client", "duplicate")
            },
            {
                "id": "mx-1",
                "type": "sms",
                "mode": "get",
                "status": 200,
                "bytes": 0,
                "client": "127.0.0.1",
                "duplicate": False,
            },
        )
        self.assertGreater(event["ack_seconds"], 0)
        self.assertEqual(
            formatEvent(event),
            f"get callback mx-1 (sms) from 127.0.0.1: 200 in {event['ack_seconds']:.3f}s",
        )


    @inlineCallbacks
    def test_forgedLineEscaped(self):
        """
        A callback whose id and sender hold a line break, a carriage return
        and an escape sequence is one line of the text log, with them
        escaped; message.json keeps them exactly.
        """
        running = run(self, runningConfig(self))
        out = io.StringIO()
        observer = textObserver(out)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        forged = "x\n2026-11-25T10:30:00+0000 [-] forged\r\x1b[31m"
        response = yield client().get(running.url, params={**SMS, "id": forged, "from": forged})
        self.assertEqual(response.code, 200)
        [line] = [l for l in out.getvalue().splitlines() if "callback" in l]
        self.assertIn("callback x\\n2026-11-25T10:30:00+0000 [-] forged\\r\\x1b[31m (sms)", line)
        self.assertNotIn("forged", out.getvalue().replace(line, ""))
        [name] = [p.name for p in (running.spool / "new").iterdir()]
        document = json.loads((running.spool / "new" / name / "message.json").read_bytes())
        self.assertEqual((document["id"], document["from"]), (forged, forged))


class FormatTests(TestCase):
    def log(self, observer):
        return Logger(namespace="test", observer=LogPublisher(observer))

    FORGED = "mx-1\n2026-11-25T10:30:00+0000 [-] forged\r\x1b[2J\x00\t\u202e"

    def test_textControlCharactersEscaped(self):
        """
        Control characters in fields (CR, LF, ESC, NUL, tab, a bidi
        override) are escaped in the text log, however they are formatted:
        each event is one line. The JSON lines keep them exactly.
        """
        text, lines = io.StringIO(), io.StringIO()
        for observer in (textObserver(text), jsonObserver(lines)):
            log = self.log(observer)
            log.info("callback {id}: {status}", id=self.FORGED, status=200)
            log.info("refused: {error}", error=ValueError(self.FORGED))
            log.info("ids {ids!r}", ids=[self.FORGED])
        written = text.getvalue()
        self.assertEqual(written.count("\n"), 3, written)
        self.assertFalse(any(c in written for c in "\r\x1b\x00\t\u202e"), written)
        escaped = "mx-1\\n2026-11-25T10:30:00+0000 [-] forged\\r\\x1b[2J\\x00\\t\\u202e"
        first, second, third = written.splitlines()
        self.assertTrue(first.endswith(f"callback {escaped}: 200"), first)
        self.assertTrue(second.endswith(f"refused: {escaped}"), second)
        decoded = [json.loads(line) for line in lines.getvalue().splitlines()]
        self.assertEqual([d["log_text"] for d in decoded[:2]], [f"callback {self.FORGED}: 200", f"refused: {self.FORGED}"])
        self.assertEqual(decoded[0]["id"], self.FORGED)

    def test_tracebackKeepsItsLines(self):
        """
        A traceback keeps its lines (indented after the first, as twisted
        writes them), with the other control characters of its exception's
        message escaped.
        """
        out = io.StringIO()
        log = self.log(textObserver(out))
        try:
            raise ValueError(self.FORGED)
        except ValueError:
            log.failure("failed")
        written = out.getvalue()
        self.assertIn("Traceback", written)
        self.assertFalse(any(c in written for c in "\r\x1b\x00\u202e"), written)
        self.assertTrue(all(line.startswith("\t") for line in written.splitlines()[1:]), written)

    def test_jsonLines(self):
        out = io.StringIO()
        log = self.log(jsonObserver(out, ["hunter2"]))
        log.info("callback {id}: {status}", id="mx-1", status=200)
        log.warn(
            "retrieving {url}",
            url="https://mms.example/RetrieveMMS?user=u&password=hunter2&messageid=1",
        )
        first, second = (json.loads(line) for line in out.getvalue().splitlines())
        self.assertEqual((first["id"], first["status"]), ("mx-1", 200))
        self.assertEqual(first["log_text"], "callback mx-1: 200")
        self.assertEqual(first["log_level"], "info")
        self.assertEqual(second["log_level"], "warn")
        self.assertNotIn("hunter2", out.getvalue())
        self.assertIn(f"password={REDACTED}&messageid=1", second["url"])

    def test_textRedacted(self):
        """
        In the text format, a field holding the configured secret, a field
        named for a secret, and the password of a URL's query string or
        user information are redacted.
        """
        out = io.StringIO()
        log = self.log(textObserver(out, ["s3cret"]))
        log.info("got {x} and {password}", x="s3cret", password="other")
        log.info("fetching {url}", url="https://h/RetrieveMMS?user=u&pass=s3cret&id=1")
        log.info("fetching {url}", url="https://u:s3cret@h/x")
        lines = out.getvalue().splitlines()
        self.assertTrue(lines[0].endswith(f"got {REDACTED} and {REDACTED}"), lines[0])
        self.assertTrue(lines[1].endswith(f"?user=u&pass={REDACTED}&id=1"), lines[1])
        self.assertTrue(lines[2].endswith(f"https://u:{REDACTED}@h/x"), lines[2])
        self.assertNotIn("s3cret", out.getvalue())

    def test_shortPasswordManglesNothing(self):
        """
        Redaction is by structure, never by substring: with a password of
        one or a few characters, lines that merely contain them (every
        URL, every word) are written as they are, in either format, and
        give nothing away.
        """
        events = [
            ("Retrieving MMS {id} from {url}", {"id": "mx-1", "url": "https://mms.example/RetrieveMMS"}),
            ("MMS {id} failed after {count} attempts", {"id": "t", "count": 7}),
        ]
        for secret in ("t", "p", "s", "tt", "http"):
            text, lines = io.StringIO(), io.StringIO()
            for observer in (textObserver(text, [secret]), jsonObserver(lines, [secret])):
                log = self.log(observer)
                for format, fields in events:
                    log.info(format, **fields)
            written = text.getvalue().splitlines()
            self.assertTrue(
                written[0].endswith("Retrieving MMS mx-1 from https://mms.example/RetrieveMMS"),
                (secret, written[0]),
            )
            self.assertNotIn(REDACTED, "".join(written[:1]))
            self.assertNotIn(REDACTED, lines.getvalue().splitlines()[0])
            first = json.loads(lines.getvalue().splitlines()[0])
            self.assertEqual(first["url"], "https://mms.example/RetrieveMMS")
            self.assertEqual(first["log_text"], "Retrieving MMS mx-1 from https://mms.example/RetrieveMMS")

    def test_redactor(self):
        redact = Redactor(['pa"ss'])
        self.assertEqual(
            redact.event({"a": 'pa"ss', "b": 'a pa"ss b', "token": "x", "n": 1}),
            {"a": REDACTED, "b": 'a pa"ss b', "token": REDACTED, "n": 1},
        )
        self.assertEqual(redact.text("https://u:pw@host/x"), f"https://u:{REDACTED}@host/x")
        self.assertEqual(redact.text("GET /?a=1&pwd=x&b=2"), f"GET /?a=1&pwd={REDACTED}&b=2")
        self.assertEqual(redact.text("?pass=&x=1"), f"?pass={REDACTED}&x=1")
        self.assertEqual(redact.text("bypass=1 and a pass=2"), "bypass=1 and a pass=2")
        event = {"a": "b"}
        self.assertIs(redact.event(event), event)

    @given(st.text(st.sampled_from("pas=sword&?;pwd@:/htp token secret xQ\"'\\\n")))
    def test_redactorSkipsOnlyWhatCannotMatch(self, text):
        """
        Skipping the patterns for lines without C{=} or C{@} changes nothing:
        the same as applying them to every line.
        """
        everyLine = re.sub(
            r"(?i)\b(https?://[^:/@\s\"']+):([^@/\s\"']+)@",
            rf"\1:{REDACTED}@",
            re.sub(
                r"(?i)(?<=[?&;])(pass(?:word)?|pwd|secret|token)=([^&;#\s\"'\\]*)",
                rf"\1={REDACTED}",
                text,
            ),
        )
        self.assertEqual(Redactor().text(text), everyLine)

    @given(st.lists(st.floats(0, 4e9) | st.integers(0, 4 * 10**9) | st.none(), max_size=30))
    def test_timeStampsCached(self, times):
        """
        Cached per second, time stamps are what twistd's own would be, in
        any order and for times within one second.
        """
        cached = secondsCache(formatTime)
        for when in times:
            self.assertEqual(cached(when), formatTime(when))

    def test_installed(self):
        """
        Attached to twistd's application, the service's observer becomes the
        application's ILogObserver (which twistd uses); not otherwise.
        """
        application = Application("mxrecv")
        observer = jsonObserver(io.StringIO())
        installObserver(application, lambda: observer)
        self.assertIs(application.getComponent(ILogObserver), observer)
        installObserver(object(), lambda: self.fail("made an observer"))
