"""
The callback server over a real port on 127.0.0.1, with treq as the client.
"""

import json
from ipaddress import ip_network
from urllib.parse import urlencode

from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from mxrecv.message.model import Message
from mxrecv.spool.layout import NEW, PENDING
from mxrecv.web.service import buildSite

from .support import (
    SMS,
    ChannelWatch,
    DeadlineClock,
    connectPeer,
    fileWriters,
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
    def test_idsOfOtherBytesDistinct(self):
        """
        Ids that differ in their bytes are different messages, even where
        one is not valid UTF-8 and its ISO-8859-15 decoding encodes to the
        other ("x%FF" and "x%C3%BF", "caf%E9" and "caf%C3%A9"): each is
        stored, under a name made of its bytes, and its message.json gives
        the bytes back.
        """
        sent = [b"x\xff", b"x\xc3\xbf", b"caf\xe9", b"caf\xc3\xa9"]
        for raw in sent:
            query = urlencode({**SMS, "id": raw})
            response = yield self.treq.get(self.server.url + "?" + query)
            yield self.assertAnswer(response, 200)
        self.assertEqual(files(self.spool.dir(NEW)), ["caf=C3=A9", "caf=E9", "x=C3=BF", "x=FF"])
        stored = []
        for name in files(self.spool.dir(NEW)):
            document = json.loads((self.spool.dir(NEW) / name / "message.json").read_bytes())
            stored.append(document["id"].encode(document["id_charset"]))
        self.assertEqual(sorted(stored), sorted(sent))

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
        When the message cannot be put in new/ the callback gets 503 (MX
        Telecom retries); the retry gets its 200 once it can be, and the
        message is stored once, with nothing left in tmp/.
        """
        new = self.spool.dir(NEW)
        new.rmdir()
        new.write_bytes(b"")
        yield self.assertAnswer((yield self.get(SMS)), 503, "not stored")
        new.unlink()
        new.mkdir()
        yield self.assertAnswer((yield self.get(SMS)), 200)
        self.assertEqual(files(new), ["mx-1"])
        self.assertEqual(files(self.spool.dir("tmp")), [])


class RefusalTests(TestCase):
    """
    Refusals before the body is read: the client gets its answer without
    sending the body at all.
    """

    @inlineCallbacks
    def test_notAllowedDroppedAtAccept(self):
        """
        A client outside the allow list is disconnected at accept: no
        answer, no "100 Continue", nothing read or stored, no channel made.
        """
        server = startServer(self, allow=(ip_network("83.166.68.0/23"),))
        watch = ChannelWatch(server.site)
        answer = yield rawExchange(
            server.port,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Expect: 100-continue\r\nContent-Length: 50000000\r\n\r\n",
        )
        self.assertEqual(answer, b"")
        answer = yield rawExchange(server.port, b"GET /?" + urlencode(SMS).encode() + b" HTTP/1.1\r\n\r\n")
        self.assertEqual(answer, b"")
        self.assertEqual((watch.channels, watch.received), ([], 0))
        self.assertEqual(files(server.spool.dir("tmp")), [])
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
        # header_timeout apart, so that the clock waits for the request's
        # deadline (scheduled once the headers are in), not the connection's.
        server = startServer(self, siteReactor=clock, request_timeout=30.0, header_timeout=10.0)
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


class _DrivenClock:
    """
    A test whose site's clock it drives, on real connections: the helpers.
    """

    HEADER = 20.0
    # Waits are on real connections: a failure should not take trial's
    # default two minutes.
    timeout = 30

    def start(self, **server):
        self.clock = Clock()
        self.server = startServer(self, siteReactor=self.clock, header_timeout=self.HEADER, **server)
        self.watch = ChannelWatch(self.server.site)
        self.outcomes = []
        self.server.site.observe = self.outcomes.append

    @inlineCallbacks
    def connect(self):
        """
        A L{Peer} connected to the server; fire once the server has its end.
        """
        made = self.watch.connected(len(self.watch.channels) + 1)
        peer = yield connectPeer(self.server.port)
        self.addCleanup(lambda: None if peer.lost.called else self.disconnect(peer))
        yield made
        return peer

    def disconnect(self, peer):
        peer.transport.loseConnection()
        return peer.lost

    def send(self, peer, data: bytes):
        """
        Send C{data}; fire once the server has had it.
        """
        peer.transport.write(data)
        return self.watch.hasReceived(self.watch.received + len(data))


class HeaderDeadlineTests(_DrivenClock, TestCase):
    """
    A request's headers must be in within header_timeout of the connection
    (or, on a kept-alive connection, of the request's first byte), however
    steadily they trickle; the site's clock is driven by the test, the
    connections are real.
    """

    def setUp(self):
        self.start()
        # twisted.web's idle timeout, which each byte starts again.
        self.idle = self.server.site.timeOut
        self.assertGreater(self.idle, self.HEADER * 2)

    def get(self, id: str) -> bytes:
        return b"GET /?%s HTTP/1.1\r\nHost: x\r\n\r\n" % urlencode({**SMS, "id": id}).encode()

    @inlineCallbacks
    def test_halfRequestLine(self):
        """
        A client that sends half a request line and then nothing is answered
        408 and cut off once header_timeout has passed since it connected,
        with one event logged and counted.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        peer = yield self.connect()
        self.clock.advance(5)
        yield self.send(peer, b"GET /?id=1&fr")
        self.clock.advance(self.HEADER - 5 - 1)
        self.assertEqual(self.outcomes, [])
        self.clock.advance(1)
        yield peer.lost
        self.assertTrue(peer.received.startswith(b"HTTP/1.1 408 "), peer.received)
        self.assertIn(b"request headers not complete after 20 seconds", peer.received)
        [outcome] = self.outcomes
        self.assertEqual(
            (outcome.status, outcome.mode, outcome.client, outcome.ack_seconds),
            (408, "other", "127.0.0.1", self.HEADER),
        )
        [event] = [e for e in events if e["log_namespace"] == "mxrecv.web.request"]
        self.assertEqual((event["status"], event["client"]), (408, "127.0.0.1"))

    @inlineCallbacks
    def test_tricklingHeaders(self):
        """
        A client that sends a header byte by byte, each well within the idle
        timeout, is still cut off at header_timeout.
        """
        peer = yield self.connect()
        yield self.send(peer, b"GET / HTTP/1.1\r\nHost: x\r\n")
        sent = 0
        for byte in b"X-Slow: 123456789":
            yield self.send(peer, bytes([byte]))
            sent += 1
            self.clock.advance(self.HEADER * 0.75)
            if self.outcomes:
                break
        self.assertEqual(sent, 2)
        yield peer.lost
        self.assertTrue(peer.received.startswith(b"HTTP/1.1 408 "), peer.received)
        [outcome] = self.outcomes
        self.assertEqual((outcome.status, outcome.mode), (408, "get"))

    @inlineCallbacks
    def test_idleKeepAliveLeftToIdleTimeout(self):
        """
        A kept-alive connection idle after its request is not closed by the
        header deadline, only by the idle timeout, and without a 408.
        """
        peer = yield self.connect()
        yield self.send(peer, self.get("mx-1"))
        yield peer.waitFor(b"OK\n")
        self.clock.advance(self.HEADER * 2)
        self.assertEqual(self.outcomes, [])
        self.assertFalse(self.watch.channels[0].transport.disconnecting)
        self.clock.advance(self.idle - self.HEADER * 2)
        yield peer.lost
        self.assertEqual(peer.received.count(b"HTTP/1.1 "), 1)
        self.assertEqual(self.outcomes, [])

    @inlineCallbacks
    def test_promptRequestOnOldConnection(self):
        """
        A request whose headers come at once succeeds on a kept-alive
        connection older than header_timeout.
        """
        peer = yield self.connect()
        yield self.send(peer, self.get("mx-1"))
        yield peer.waitFor(b"OK\n")
        self.clock.advance(self.HEADER * 1.5)
        yield self.send(peer, self.get("mx-2"))
        answer = yield peer.waitFor(b"OK\n", 2)
        self.assertEqual(answer.count(b"HTTP/1.1 200 OK\r\n"), 2, answer)
        self.assertEqual(files(self.server.spool.dir(NEW)), ["mx-1", "mx-2"])
        self.assertEqual(self.outcomes, [])

    @inlineCallbacks
    def test_nextRequestFromItsFirstByte(self):
        """
        On a kept-alive connection the deadline of the next request starts
        with its first byte, not when the connection was made nor when the
        last request ended.
        """
        peer = yield self.connect()
        yield self.send(peer, self.get("mx-1"))
        yield peer.waitFor(b"OK\n")
        self.clock.advance(self.HEADER * 1.5)
        yield self.send(peer, b"GET /?id=mx-2 HTTP/1.1\r\nHo")
        self.clock.advance(self.HEADER - 1)
        self.assertEqual(self.outcomes, [])
        self.clock.advance(1)
        yield peer.lost
        self.assertEqual(peer.received.count(b"HTTP/1.1 408 "), 1, peer.received)
        self.assertEqual([o.status for o in self.outcomes], [408])

    @inlineCallbacks
    def test_slowBodyLeftToRequestTimeout(self):
        """
        Once the headers are in, a body may take longer than header_timeout
        (request_timeout bounds it).
        """
        body = urlencode({**SMS, "id": "mx-post"}).encode()
        peer = yield self.connect()
        yield self.send(
            peer,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:10]),
        )
        self.clock.advance(self.HEADER * 1.5)
        yield self.send(peer, body[10:])
        answer = yield peer.waitFor(b"OK\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
        self.assertEqual(self.outcomes, [])


class MinimumRateTests(_DrivenClock, TestCase):
    """
    After body_grace seconds, a body must keep arriving at min_body_rate
    bytes a second, over each body_grace seconds; the site's clock is driven
    by the test, the connection is real.
    """

    GRACE = 10.0
    RATE = 1024

    def setUp(self):
        self.start(min_body_rate=float(self.RATE), body_grace=self.GRACE)

    def advance(self, seconds: float) -> None:
        """
        Move the site's clock a second at a time, as a real one moves.
        """
        for _ in range(int(seconds)):
            self.clock.advance(1)

    def post(self, body: bytes, sent: int) -> bytes:
        return (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:sent])
        )

    @inlineCallbacks
    def test_tricklingBodyCutOff(self):
        """
        A body that trickles in, a few bytes at a time, is answered 408 and
        cut off at the end of the first window after the grace that brought
        less than min_body_rate a second, not after request_timeout.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        body = urlencode({**SMS, "message": "x" * 5000}).encode()
        peer = yield self.connect()
        yield self.send(peer, self.post(body, 10))
        self.advance(self.GRACE)
        for offset in range(10, 20):
            yield self.send(peer, body[offset : offset + 1])
            self.advance(1)
        self.assertEqual([o.status for o in self.outcomes], [408])
        yield peer.lost
        self.assertTrue(peer.received.startswith(b"HTTP/1.1 408 "), peer.received)
        self.assertIn(b"body arriving slower than 1024 bytes a second", peer.received)
        [outcome] = self.outcomes
        self.assertEqual((outcome.mode, outcome.bytes, outcome.ack_seconds), ("post", 20, 20.0))
        [event] = [e for e in events if e["log_namespace"] == "mxrecv.web.request"]
        self.assertEqual(event["status"], 408)

    @inlineCallbacks
    def test_steadyBodyServed(self):
        """
        A body that keeps to the rate, however long it takes in all (here
        four windows), is served; a slow start within the grace is free.
        """
        body = urlencode({**SMS, "message": "x" * 60000}).encode()
        peer = yield self.connect()
        yield self.send(peer, self.post(body, 1))
        self.advance(self.GRACE - 1)
        step = int(self.RATE * self.GRACE) + 1
        offset = 1
        for _ in range(4):
            yield self.send(peer, body[offset : offset + step])
            offset += step
            self.advance(self.GRACE)
        self.assertEqual(self.outcomes, [])
        yield self.send(peer, body[offset:])
        answer = yield peer.waitFor(b"OK\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)

    @inlineCallbacks
    def test_stallAfterBurst(self):
        """
        A body that comes fast and then stops is cut off after a window
        without the rate, not after request_timeout.
        """
        body = urlencode({**SMS, "message": "x" * 60000}).encode()
        peer = yield self.connect()
        yield self.send(peer, self.post(body, 50000))
        self.advance(self.GRACE * 2 - 1)
        self.assertEqual(self.outcomes, [])
        self.advance(1)
        self.assertEqual([o.status for o in self.outcomes], [408])
        yield peer.lost


class LocalAddressTests(TestCase):
    def test_askedOnce(self):
        """
        The connection's local address, which every request records, is
        asked of the transport once per connection, not once per request.
        """
        site = buildSite(serverConfig(), openSpool(self), Clock(), writers=fileWriters(self))
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        transport = StringTransport(peerAddress=peer)
        asked = []
        getHost = transport.getHost
        transport.getHost = lambda: asked.append(1) or getHost()
        channel = site.buildProtocol(peer)
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        self.assertEqual(transport.value().count(b"HTTP/1.1 404 "), 2)
        self.assertEqual(len(asked), 1)
        channel.connectionLost(Failure(ConnectionDone()))


class HeaderDeadlineAbortTests(TestCase):
    """
    The end of a 408 sent for the header deadline, on an in-memory connection
    whose close the test controls.
    """

    def test_abortedIfNotClosed(self):
        """
        After the 408, what the client sends is ignored, and a connection
        that has not closed within twisted.web's abortTimeout (a TLS client
        that never answers our close_notify) is aborted.
        """
        clock = Clock()
        config = serverConfig(header_timeout=10.0)
        site = buildSite(config, openSpool(self), clock, writers=fileWriters(self))
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        transport = StringTransport(peerAddress=peer)
        transport.abortConnection = lambda: setattr(transport, "aborted", True)
        channel = site.buildProtocol(peer)
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /?id=1 HTTP/1.1\r\n")
        clock.advance(10)
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 408 "), answer)
        self.assertTrue(transport.disconnecting)
        channel.dataReceived(b"Host: x\r\n\r\n")
        self.assertEqual(transport.value(), answer)
        clock.advance(channel.abortTimeout - 1)
        self.assertFalse(getattr(transport, "aborted", False))
        clock.advance(1)
        self.assertTrue(transport.aborted)
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])


class ServerHeaderTests(TestCase):
    """
    Every answer names the server "mxrecv", without a version (twisted.web
    would send its name and version).
    """

    @inlineCallbacks
    def test_answers(self):
        server = startServer(self, max_body=1000)
        treq = httpClient(self)
        for response in [
            (yield treq.get(server.url, params=SMS)),
            (yield treq.get(server.url + "nothing")),
            (yield treq.get(server.url, params={**SMS, "date": "x"})),
            (yield treq.put(server.url, data=b"")),
        ]:
            yield response.content()
            self.assertEqual(response.headers.getRawHeaders("Server"), ["mxrecv"])

    @inlineCallbacks
    def test_refusals(self):
        """
        Refusals written before the resource has the request say the same.
        """
        server = startServer(self, max_body=1000)
        answer = yield rawExchange(
            server.port,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 1001\r\n\r\n",
        )
        head = answer.partition(b"\r\n\r\n")[0]
        self.assertTrue(head.startswith(b"HTTP/1.1 413 "), answer)
        self.assertIn(b"\r\nServer: mxrecv\r\n", head)


class DateHeaderTests(TestCase):
    @inlineCallbacks
    def test_bySiteClock(self):
        """
        The Date header is the site's clock's time, formatted once a second:
        the same for answers within a second, the next one after it.
        """
        clock = Clock()
        clock.advance(1_800_000_000.25)
        server = startServer(self, siteReactor=clock)
        treq = httpClient(self)
        dates = []
        for step in (0.0, 0.5, 0.5):
            clock.advance(step)
            response = yield treq.get(server.url, params={**SMS, "id": f"d{len(dates)}"})
            yield response.content()
            dates.append(response.headers.getRawHeaders("Date"))
        self.assertEqual(
            dates,
            [["Fri, 15 Jan 2027 08:00:00 GMT"]] * 2 + [["Fri, 15 Jan 2027 08:00:01 GMT"]],
        )


class FramingErrorTests(TestCase):
    """
    Requests that twisted.web's own parser refuses are answered 400 with
    the reason, and logged and counted like the other refusals.
    """

    FORM = b"Content-Type: application/x-www-form-urlencoded\r\n"
    CASES = [
        (b"GARBAGE\r\n\r\n", "other", "a bad request line"),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "post",
            "a bad header",
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", "get", "a bad header"),
        (b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", "get", "a bad header"),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\n" + FORM + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
            "post",
            "a bad chunk",
        ),
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 501 + b"\r\n", "get", "more than 500 headers"),
        (
            b"GET / HTTP/1.1\r\n" + (b"X-A: " + b"b" * 6000 + b"\r\n") * 3 + b"\r\n",
            "get",
            "headers longer than 16384 bytes",
        ),
        (b"GET /" + b"a" * 17000, "other", "line longer than 16384 bytes"),
    ]

    @inlineCallbacks
    def test_answeredCountedLogged(self):
        server = startServer(self)
        outcomes = []
        server.site.observe = outcomes.append
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        for data, mode, reason in self.CASES:
            del outcomes[:]
            answer = yield rawExchange(server.port, data)
            self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (data[:40], answer))
            self.assertIn(reason.encode(), answer)
            [outcome] = outcomes
            self.assertEqual(
                (outcome.status, outcome.mode, outcome.type, outcome.client),
                (400, mode, None, "127.0.0.1"),
            )
            self.assertIn(reason, outcome.reason)
        logged = [e for e in events if e["log_namespace"] == "mxrecv.web.request"]
        self.assertEqual([e["status"] for e in logged], [400] * len(self.CASES))
        self.assertEqual(files(server.spool.dir("tmp")), [])
