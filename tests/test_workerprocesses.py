"""
A server of several worker processes (C{[server] workers = 2}), run as a
user runs it (C{twistd mxrecv --config FILE}), on real ports of 127.0.0.1,
killed with -9, signalled, and never waited for by time: every wait is on a
line of its log (or an answer), with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from twisted.internet import reactor
from twisted.internet.defer import (
    Deferred,
    DeferredSemaphore,
    gatherResults,
    inlineCallbacks,
)
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from mxrecv.message.dates import mxDate
from mxrecv.spool.store import claimSpool
from mxrecv.testing.retrievemms import Hang, RetrieveMMS

from .certificates import CA, commonName, connect, issue, trusting, writeFiles
from .running import MMS, SMS, client
from .twistd import Twistd, isWorkerOf, runTwistd

WORKERS = 2


class KeepAlive(Protocol):
    """
    One HTTP/1.1 connection kept alive: requests written by hand, answers
    read in order (each with a Content-Length, as twisted.web sends them).
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._waiting: deque[Deferred[tuple[int, bytes]]] = deque()

    def get(self, params: dict[str, str]) -> Deferred[tuple[int, bytes]]:
        return self.send(
            f"GET /?{urlencode(params)} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        )

    def send(self, request: bytes) -> Deferred[tuple[int, bytes]]:
        d: Deferred[tuple[int, bytes]] = Deferred()
        self._waiting.append(d)
        self.transport.write(request)
        return d

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\r\n\r\n" in self._buffer:
            head, rest = self._buffer.split(b"\r\n\r\n", 1)
            length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))
            if len(rest) < length:
                return
            self._buffer = rest[length:]
            status = int(head.split(b" ", 2)[1])
            self._waiting.popleft().callback((status, rest[:length]))

    def connectionLost(self, reason: Any) -> None:
        while self._waiting:
            self._waiting.popleft().errback(reason)


def sms(id: str) -> dict[str, str]:
    return {**SMS, "id": id}


class WorkersServer:
    """
    C{twistd mxrecv} with C{[server] workers = 2}, its spool and its ports.
    """

    def __init__(self, case: TestCase, extra: str = "", listen: str | None = None) -> None:
        self.base = Path(case.mktemp()).absolute()
        self.spool = self.base / "spool"
        listen = listen or "tcp:0:interface=127.0.0.1"
        self.config = self.base / "mxrecv.toml"
        self.base.mkdir(parents=True)
        self.config.write_text(
            f'[server]\nlisten = ["{listen}"]\nallow = ["127.0.0.0/8"]\n'
            f"workers = {WORKERS}\nshutdown_timeout = 20.0\n"
            f'[spool]\ndir = "{self.spool}"\n'
            '[admin]\nlisten = ["tcp:0:interface=127.0.0.1"]\n' + extra
        )
        self.twistd: Twistd = runTwistd(case, "--config", str(self.config), spool=self.spool)
        # Not waited on: these tests wait on the log's lines.
        self.twistd.listening.addErrback(lambda _: None)
        self.port = 0
        self.admin = 0

    @inlineCallbacks
    def started(self):
        """
        Wait until every worker listens and one leads.
        """
        twistd = self.twistd
        match = yield twistd.waitFor(r"listening for callbacks on [\d.]+:(\d+)")
        self.port = int(match.group(1))
        match = yield twistd.waitFor(r"\[-\] AdminSite starting on (\d+)")
        self.admin = int(match.group(1))
        for number in range(WORKERS):
            yield self.waitReady(number)
        yield twistd.waitFor(r"Worker \d+ \(pid \d+\) leads")

    def waitReady(self, number: int, count: int = 1) -> Deferred[Any]:
        """
        Wait for the C{count}th time worker C{number} is ready (running,
        signal handlers and all, and listening).
        """
        return self.twistd.waitFor(rf"Worker {number} \(pid \d+\) ready", count)

    def pid(self, number: int) -> int:
        """
        The pid of worker C{number} now.
        """
        started = self.twistd.matches(rf"Worker {number} started \(pid (\d+)\)")
        return int(started[-1].group(1))

    def leader(self) -> tuple[int, int]:
        """
        The worker that leads now, and its pid.
        """
        match = self.twistd.matches(r"Worker (\d+) \(pid (\d+)\) leads")[-1]
        return int(match.group(1)), int(match.group(2))

    def whichWorker(self, id: str) -> Deferred[int]:
        """
        The worker that logged the callback for C{id}.
        """
        d = self.twistd.waitFor(rf"worker=(\d+)\] [^\n]*\b{re.escape(id)}\b")
        return d.addCallback(lambda match: int(match.group(1)))

    def messages(self, which: str = "new") -> list[str]:
        return sorted(p.name for p in (self.spool / which).iterdir())

    @inlineCallbacks
    def health(self):
        response = yield client().get(f"http://127.0.0.1:{self.admin}/health")
        return json.loads((yield response.content()))

    @inlineCallbacks
    def metrics(self):
        response = yield client().get(f"http://127.0.0.1:{self.admin}/metrics")
        return (yield response.text())

    @inlineCallbacks
    def metricsUntil(self, expected: dict[str, float], deadline: float = 30.0):
        """
        The metrics C{expected} names, scraped until they have the expected
        values (a worker counts a callback as it answers it: the count can
        trail the answer), or until C{deadline} seconds have passed.
        """
        end = time.monotonic() + deadline
        while True:
            text = yield self.metrics()
            counted = {name: metric(text, name) for name in expected}
            if counted == expected or time.monotonic() > end:
                return counted

    def keepAlive(self) -> Deferred[KeepAlive]:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        return connectProtocol(endpoint, KeepAlive())

    @inlineCallbacks
    def connectionsByWorker(self, case: TestCase):
        """
        A kept-alive connection to each worker: connections are made until
        each worker has accepted one (which worker did is told by the log
        line of a probe callback sent on it), at most 40.

        @return: C{{worker: connection}}, and how many probes were stored.
        """
        byWorker: dict[int, KeepAlive] = {}
        for i in range(40):
            connection = yield self.keepAlive()
            case.addCleanup(connection.transport.loseConnection)
            status, _ = yield connection.get(sms(f"probe-{i}"))
            case.assertEqual(status, 200)
            byWorker.setdefault((yield self.whichWorker(f"probe-{i}")), connection)
            if len(byWorker) == WORKERS:
                case.assertEqual(sorted(byWorker), list(range(WORKERS)))
                return byWorker, i + 1
        case.fail(f"40 connections, all to workers {sorted(byWorker)}")

    @inlineCallbacks
    def refusedWithin(self, deadline: float):
        """
        Whether connections to the callback port are refused within
        C{deadline} seconds (a worker logs that its port closed just before
        it closes it).
        """
        end = time.monotonic() + deadline
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        while time.monotonic() < end:
            try:
                accepted = yield connectProtocol(endpoint, Protocol())
            except ConnectionRefusedError:
                return True
            accepted.transport.abortConnection()
        return False

    @inlineCallbacks
    def stop(self):
        """
        SIGTERM, and the end of the parent.
        """
        self.twistd.signal("TERM")
        ended = yield self.twistd.ended
        return ended


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class SameIdTests(TestCase):
    @inlineCallbacks
    def test_sameIdToTwoWorkersStoredOnce(self):
        """
        The same id sent to two workers at the same moment (each request
        written in the same turn of the client, on a kept-alive connection
        that each worker accepted) is stored once; both are answered 200,
        one of them as a duplicate.  The parent's metrics are the sums over
        the workers; every message, whichever worker stored it, reaches the
        leader's delivery queue (whose command always fails here).
        """
        server = WorkersServer(self, '[deliver]\ncommand = ["/bin/false"]\n')
        yield server.started()
        byWorker, probes = yield server.connectionsByWorker(self)
        first, second = byWorker[0], byWorker[1]
        ids = [f"same-{j}" for j in range(20)]
        for id in ids:
            answers = yield gatherResults([first.get(sms(id)), second.get(sms(id))])
            self.assertEqual([status for status, _ in answers], [200, 200], id)
        for id in ids:
            # Each of the two workers logged its answer.
            for number in range(WORKERS):
                yield server.twistd.waitFor(rf"worker={number}\] .*\b{id}\b")
        self.assertEqual(len(server.messages()), probes + len(ids))
        for id in ids:
            self.assertIn(id, server.messages())
        self.assertEqual(server.messages("tmp"), [])
        self.assertEqual(server.messages("failed"), [])
        # The sums over the workers, from the parent's admin listener.
        expected = {
            "mxrecv_duplicates_total": len(ids),
            "mxrecv_callbacks_total": probes + 2 * len(ids),
            "mxrecv_delivery_backlog": probes + len(ids),
        }
        counted = yield server.metricsUntil(expected)
        self.assertEqual(counted, expected)
        ended = yield server.stop()
        self.assertEqual(ended.signal, signal.SIGTERM, server.twistd.text)


class Load:
    """
    MX Telecom's side: callbacks with ids of their own, on a new connection
    each (so that they spread over the workers), at most C{concurrency} at
    once, each retried (as MX Telecom retries) until it is answered 200;
    bounded in count, tries and time.
    """

    def __init__(self, server: WorkersServer, concurrency: int = 8, tries: int = 50) -> None:
        self._server = server
        self._limit = DeferredSemaphore(concurrency)
        self._tries = tries
        self.acked: list[tuple[str, float]] = []
        self.failures = 0
        self._client = client()

    @inlineCallbacks
    def send(self, id: str):
        for _ in range(self._tries):
            try:
                response = yield self._client.get(
                    f"http://127.0.0.1:{self._server.port}/", params=sms(id), timeout=30
                )
                yield response.content()
            except Exception:
                self.failures += 1
                continue
            if response.code == 200:
                self.acked.append((id, time.monotonic()))
                return
            self.failures += 1
        raise AssertionError(f"{id} not acknowledged in {self._tries} tries")

    def run(self, ids: list[str]) -> Deferred[Any]:
        return gatherResults([self._limit.run(self.send, id) for id in ids], consumeErrors=True)


class KillTests(TestCase):
    @inlineCallbacks
    def test_killedUnderLoad(self):
        """
        kill -9 of a worker under load loses nothing acknowledged: every id
        answered 200 is in new/; the other worker keeps answering, and the
        parent starts the dead one again.
        """
        server = WorkersServer(self)
        yield server.started()
        victim, survivor = 1, 0
        pid = server.pid(victim)
        load = Load(server)
        first = load.run([f"before-{i}" for i in range(150)])
        yield server.twistd.waitFor(r"get callback before-\d+", 60)
        os.kill(pid, signal.SIGKILL)
        yield server.twistd.waitFor(rf"Worker {victim} \(pid {pid}\) died")
        # Sent once the parent knows its worker died (so never to it).
        after = [f"after-{i}" for i in range(300)]
        second = load.run(after)
        yield server.waitReady(victim, 2)
        yield first
        yield second
        acked = [id for id, _ in load.acked]
        self.assertEqual(len(acked), 450)
        self.assertEqual(sorted(set(acked) - set(server.messages())), [])
        answeredBy = yield gatherResults([server.whichWorker(id) for id in after])
        self.assertIn(survivor, answeredBy)
        health = yield server.health()
        workers = health["checks"]["workers"]["workers"]
        self.assertEqual([w["up"] for w in workers], [True, True])
        self.assertEqual(workers[victim]["restarts"], 1)
        self.assertNotEqual(workers[victim]["pid"], pid)
        ended = yield server.stop()
        self.assertEqual(ended.signal, signal.SIGTERM, server.twistd.text)

    @inlineCallbacks
    def test_parentKilled(self):
        """
        kill -9 of the parent: its workers notice that it is gone and stop
        (the spool's lock with them), rather than run on unsupervised.
        """
        server = WorkersServer(self)
        yield server.started()
        workers = [server.pid(number) for number in range(WORKERS)]
        server.twistd.signal("KILL")
        yield server.twistd.ended
        end = time.monotonic() + 30
        while any(isWorkerOf(pid, server.spool) for pid in workers):
            self.assertLess(time.monotonic(), end, "workers still running 30 s after the parent died")
            yield deferLater(reactor, 0.05, lambda: None)
        os.close(claimSpool(server.spool))

    @inlineCallbacks
    def test_leaderKilledDuringRetrieval(self):
        """
        GET-mode MMS accepted by a worker that does not lead are retrieved
        by the leader at once; kill -9 of the leader with their downloads in
        flight: another worker takes over within seconds, and every MMS is
        retrieved and completed into new/ before its expiry.
        """
        stand = RetrieveMMS(reactor, script=[Hang()] * 1000)
        site = Site(stand)
        site.noisy = False
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        server = WorkersServer(
            self,
            f'[retrieve]\nurl = "http://127.0.0.1:{port.getHost().port}/RetrieveMMS"\n'
            'user = "mx"\npassword = "secret"\nbackoff_initial = 1.0\ntimeout = 30.0\n'
            # All ten downloads in flight at once (the default is 8).
            "concurrency = 10\n",
        )
        yield server.started()
        leader, pid = server.leader()
        byWorker, _ = yield server.connectionsByWorker(self)
        expiry = time.time() + 90
        ids = [f"mms-{i}" for i in range(10)]
        for id in ids:
            # Accepted by the worker that does not lead, which passes them
            # on at once (the sweep of pending/ is minutes away).
            status, _ = yield byWorker[1 - leader].get(
                {**MMS, "id": id, "expiry": mxDate(expiry)}
            )
            self.assertEqual(status, 200)
        # Every download hangs in the leader, in flight when it dies.
        yield stand.whenRequested(len(ids)).addTimeout(60, reactor)
        os.kill(pid, signal.SIGKILL)
        del stand.script[:]
        match = yield server.twistd.waitFor(r"Worker (\d+) \(pid (\d+)\) leads", 2)
        self.assertNotEqual(int(match.group(2)), pid)
        for i in range(len(ids)):
            yield server.twistd.waitFor(
                r"MMS mms-\d+ retrieved .* completed in new/", i + 1, timeout=expiry - time.time()
            )
        self.assertLess(time.time(), expiry)
        self.assertEqual([m for m in server.messages() if m.startswith("mms-")], ids)
        self.assertEqual(server.messages("pending"), [])
        self.assertEqual(server.messages("failed"), [])
        for id in ids:
            self.assertTrue((server.spool / "new" / id / "mms.zip").is_file())
        completed = server.twistd.matches(r"worker=(\d+)\] MMS mms-\d+ retrieved")
        self.assertEqual({int(m.group(1)) for m in completed}, {int(match.group(1))})
        ended = yield server.stop()
        self.assertEqual(ended.signal, signal.SIGTERM, server.twistd.text)


class SignalTests(TestCase):
    @inlineCallbacks
    def test_sigtermGraceful(self):
        """
        SIGTERM to the parent stops every worker gracefully: they stop
        listening (new connections are refused), a callback in flight is
        still answered 200 and stored, each worker ends of the SIGTERM, and
        the spool is free for the next server.
        """
        server = WorkersServer(self)
        yield server.started()
        body = urlencode(sms("in-flight")).encode()
        connection = yield server.keepAlive()
        answer = connection.send(
            b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Expect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        # Its headers are in a worker: it answered 100 Continue.
        continued: Deferred[None] = Deferred()
        original = connection.dataReceived

        def sniff(data: bytes) -> None:
            if data.startswith(b"HTTP/1.1 100") and not continued.called:
                data = data.split(b"\r\n\r\n", 1)[1]
                continued.callback(None)
            original(data)

        connection.dataReceived = sniff  # type: ignore[method-assign]
        yield continued
        server.twistd.signal("TERM")
        for number in range(WORKERS):
            yield server.twistd.waitFor(rf"worker={number}\] \(TCP Port \d+ Closed\)")
        refused = yield server.refusedWithin(10.0)
        self.assertTrue(refused, "new connections still accepted after SIGTERM")
        connection.transport.write(body)
        status, _ = yield answer
        self.assertEqual(status, 200)
        ended = yield server.twistd.ended
        self.assertEqual(ended.signal, signal.SIGTERM, server.twistd.text)
        self.assertEqual(server.messages(), ["in-flight"])
        for number in range(WORKERS):
            self.assertTrue(
                server.twistd.matches(rf"Worker {number} \(pid \d+\) stopped: signal 15")
            )
        self.assertFalse(server.twistd.matches("killing it"))
        for pid in server.twistd.pids:
            self.assertFalse(isWorkerOf(pid, server.spool))
        os.close(claimSpool(server.spool))

    @inlineCallbacks
    def test_sighupReloadsEveryWorker(self):
        """
        SIGHUP to the parent makes every worker reload its certificate: new
        connections to each worker get the renewed one.
        """
        base = Path(self.mktemp()).absolute()
        files = writeFiles(base / "tls", *issue("first"))
        server = WorkersServer(
            self,
            listen=f"ssl:0:privateKey={files.privateKey}:certKey={files.certKey}"
            ":interface=127.0.0.1",
        )
        yield server.started()
        writeFiles(base / "tls", *issue("renewed"))
        server.twistd.signal("HUP")
        for number in range(WORKERS):
            yield server.twistd.waitFor(rf"worker={number}\] Certificate reloaded from .*renewed")
        seen: set[int] = set()
        for i in range(40):
            tls = yield connect(server.port, trusting(CA))
            certificate = yield tls.handshake
            self.assertEqual(commonName(certificate), "renewed")
            tls.transport.write(
                f"GET /?{urlencode(sms(f'tls-{i}'))} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
            )
            yield tls.waitFor(b"\r\n\r\nOK")
            tls.transport.loseConnection()
            seen.add((yield server.whichWorker(f"tls-{i}")))
            if len(seen) == WORKERS:
                break
        self.assertEqual(seen, set(range(WORKERS)))
        # The parent reloaded its copy too, which /health checks.
        self.assertTrue(server.twistd.matches(r"\[mxrecv.tls.certificate#info\] Certificate reloaded"))
        ended = yield server.stop()
        self.assertEqual(ended.signal, signal.SIGTERM, server.twistd.text)




class DeliveryTests(TestCase):
    @inlineCallbacks
    def test_deadLetterThroughTheParent(self):
        """
        With several workers, the leader delivers what every worker accepts;
        a dead letter is named in the parent's /health and counted in its
        /metrics, and POST /deliver/NAME on the parent's admin listener
        (with the token) has the leader deliver it again.
        """
        from mxrecv.testing.retrievemms import QuietSite

        from .application import Answer, Application

        app = Application(reactor, {"refused": [Answer(400, b"no")]})
        port = reactor.listenTCP(0, QuietSite(app), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        token = "k" * 32
        server = WorkersServer(
            self,
            extra=(
                f'token = "{token}"\n'
                f'[deliver]\nurl = "http://127.0.0.1:{port.getHost().port}/"\n'
                "max_attempts = 1\nbackoff_initial = 0.05\nbackoff_max = 0.05\n"
            ),
        )
        yield server.started()
        for id in ("refused", "taken"):
            connection = yield server.keepAlive()
            self.addCleanup(connection.transport.loseConnection)
            status, _ = yield connection.get(sms(id))
            self.assertEqual(status, 200)
        yield app.whenReceived(2)
        yield server.twistd.waitFor(r"new/refused is undeliverable to the url")
        self.assertEqual(sorted(app.accepted()), ["taken"])
        record = server.spool / "state" / "undeliverable" / "url" / "refused"
        health = yield server.health()
        self.assertTrue(health["ok"])
        self.assertEqual(
            health["checks"]["delivery.url"],
            {"ok": False, "critical": False, "detail": "1 undeliverable: refused"},
        )
        expected = {"mxrecv_delivery_undeliverable": 1.0, "mxrecv_deliveries_total": 2.0}
        counted = yield server.metricsUntil(expected)
        self.assertEqual(counted, expected)
        self.assertTrue(record.exists())

        response = yield client().post(
            f"http://127.0.0.1:{server.admin}/deliver/refused",
            headers={b"Authorization": [f"Bearer {token}".encode()]},
        )
        self.assertEqual(response.code, 202)
        self.assertEqual((yield response.json())["targets"], ["url"])
        yield app.whenReceived(3)
        self.assertEqual(sorted(app.accepted()), ["refused", "taken"])
        self.assertFalse(record.exists())
        ended = yield server.stop()
        self.assertEqual(ended.signal, signal.SIGTERM, server.twistd.text)
