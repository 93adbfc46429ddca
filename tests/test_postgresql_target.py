"""
The postgresql delivery target in a whole mxrecv (L{mxrecv.tap.makeService})
with a real PostgreSQL: callbacks become rows, marked delivered after the
commit; a database down does not stop callbacks, and everything arrives once
when it is back; what PostgreSQL refuses is told apart from what it cannot
take now.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mxrecv.deliver.outcome import PermanentFailure, TemporaryFailure
from mxrecv.deliver.postgresql.schema import SchemaError
from mxrecv.deliver.postgresql.store import MessageUnreadable
from mxrecv.deliver.postgresql.target import outcomeOf

from .postgresql import database
from .running import SMS, client, run, runningConfig, scrape, value


def raised(f, *args) -> Failure:
    try:
        f(*args)
    except BaseException:
        return Failure()
    raise AssertionError(f"{f} raised nothing")


class OutcomeTests(SynchronousTestCase):
    """
    What each failure means, with errors a real server raised.
    """

    def setUp(self) -> None:
        self.db = database(self)
        self.connection = self.db.connect()
        self.addCleanup(self.connection.close)

    def test_refusedForWhatItHolds(self) -> None:
        """
        Data exceptions (class 22) and integrity violations (class 23) are
        this message's: permanent.
        """
        for sql in ("SELECT 1 / 0", "SELECT 'x'::int"):
            outcome = outcomeOf(raised(self.connection.execute, sql))
            self.assertIsInstance(outcome, PermanentFailure)
            self.assertTrue(outcome.why.startswith("PostgreSQL refused it (22"), outcome.why)
        self.connection.execute("CREATE TABLE t (id int PRIMARY KEY)")
        self.connection.execute("INSERT INTO t VALUES (1)")
        outcome = outcomeOf(raised(self.connection.execute, "INSERT INTO t VALUES (1)"))
        self.assertIsInstance(outcome, PermanentFailure)
        self.assertIn("(23505)", outcome.why)

    def test_cannotTakeAnyNow(self) -> None:
        """
        What would fail the next message the same way is temporary: no
        table, no right, a statement cancelled by its timeout, no server.
        """
        import psycopg

        self.connection.execute("SET statement_timeout = 1")
        for sql, code in [
            ("SELECT * FROM nowhere", "42P01"),
            ("SELECT pg_sleep(1)", "57014"),
            ("SELECT pg_read_file('/etc/passwd')", "42501"),
        ]:
            outcome = outcomeOf(raised(self.connection.execute, sql))
            self.assertIsInstance(outcome, TemporaryFailure)
            self.assertIn(f"({code})", outcome.why)
        refused = raised(psycopg.connect, "host=127.0.0.1 port=1 connect_timeout=2")
        outcome = outcomeOf(refused)
        self.assertIsInstance(outcome, TemporaryFailure)
        self.assertIn("PostgreSQL: connection failed", outcome.why)

    def test_ours(self) -> None:
        """
        A message that cannot be read is refused for good; a schema to
        upgrade waits; a bug is logged and waits.
        """
        self.assertEqual(
            outcomeOf(Failure(MessageUnreadable("parts/x is listed but missing"))),
            PermanentFailure("parts/x is listed but missing"),
        )
        self.assertEqual(
            outcomeOf(Failure(SchemaError("run db-init"))), TemporaryFailure("run db-init")
        )
        self.assertEqual(
            outcomeOf(Failure(ZeroDivisionError("oops"))),
            TemporaryFailure("internal error: ZeroDivisionError: oops"),
        )
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class Delivered:
    """
    Follows a running mxrecv's log: the names it reports delivered to a
    target, and its failed attempts; fires when what a test waits for has
    happened.
    """

    def __init__(self, case: TestCase, target: str = "postgresql") -> None:
        self.names: list[str] = []
        self.failures: list[str] = []
        self._target = target
        self._waiting: list[tuple[Callable[[], bool], Deferred[None]]] = []
        globalLogPublisher.addObserver(self)
        case.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict) -> None:
        if event.get("target") != self._target:
            return
        text = event.get("log_format", "")
        if text.startswith("Delivered new/"):
            self.names.append(event["name"])
        elif text.startswith("Delivery of new/"):
            self.failures.append(event["name"])
        for condition, d in list(self._waiting):
            if condition():
                self._waiting.remove((condition, d))
                d.callback(None)

    def _when(self, condition: Callable[[], bool]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append((condition, d))
        self({"target": self._target})
        return d

    def all(self, names) -> Deferred[None]:
        """
        Fires once every one of C{names} has been delivered.
        """
        return self._when(lambda: set(names) <= set(self.names))

    def failed(self, count: int = 1) -> Deferred[None]:
        """
        Fires once C{count} attempts have failed.
        """
        return self._when(lambda: len(self.failures) >= count)


class RunningTests(TestCase):
    def setUp(self) -> None:
        self.db = database(self)
        self.delivered = Delivered(self)

    def start(self, **deliver):
        running = run(self, runningConfig(self, deliver=self.db.deliverConfig(**deliver)))
        self.http = client()
        return running

    @inlineCallbacks
    def send(self, running, messageId: str, **params):
        response = yield self.http.get(running.url, params={**SMS, "id": messageId, **params})
        body = yield response.text()
        self.assertEqual(response.code, 200, body)

    @inlineCallbacks
    def test_callbackToRow(self):
        """
        A callback becomes a row, with its document and its node, and is
        marked delivered in the spool once the row is committed.
        """
        running = self.start(postgresql_node="node-a")
        yield self.send(running, "row-1", message="Hi there")
        yield self.delivered.all(["row-1"])
        yield running.stop()
        [(document, node, text)] = self.db.query(
            "SELECT document, node, text FROM mxrecv_message WHERE id = 'row-1'"
        )
        self.assertEqual(
            document, json.loads((running.spool / "new" / "row-1" / "message.json").read_text())
        )
        self.assertEqual((node, text), ("node-a", "Hi there"))
        self.assertTrue((running.spool / "state" / "delivered" / "postgresql" / "row-1").exists())

    @inlineCallbacks
    def test_alreadyThere(self):
        """
        An id another node stored is marked delivered here too, and stays
        that node's row.
        """
        running = self.start(postgresql_node="node-b")
        self.db.query(
            "INSERT INTO mxrecv_message (id, document, type, sender, recipients, cc, date, "
            "received, changes, node) VALUES ('dup', '{}', 'sms', 'x', '{}', '{}', 'd', now(), "
            "'{}', 'node-a') RETURNING id"
        )
        yield self.send(running, "dup")
        yield self.delivered.all(["dup"])
        yield running.stop()
        self.assertEqual(self.db.query("SELECT node FROM mxrecv_message"), [("node-a",)])
        self.assertTrue((running.spool / "state" / "delivered" / "postgresql" / "dup").exists())

    @inlineCallbacks
    def test_recordLost(self):
        """
        A node that stored a message but lost its record of it (a crash
        between the commit and the record) stores it again at its next
        start: it finds the row there, marks the message delivered, and no
        one is notified twice.
        """
        listener = self.db.connect()
        self.addCleanup(listener.close)
        listener.execute("LISTEN mxrecv_message")
        config = runningConfig(self, deliver=self.db.deliverConfig())
        running = run(self, config)
        self.http = client()
        yield self.send(running, "lost")
        yield self.delivered.all(["lost"])
        yield running.stop()
        record = running.spool / "state" / "delivered" / "postgresql" / "lost"
        record.unlink()

        self.delivered.names.clear()
        again = run(self, config)
        yield self.delivered.all(["lost"])
        yield again.stop()
        self.assertTrue(record.exists())
        self.assertEqual(self.db.query("SELECT count(*) FROM mxrecv_message"), [(1,)])
        self.assertEqual(
            [n.payload for n in listener.notifies(timeout=0.5, stop_after=10)], ["lost"]
        )

    @inlineCallbacks
    def test_databaseDownThenUp(self):
        """
        With the database down, callbacks are still answered 200, delivery
        fails and waits, the backlog is counted; once the database is back,
        every message arrives, once, and is marked delivered.
        """
        running = self.start()
        cluster = self.db.cluster
        cluster.stop()
        self.addCleanup(lambda: None if cluster.running else cluster.start())
        ids = [f"down-{i}" for i in range(5)]
        for messageId in ids:
            yield self.send(running, messageId)
        yield self.delivered.failed(2)
        samples = yield scrape(running)
        self.assertEqual(value(samples, "mxrecv_delivery_backlog", target="postgresql"), 5)
        oldest = value(samples, "mxrecv_delivery_oldest_timestamp_seconds", target="postgresql")
        self.assertTrue(0 < oldest <= reactor.seconds(), oldest)
        self.assertEqual(self.delivered.names, [])
        # /health still says mxrecv takes callbacks, and names the backlog,
        # its age and why delivery fails.
        response = yield self.http.get(running.admin + "/health")
        health = json.loads((yield response.content()))
        self.assertEqual((response.code, health["ok"]), (200, True))
        check = health["checks"]["delivery.postgresql"]
        self.assertEqual((check["ok"], check["critical"]), (False, False))
        self.assertRegex(
            check["detail"],
            r"^5 waiting, the oldest for \d+s; failing since \S+ \(\d+ in a row, next try in "
            r"\d+s\): PostgreSQL: connection failed",
        )

        cluster.start()
        yield self.delivered.all(ids)
        yield running.stop()
        self.assertEqual(
            self.db.query("SELECT id FROM mxrecv_message ORDER BY id"), [(i,) for i in ids]
        )
        self.assertEqual(
            sorted(p.name for p in (running.spool / "state" / "delivered" / "postgresql").iterdir()),
            ids,
        )
