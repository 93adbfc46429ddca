"""
A graceful stop (what twistd does on SIGTERM: stopService) while a callback
is being uploaded over a real port.
"""

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.iweb import IBodyProducer, INonQueuedRequestFactory
from zope.interface import directlyProvides, implementer

from mxrecv.web.drain import DrainService, InFlight

from .running import SMS, client, rawConnection, run, runningConfig

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@implementer(IBodyProducer)
class Held:
    """
    A request body sent in two pieces: the second once C{release} fires.
    """

    def __init__(self, body: bytes) -> None:
        self.length = len(body)
        self._first, self._rest = body[: len(body) // 2], body[len(body) // 2 :]
        self.release: Deferred[None] = Deferred()

    def startProducing(self, consumer):
        consumer.write(self._first)
        return self.release.addCallback(lambda _: consumer.write(self._rest))

    def stopProducing(self):
        pass

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass


def whenRequestBegins(site) -> Deferred[None]:
    """
    Fires once C{site} has the first request line of a connection.
    """
    began: Deferred[None] = Deferred()
    factory = site.requestFactory

    def request(channel):
        r = factory(channel)
        if not began.called:
            # Once the channel has the request: it adds it after this returns.
            reactor.callLater(0, began.callback, None)
        return r

    directlyProvides(request, INonQueuedRequestFactory)
    site.requestFactory = request
    return began


def form(params: dict) -> bytes:
    return "&".join(f"{k}={v}" for k, v in params.items()).encode()


class StopDuringUploadTests(TestCase):
    @inlineCallbacks
    def test_finishesInFlight(self):
        """
        Stopped during an upload, mxrecv stops accepting connections, answers
        the upload and closes its connection (HTTP/1.1 would keep it open),
        commits the message, and only then has stopped, its spool closed.
        """
        running = run(self, runningConfig(self))
        began = whenRequestBegins(running.service.site)
        body = form(SMS)
        connection = yield rawConnection(running.port)
        connection.transport.write(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\n%s" % (len(body), body[:10])
        )
        yield began

        stopping = running.stop()
        # Still waiting for the request in flight.
        self.assertNoResult(stopping)
        self.assertEqual(len(running.service.inFlight), 1)
        connection.transport.write(body[10:])
        answer = yield connection.headers
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertIn(b"\r\nConnection: close\r\n", answer)
        yield connection.lost
        yield self.assertFailure(rawConnection(running.port), ConnectionRefusedError)

        yield stopping
        self.assertFalse(running.service.running)
        self.assertEqual([p.name for p in (running.spool / "new").iterdir()], ["mx-1"])
        self.assertFalse(running.service.site.numPorts)

    @inlineCallbacks
    def test_bounded(self):
        """
        An upload that does not finish within shutdown_timeout is dropped
        (its client gets no answer, so MX Telecom retries), nothing of it is
        stored, and the stop completes.
        """
        running = run(self, runningConfig(self, server_shutdown_timeout=0.2))
        began = whenRequestBegins(running.service.site)
        body = Held(form(SMS))
        answered = client().post(running.url, data=body, headers=FORM)
        yield began
        yield running.stop()
        yield self.assertFailure(answered, Exception)
        self.assertEqual(list((running.spool / "new").iterdir()), [])

    @inlineCallbacks
    def test_idleKeepAliveClosed(self):
        """
        A kept-alive connection with no request in flight does not hold up
        the stop: mxrecv closes it.
        """
        running = run(self, runningConfig(self))
        connection = yield rawConnection(running.port)
        query = "&".join(f"{k}={v}" for k, v in SMS.items()).replace(" ", "+")
        connection.transport.write(b"GET /?%s HTTP/1.1\r\nHost: x\r\n\r\n" % query.encode())
        answer = yield connection.headers
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertNotIn(b"Connection: close", answer)
        yield running.stop()
        yield connection.lost

    @inlineCallbacks
    def test_restartKeepsNothingTwice(self):
        """
        After a stop, a new mxrecv on the same spool starts (the lock was
        released) and a retry of an id accepted before is a duplicate.
        """
        config = runningConfig(self)
        first = run(self, config)
        response = yield client().get(first.url, params=SMS)
        self.assertEqual(response.code, 200)
        yield first.stop()
        second = run(self, config)
        response = yield client().get(second.url, params=SMS)
        self.assertEqual(response.code, 200)
        self.assertEqual([p.name for p in (config.spool.dir / "new").iterdir()], ["mx-1"])
        self.assertEqual(
            second.service.metrics.registry.get_sample_value("mxrecv_duplicates_total"), 1
        )


class DrainTests(TestCase):
    def test_nothingInFlight(self):
        drain = DrainService(InFlight(), 30.0, Clock())
        drain.startService()
        self.successResultOf(drain.stopService())
