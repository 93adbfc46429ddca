"""
Each metric moves when it should, read over HTTP from the admin listener of
a running mxrecv.
"""

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from mxrecv.ops.metrics import RETRIEVAL_OUTCOMES, Metrics

from .running import MMS, SMS, client, rawConnection, run, runningConfig, scrape, value


class CallbackMetricsTests(TestCase):
    def setUp(self):
        self.running = run(self, runningConfig(self))
        self.http = client()

    @inlineCallbacks
    def test_stored(self):
        """
        A stored SMS counts as an sms/get/200 callback, with its ack time, and
        as a message waiting in new/.
        """
        before = yield scrape(self.running)
        self.assertEqual(
            value(before, "mxrecv_callbacks_total", type="sms", mode="get", status="200"), 0
        )
        self.assertEqual(value(before, "mxrecv_spool_messages", dir="new"), 0)
        response = yield self.http.get(self.running.url, params=SMS)
        self.assertEqual(response.code, 200)
        after = yield scrape(self.running)
        self.assertEqual(
            value(after, "mxrecv_callbacks_total", type="sms", mode="get", status="200"), 1
        )
        self.assertEqual(value(after, "mxrecv_ack_seconds_count"), 1)
        self.assertGreater(value(after, "mxrecv_ack_seconds_sum"), 0)
        self.assertEqual(value(after, "mxrecv_spool_messages", dir="new"), 1)
        self.assertEqual(value(after, "mxrecv_duplicates_total"), 0)

    @inlineCallbacks
    def test_duplicate(self):
        yield self.http.get(self.running.url, params=SMS)
        response = yield self.http.get(self.running.url, params=SMS)
        self.assertEqual(response.code, 200)
        samples = yield scrape(self.running)
        self.assertEqual(value(samples, "mxrecv_duplicates_total"), 1)
        self.assertEqual(
            value(samples, "mxrecv_callbacks_total", type="sms", mode="get", status="200"), 2
        )
        self.assertEqual(value(samples, "mxrecv_spool_messages", dir="new"), 1)

    @inlineCallbacks
    def test_postBytes(self):
        """
        A form POST counts its body bytes and its mode.
        """
        body = "&".join(f"{k}={v}" for k, v in SMS.items()).encode()
        response = yield self.http.post(
            self.running.url,
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        self.assertEqual(response.code, 200)
        samples = yield scrape(self.running)
        self.assertEqual(value(samples, "mxrecv_received_bytes_total"), len(body))
        self.assertEqual(
            value(samples, "mxrecv_callbacks_total", type="sms", mode="post", status="200"), 1
        )

    @inlineCallbacks
    def test_badParameter(self):
        response = yield self.http.get(self.running.url, params={**SMS, "id": ""})
        self.assertEqual(response.code, 400)
        samples = yield scrape(self.running)
        self.assertEqual(
            value(samples, "mxrecv_callbacks_total", type="unknown", mode="get", status="400"), 1
        )
        self.assertEqual(value(samples, "mxrecv_ack_seconds_count"), 0)

    @inlineCallbacks
    def test_refusedBeforeBody(self):
        """
        A request refused before its body is read (413) is counted too.
        """
        limit = self.running.service.site.maxBody
        connection = yield rawConnection(self.running.port)
        connection.transport.write(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\n" % (limit + 1)
        )
        answer = yield connection.headers
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "))
        connection.transport.loseConnection()
        yield connection.lost
        samples = yield scrape(self.running)
        self.assertEqual(
            value(samples, "mxrecv_callbacks_total", type="unknown", mode="post", status="413"), 1
        )

    @inlineCallbacks
    def test_framingError(self):
        """
        A request twisted.web's parser refuses (here, Content-Length and
        Transfer-Encoding both) is counted as a 400.
        """
        connection = yield rawConnection(self.running.port)
        connection.transport.write(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        yield connection.lost
        self.assertTrue(connection.received.startswith(b"HTTP/1.1 400 "), connection.received)
        samples = yield scrape(self.running)
        self.assertEqual(
            value(samples, "mxrecv_callbacks_total", type="unknown", mode="post", status="400"), 1
        )

    @inlineCallbacks
    def test_pendingDownload(self):
        """
        An MMS notification waits in pending/ for its download.
        """
        response = yield self.http.get(self.running.url, params=MMS)
        self.assertEqual(response.code, 200)
        samples = yield scrape(self.running)
        self.assertEqual(
            value(samples, "mxrecv_callbacks_total", type="mms", mode="get", status="200"), 1
        )
        self.assertEqual(value(samples, "mxrecv_spool_messages", dir="pending"), 1)
        self.assertEqual(value(samples, "mxrecv_pending_downloads"), 1)
        self.assertEqual(value(samples, "mxrecv_spool_messages", dir="new"), 0)

    @inlineCallbacks
    def test_retrievalAPI(self):
        """
        The counters the RetrieveMMS code moves: attempts by outcome (unknown
        outcomes as "other") and expired messages.
        """
        metrics = self.running.service.metrics
        metrics.retrievalAttempt("ok")
        metrics.retrievalAttempt("timeout")
        metrics.retrievalAttempt("timeout")
        metrics.retrievalAttempt("something new")
        metrics.expired()
        samples = yield scrape(self.running)
        self.assertEqual(value(samples, "mxrecv_retrieval_attempts_total", outcome="ok"), 1)
        self.assertEqual(value(samples, "mxrecv_retrieval_attempts_total", outcome="timeout"), 2)
        self.assertEqual(value(samples, "mxrecv_retrieval_attempts_total", outcome="other"), 1)
        self.assertEqual(value(samples, "mxrecv_expired_total"), 1)
        self.assertIn("other", RETRIEVAL_OUTCOMES)


class RegistryTests(TestCase):
    def test_separate(self):
        """
        Each L{Metrics} has its own registry, so two services (or tests) do
        not share counts.
        """
        one, two = Metrics(), Metrics()
        one.expired()
        self.assertEqual(one.registry.get_sample_value("mxrecv_expired_total"), 1)
        self.assertEqual(two.registry.get_sample_value("mxrecv_expired_total"), 0)
