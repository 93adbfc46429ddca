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
    installObserver,
    jsonObserver,
    redactor,
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


class FormatTests(TestCase):
    def log(self, observer):
        return Logger(namespace="test", observer=LogPublisher(observer))

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
        out = io.StringIO()
        self.log(textObserver(out, ["s3cret"])).info("got {x}", x="token s3cret here")
        self.assertIn(f"got token {REDACTED} here", out.getvalue())

    def test_redactor(self):
        redact = redactor(['pa"ss'])
        self.assertEqual(redact('a pa"ss b'), f"a {REDACTED} b")
        self.assertEqual(redact('"pa\\"ss"'), f'"{REDACTED}"')
        self.assertEqual(redact("https://u:pw@host/x"), f"https://u:{REDACTED}@host/x")
        self.assertEqual(redact("a=1&pwd=x&b=2"), f"a=1&pwd={REDACTED}&b=2")

    @given(st.text(st.sampled_from("pas=sword&pwd@:/htp token secret xQ\"'\\\n")))
    def test_redactorSkipsOnlyWhatCannotMatch(self, text):
        """
        Skipping the patterns for lines without C{=} or C{@} changes nothing:
        the same as applying them to every line.
        """
        everyLine = re.sub(
            r"(?i)\b(https?://[^:/@\s\"']+):([^@/\s\"']+)@",
            rf"\1:{REDACTED}@",
            re.sub(r"(?i)\b(pass(?:word)?|pwd|secret|token)=([^&\s\"'\\]+)", rf"\1={REDACTED}", text),
        )
        self.assertEqual(redactor([])(text), everyLine)

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
