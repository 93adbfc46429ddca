"""
The callback server over a real port on 127.0.0.1, with treq as the client.
"""

from ipaddress import ip_network
from urllib.parse import urlencode

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from mxrecv.message import Message
from mxrecv.spool import NEW, PENDING

from .support import (
    SMS,
    DeadlineClock,
    httpClient,
    openSpool,
    rawExchange,
    serverConfig,
    startServer,
)


def files(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


class CallbackTests(TestCase):
    def setUp(self):
        self.treq = httpClient(self)
        self.server = startServer(self)
        self.spool = self.server.spool

    def get(self, params, path=""):
        return self.treq.get(self.server.url + path, params=params)

    @inlineCallbacks
    def assertAnswer(self, response, code: int, text: str = ""):
        body = yield response.text()
        self.assertEqual((response.code, text in body), (code, True), body)
        return body

    @inlineCallbacks
    def test_sms(self):
        """
        A GET SMS callback is answered 200 with the ack once it is in new/.
        """
        response = yield self.get(SMS)
        body = yield self.assertAnswer(response, 200)
        self.assertEqual(body, "OK\n")
        self.assertEqual(response.length, 3)
        message = Message.decode((self.spool.dir(NEW) / "mx-1" / "message.json").read_bytes())
        self.assertEqual((message.id, message.message, message.delivery), ("mx-1", "Hello", "get"))
        self.assertEqual(message.network, "vodafone")

    @inlineCallbacks
    def test_latin9Sms(self):
        """
        SMS text sent as ISO-8859-15 bytes in the query string is decoded
        as such and recorded.
        """
        url = self.server.url + "?" + urlencode({**SMS, "message": "x"}).replace(
            "message=x", "message=%A35%A4"
        )
        yield self.assertAnswer((yield self.treq.get(url)), 200)
        message = Message.decode((self.spool.dir(NEW) / "mx-1" / "message.json").read_bytes())
        self.assertEqual((message.message, message.charset), ("£5€", "iso-8859-15"))

    @inlineCallbacks
    def test_duplicate(self):
        yield self.assertAnswer((yield self.get(SMS)), 200)
        yield self.assertAnswer((yield self.get({**SMS, "message": "again"})), 200)
        self.assertEqual(files(self.spool.dir(NEW)), ["mx-1"])
        message = Message.decode((self.spool.dir(NEW) / "mx-1" / "message.json").read_bytes())
        self.assertEqual(message.message, "Hello")

    @inlineCallbacks
    def test_mmsNotification(self):
        """
        A GET MMS notification is journaled in pending/ before its 200.
        """
        params = {**SMS, "type": "2", "expiry": "2026-11-26 10:30:00", "cc": ["1", "2"]}
        del params["message"]
        yield self.assertAnswer((yield self.get(params)), 200)
        self.assertEqual(files(self.spool.dir(PENDING)), ["mx-1"])
        message = Message.decode((self.spool.dir(PENDING) / "mx-1" / "message.json").read_bytes())
        self.assertEqual((message.type, message.cc, message.expiry), ("mms", ("1", "2"), "2026-11-26 10:30:00"))

    @inlineCallbacks
    def test_formPost(self):
        """
        The same parameters in an urlencoded POST body are accepted, with
        delivery "post".
        """
        response = yield self.treq.post(self.server.url, data={**SMS, "id": "form"})
        yield self.assertAnswer(response, 200)
        message = Message.decode((self.spool.dir(NEW) / "form" / "message.json").read_bytes())
        self.assertEqual(message.delivery, "post")

    @inlineCallbacks
    def test_badParameter(self):
        """
        A bad callback gets 400 naming the parameter, and nothing is stored.
        """
        without = {k: v for k, v in SMS.items() if k != "to"}
        yield self.assertAnswer((yield self.get(without)), 400, "'to': missing or empty")
        yield self.assertAnswer((yield self.get({**SMS, "type": "9"})), 400, "'type'")
        yield self.assertAnswer((yield self.get({**SMS, "date": "yesterday"})), 400, "'date'")
        yield self.assertAnswer((yield self.get({**SMS, "from": "1" * 300})), 400, "longer than")
        self.assertEqual(files(self.spool.dir(NEW)), [])
        self.assertEqual(files(self.spool.dir("tmp")), [])

    @inlineCallbacks
    def test_otherPath(self):
        yield self.assertAnswer((yield self.get(SMS, "nope")), 404)

    @inlineCallbacks
    def test_otherMethod(self):
        response = yield self.treq.put(self.server.url, data=b"")
        yield self.assertAnswer(response, 405)
        self.assertEqual(response.headers.getRawHeaders("allow"), ["GET, POST"])

    @inlineCallbacks
    def test_unsupportedBody(self):
        response = yield self.treq.post(self.server.url, data=b"x", headers={"Content-Type": "text/plain"})
        yield self.assertAnswer(response, 415)

    @inlineCallbacks
    def test_notDurable(self):
        """
        When the spool cannot be written the callback gets 503 (MX Telecom
        retries), nothing is half-written, and the retry is stored.
        """
        new = self.spool.dir(NEW)
        new.rmdir()
        new.write_bytes(b"")
        yield self.assertAnswer((yield self.get(SMS)), 503, "not stored")
        self.assertEqual(files(self.spool.dir("tmp")), [])
        new.unlink()
        new.mkdir()
        yield self.assertAnswer((yield self.get(SMS)), 200)
        self.assertEqual(files(new), ["mx-1"])


class RefusalTests(TestCase):
    """
    Refusals before the body is read: the client gets its answer without
    sending the body at all.
    """

    @inlineCallbacks
    def test_forbiddenBeforeBody(self):
        """
        A client outside the allow list gets 403 from the headers alone, and
        no "100 Continue".
        """
        server = startServer(self, allow=(ip_network("83.166.68.0/23"),))
        answer = yield rawExchange(
            server.port,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Expect: 100-continue\r\nContent-Length: 50000000\r\n\r\n",
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 403 Forbidden\r\n"), answer)
        self.assertIn(b"client address not allowed", answer)
        self.assertEqual(files(server.spool.dir("tmp")), [])

    @inlineCallbacks
    def test_forbiddenGet(self):
        server = startServer(self, allow=())
        response = yield httpClient(self).get(server.url, params=SMS)
        self.assertEqual(response.code, 403)
        self.assertEqual(files(server.spool.dir(NEW)), [])

    @inlineCallbacks
    def test_tooLargeBeforeBody(self):
        server = startServer(self, max_body=1000)
        answer = yield rawExchange(
            server.port,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 1001\r\n\r\n",
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)
        self.assertIn(b"over the limit of 1000", answer)

    @inlineCallbacks
    def test_chunkedTooLarge(self):
        """
        A chunked body that grows past max_body is cut off with 413.
        """
        server = startServer(self, max_body=1000)
        chunk = b"%x\r\n%s\r\n" % (600, b"a" * 600)
        answer = yield rawExchange(
            server.port,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunk + chunk,
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)

    @inlineCallbacks
    def test_stalledClientTimedOut(self):
        """
        A client that stops sending mid-body is answered 408 and cut off when
        the request deadline passes, however recently it sent a byte.
        """
        clock = DeadlineClock(30.0)
        server = startServer(self, siteReactor=clock, request_timeout=30.0)
        exchange = rawExchange(
            server.port,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 100\r\n\r\nid=1",
        )
        yield clock.scheduled
        clock.advance(30.0)
        answer = yield exchange
        self.assertTrue(answer.startswith(b"HTTP/1.1 408 "), answer)


class RestartTests(TestCase):
    @inlineCallbacks
    def test_restartOnSameSpool(self):
        """
        After a restart on the same spool, a retry of an accepted callback is
        answered 200 and not stored twice, and new callbacks are stored.
        """
        treq = httpClient(self)
        first = startServer(self)
        yield treq.get(first.url, params=SMS)
        yield first.port.stopListening()
        first.spool.close()
        spool = openSpool(self, first.spool.root)
        second = startServer(self, spool=spool)
        response = yield treq.get(second.url, params=SMS)
        self.assertEqual(response.code, 200)
        response = yield treq.get(second.url, params={**SMS, "id": "mx-2"})
        self.assertEqual(response.code, 200)
        self.assertEqual(files(spool.dir(NEW)), ["mx-1", "mx-2"])

    def test_configPath(self):
        self.assertEqual(serverConfig(path="/mx").server.path, "/mx")
