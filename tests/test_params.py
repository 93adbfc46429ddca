import json
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mxrecv.message.dates import isoFromTimestamp, parseDate
from mxrecv.message.model import MMS, SMS, Message
from mxrecv.message.params import LIMITS, REQUIRED, BadParameter, parseCallback
from mxrecv.message.text import decodeText

from .strategies import callbackParams, mxDates

LONDON = ZoneInfo("Europe/London")
RECEIVED = "2026-11-25T10:30:00.000Z"


def parse(params, delivery="get"):
    return parseCallback(params, delivery=delivery, received=RECEIVED, zone=LONDON)


VALID = {
    b"id": [b"1"],
    b"from": [b"447700900123"],
    b"to": [b"80000"],
    b"date": [b"2026-11-25 10:30:00"],
    b"type": [b"6"],
}


class ParseCallbackTests(SynchronousTestCase):
    @given(callbackParams())
    def test_roundTrip(self, params) -> None:
        """
        Any valid parameter set gives a message whose message.json holds the
        parameters as sent, and survives encoding and decoding.
        """
        message = parse(params)
        document = message.toJSON()
        self.assertEqual(document["id"].encode(), params[b"id"][0])
        self.assertEqual(document["from"].encode(), params[b"from"][0])
        self.assertEqual([t.encode() for t in document["to"]], params[b"to"])
        self.assertEqual([c.encode() for c in document["cc"]], params.get(b"cc", []))
        self.assertEqual(document["date"].encode(), params[b"date"][0])
        self.assertEqual(document["type"], MMS if params[b"type"] == [b"2"] else SMS)
        for key in ("network", "subject", "expiry"):
            sent = params.get(key.encode())
            self.assertEqual(document[key], sent[0].decode() if sent else None)
        if b"message" in params:
            self.assertEqual(
                document["message"].encode(document["charset"]), params[b"message"][0]
            )
        else:
            self.assertIsNone(document["message"])
            self.assertIsNone(document["charset"])
        self.assertEqual(document["delivery"], "get")
        self.assertEqual(document["received"], RECEIVED)
        self.assertEqual(Message.decode(message.encode()), message)

    @given(st.binary(max_size=LIMITS[b"message"]))
    def test_anySmsBytes(self, text: bytes) -> None:
        """
        Any bytes as SMS text are stored without a crash, and recoverable by
        encoding the text with the recorded charset.
        """
        message = parse({**VALID, b"message": [text]})
        self.assertIn(message.charset, ("utf-8", "iso-8859-15"))
        self.assertEqual(message.message.encode(message.charset), text)
        self.assertEqual(Message.decode(message.encode()), message)

    @given(st.binary(min_size=1, max_size=LIMITS[b"id"]))
    def test_anyIdBytes(self, raw: bytes) -> None:
        """
        Any id is kept with the charset that gives its bytes back, through
        message.json too.
        """
        message = parse({**VALID, b"id": [raw]})
        self.assertEqual(message.rawId, raw)
        document = json.loads(message.encode())
        self.assertEqual(document["id"].encode(document["id_charset"]), raw)
        self.assertEqual(Message.decode(message.encode()).rawId, raw)

    def test_idCharset(self) -> None:
        self.assertEqual(parse({**VALID, b"id": ["café".encode()]}).id_charset, "utf-8")
        message = parse({**VALID, b"id": [b"caf\xe9"]})
        self.assertEqual((message.id, message.id_charset), ("café", "iso-8859-15"))

    def test_idCharsetOfOldFiles(self) -> None:
        """
        A message.json written before ids kept their charset reads as UTF-8.
        """
        document = json.loads(parse(VALID).encode())
        del document["id_charset"]
        self.assertEqual(Message.fromJSON(document).rawId, b"1")

    def test_utf8Preferred(self) -> None:
        message = parse({**VALID, b"message": ["£5 €".encode()]})
        self.assertEqual((message.message, message.charset), ("£5 €", "utf-8"))

    def test_latin9(self) -> None:
        message = parse({**VALID, b"message": [b"\xa35 \xa4"]})
        self.assertEqual((message.message, message.charset), ("£5 €", "iso-8859-15"))

    def assertBad(self, params, name: str, reason: str = "") -> BadParameter:
        e = self.assertRaises(BadParameter, parse, params)
        self.assertEqual(e.name, name)
        self.assertIn(reason, e.reason)
        self.assertIn(name, str(e))
        return e

    def test_missingOrEmpty(self) -> None:
        for name in REQUIRED:
            without = {k: v for k, v in VALID.items() if k != name}
            self.assertBad(without, name.decode(), "missing")
            self.assertBad({**VALID, name: [b""]}, name.decode(), "missing")

    def test_unknownType(self) -> None:
        self.assertBad({**VALID, b"type": [b"3"]}, "type", "unknown type")

    def test_badDates(self) -> None:
        for bad in [b"25/11/2026 10:30", b"2026-11-25", b"2026-02-30 10:00:00", b"2026-11-25 25:00:00"]:
            self.assertBad({**VALID, b"date": [bad]}, "date")
        self.assertBad({**VALID, b"type": [b"2"], b"expiry": [b"tomorrow"]}, "expiry")
        self.assertBad(
            {**VALID, b"type": [b"2"], b"expiry": [b"0001-01-01 00:00:00+2359"]}, "expiry", "range"
        )

    def test_tooLong(self) -> None:
        for name, limit in LIMITS.items():
            value = b"1" * (limit + 1)
            self.assertBad({**VALID, name: [value]}, name.decode(), "longer than")

    def test_tooManyRecipients(self) -> None:
        self.assertBad({**VALID, b"to": [b"1"] * 101}, "to", "more than 100")

    def test_givenTwice(self) -> None:
        self.assertBad({**VALID, b"id": [b"1", b"2"]}, "id", "more than once")

    def test_repeatedRecipients(self) -> None:
        message = parse({**VALID, b"type": [b"2"], b"to": [b"1", b"2"], b"cc": [b"3", b"4"]})
        self.assertEqual((message.to, message.cc), (("1", "2"), ("3", "4")))

    def test_unknownParametersIgnored(self) -> None:
        self.assertEqual(parse({**VALID, b"future": [b"x"]}).id, "1")


class DateTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """
        The three forms MX Telecom's page has used: no offset (the
        configured zone), a numeric offset, and Z.
        """
        utc = datetime(2010, 8, 21, 16, 32, 21, tzinfo=timezone.utc)
        self.assertEqual(parseDate("2010-08-21 17:32:21", LONDON), utc)
        self.assertEqual(parseDate("2010-08-21 16:32:21 +0000", LONDON), utc)
        self.assertEqual(parseDate("2010-08-21 18:32:21+02:00", LONDON), utc)
        self.assertEqual(parseDate("2010-08-21 16:32:21Z", LONDON), utc)

    def test_offsetOutOfRange(self) -> None:
        """
        A date whose offset carries it out of years 1-9999 is refused: it
        could be neither formatted nor compared later (an MMS with such an
        expiry could never reach failed/).
        """
        for text in ["0001-01-01 00:00:00+2359", "9999-12-31 23:59:59-0100"]:
            self.assertRaises(ValueError, parseDate, text, LONDON)

    @given(mxDates())
    def test_generated(self, text: str) -> None:
        moment = parseDate(text, LONDON)
        self.assertIsNotNone(moment.utcoffset())
        self.assertEqual(moment.strftime("%Y-%m-%d %H:%M:%S"), text[:19])

    @given(mxDates(), st.data())
    def test_onlyASCIIDigits(self, text: str, data) -> None:
        """
        A date with any of its digits written in another script (Arabic-Indic,
        Devanagari, fullwidth...) is refused, offset digits included.
        """
        positions = [i for i, c in enumerate(text) if c.isdigit()]
        i = data.draw(st.sampled_from(positions))
        digit = data.draw(
            st.characters(categories=["Nd"]).filter(lambda c: not c.isascii())
        )
        self.assertRaises(ValueError, parseDate, text[:i] + digit + text[i + 1 :], LONDON)

    def test_arabicIndicDateRefused(self) -> None:
        """
        A callback whose date is in Arabic-Indic digits gets 400 for its date
        (and for its expiry).
        """
        arabic = "٢٠٢٦-١١-٢٥ ١٠:٣٠:٠٠".encode()
        e = self.assertRaises(BadParameter, parse, {**VALID, b"date": [arabic]})
        self.assertEqual(e.name, "date")
        e = self.assertRaises(BadParameter, parse, {**VALID, b"type": [b"2"], b"expiry": [arabic]})
        self.assertEqual(e.name, "expiry")

    def test_isoFromTimestamp(self) -> None:
        self.assertEqual(isoFromTimestamp(0), "1970-01-01T00:00:00.000Z")
        self.assertEqual(isoFromTimestamp(1.5), "1970-01-01T00:00:01.500Z")


class DecodeTextTests(SynchronousTestCase):
    @given(st.binary())
    def test_anyBytes(self, data: bytes) -> None:
        text, charset = decodeText(data)
        self.assertEqual(text.encode(charset), data)
