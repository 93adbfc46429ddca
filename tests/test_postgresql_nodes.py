"""
Several mxrecv nodes (twistd processes, each with its own spool) delivering
into one real PostgreSQL: the same ids sent to both are stored once and
notified once; the database stopped in the middle of a load and started
again loses nothing and stores nothing twice.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
from pathlib import Path

from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredSemaphore,
    gatherResults,
    inlineCallbacks,
)
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from mxrecv.deliver.postgresql.schema import upgrade
from mxrecv.deliver.postgresql.store import CHANNEL

from .postgresql import Database, database
from .running import SMS
from .support import httpClient
from .twistd import runTwistd

DELIVERED = re.compile(rb"Delivered new/(\S+) to the postgresql")
FAILED = re.compile(rb"Delivery of new/\S+ to the postgresql failed")


def noTables(db: Database) -> bytes:
    """
    The line start-up stops with on C{db} without mxrecv's tables.
    """
    return (
        f"mxrecv: deliver.postgresql (mxrecv@127.0.0.1:{db.cluster.port}/{db.name}): "
        "the database has no mxrecv tables: create them with mxrecv db-init -c CONFIG\n"
    ).encode()


def nodeConfig(
    case: TestCase, conninfo: str, passwordFile: Path, deliver: str = "", server: str = ""
) -> Path:
    """
    A configuration file for a node on a fresh port of 127.0.0.1, its spool
    (C{spool}) beside it, delivering into C{conninfo}; C{deliver} adds keys
    to C{[deliver]}, C{server} to C{[server]}.
    """
    base = Path(case.mktemp()).absolute()
    base.mkdir()
    config = base / "mxrecv.toml"
    config.write_text(
        '[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\nallow = ["127.0.0.0/8"]\n'
        f"{server}"
        f'[spool]\ndir = "{base / "spool"}"\n'
        f'[deliver]\npostgresql = "{conninfo}"\n'
        f'postgresql_password_file = "{passwordFile}"\n{deliver}'
    )
    return config


class Node:
    """
    One mxrecv node under twistd, delivering into C{db}; follows its log to
    say what it delivered.
    """

    def __init__(self, case: TestCase, db: Database, name: str) -> None:
        config = nodeConfig(
            case,
            db.conninfo,
            db.passwordFile,
            f'postgresql_node = "{name}"\nbackoff_initial = 0.05\nbackoff_max = 0.5\n',
        )
        self.spool = config.parent / "spool"
        self.twistd = runTwistd(case, "--config", str(config))
        self.delivered: set[str] = set()
        self.failures = 0
        self._waiting: list[tuple[object, Deferred[None]]] = []
        received = self.twistd.outReceived

        def outReceived(data: bytes) -> None:
            before = len(self.twistd.output)
            received(data)
            # Whole lines only: a line may arrive in pieces.
            start = self.twistd.output.rfind(b"\n", 0, before) + 1
            end = self.twistd.output.rfind(b"\n") + 1
            lines = self.twistd.output[start:end]
            self.delivered.update(m.decode() for m in DELIVERED.findall(lines))
            self.failures += len(FAILED.findall(lines))
            self._check()

        self.twistd.outReceived = self.twistd.errReceived = outReceived

    def _check(self) -> None:
        for condition, d in list(self._waiting):
            if condition():
                self._waiting.remove((condition, d))
                d.callback(None)

    def when(self, condition) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append((condition, d))
        self._check()
        return d

    def hasDelivered(self, names) -> Deferred[None]:
        return self.when(lambda: set(names) <= self.delivered)

    @inlineCallbacks
    def stop(self):
        self.twistd.process.signalProcess("TERM")
        yield self.twistd.ended

    def records(self) -> list[str]:
        return sorted(p.name for p in (self.spool / "state" / "delivered" / "postgresql").iterdir())


class NodesTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        self.db = database(self)
        self.http = httpClient(self)

    @inlineCallbacks
    def send(self, port: int, messageId: str):
        response = yield self.http.get(
            f"http://127.0.0.1:{port}/", params={**SMS, "id": messageId}
        )
        yield response.content()
        self.assertEqual(response.code, 200, messageId)

    def listen(self):
        listener = self.db.connect()
        self.addCleanup(listener.close)
        listener.execute(f"LISTEN {CHANNEL}")
        return listener

    @inlineCallbacks
    def test_sameIdsTwoNodes(self):
        """
        Every id sent to both nodes (as MX Telecom's retries can be, behind
        a load balancer) is one row; a listener hears each id once; each
        node marks every message delivered, whichever node stored it.
        """
        listener = self.listen()
        nodes = [Node(self, self.db, "node-a"), Node(self, self.db, "node-b")]
        ports = yield gatherResults([n.twistd.listening for n in nodes])
        ids = [f"both-{i}" for i in range(30)]
        limit = DeferredSemaphore(8)
        yield gatherResults(
            [limit.run(self.send, port, i) for i in ids for port in ports]
        )
        yield gatherResults([n.hasDelivered(ids) for n in nodes])
        for node in nodes:
            yield node.stop()
            self.assertEqual(node.records(), sorted(ids))

        rows = self.db.query("SELECT id, node FROM mxrecv_message ORDER BY id")
        self.assertEqual(sorted(i for i, _ in rows), sorted(ids))
        self.assertLessEqual({n for _, n in rows}, {"node-a", "node-b"})
        heard = yield deferToThread(drain, listener, len(ids))
        self.assertEqual(sorted(heard), sorted(ids))

    @inlineCallbacks
    def test_databaseStoppedDuringLoad(self):
        """
        The database stopped (as by a crash) in the middle of a load sent to
        two nodes: every callback is still answered 200, delivery fails and
        waits; once the database is started again every id is stored, once,
        and marked delivered by both nodes.
        """
        nodes = [Node(self, self.db, "node-a"), Node(self, self.db, "node-b")]
        ports = yield gatherResults([n.twistd.listening for n in nodes])
        cluster = self.db.cluster
        self.addCleanup(lambda: None if cluster.running else cluster.start())
        ids = [f"load-{i}" for i in range(60)]
        answered = []

        @inlineCallbacks
        def send(i: int, messageId: str):
            # Each id to one node, and one in three to the other as well.
            yield self.send(ports[i % 2], messageId)
            if i % 3 == 0:
                yield self.send(ports[(i + 1) % 2], messageId)
            answered.append(messageId)
            if len(answered) == 20:
                # In the middle of the load (a few more are being sent), as
                # by a crash: the 40 others arrive with the database down.
                cluster.stop("immediate")

        limit = DeferredSemaphore(4)
        yield gatherResults([limit.run(send, i, m) for i, m in enumerate(ids)])
        # Both nodes have found the database gone.
        yield gatherResults([n.when(lambda n=n: n.failures >= 1) for n in nodes])
        self.assertEqual(len(answered), len(ids))

        yield deferToThread(cluster.start)
        yield gatherResults(
            [n.hasDelivered([m for i, m in enumerate(ids) if i % 2 == k or i % 3 == 0])
             for k, n in enumerate(nodes)]
        )
        for k, node in enumerate(nodes):
            yield node.stop()
            self.assertEqual(
                node.records(), sorted(m for i, m in enumerate(ids) if i % 2 == k or i % 3 == 0)
            )
        self.assertEqual(
            sorted(self.db.query("SELECT id FROM mxrecv_message")), sorted((i,) for i in ids)
        )


def drain(listener, count: int, timeout: float = 30.0) -> list[str]:
    """
    The payloads of the notifications C{listener} has, waiting (up to
    C{timeout} seconds without any) until there are C{count}; then any more
    that are already there.
    """
    heard: list[str] = []
    while True:
        heard.extend(n.payload for n in listener.notifies(timeout=0, stop_after=10_000))
        if len(heard) >= count:
            break
        if not select.select([listener.fileno()], [], [], timeout)[0]:
            break
    # Anything more (a second notification of an id would be a bug).
    heard.extend(n.payload for n in listener.notifies(timeout=0.2, stop_after=10_000))
    return heard



class StartupTests(TestCase):
    """
    The check of the database at start-up, under twistd.
    """

    @inlineCallbacks
    def test_noTables(self):
        """
        A database without mxrecv's tables stops start-up, saying to run
        db-init, before the spool is touched.
        """
        db = database(self, initialise=False)
        config = nodeConfig(self, db.conninfo, db.passwordFile)
        twistd = runTwistd(self, "--config", str(config))
        twistd.listening.addErrback(lambda _: None)
        ended = yield twistd.ended
        self.assertEqual(ended.exitCode, 1)
        self.assertIn(noTables(db), twistd.output)
        self.assertFalse((config.parent / "spool").exists())
        self.assertNotIn(db.password.encode(), twistd.output)

    @inlineCallbacks
    def test_unreachable(self):
        """
        A database that cannot be reached does not stop start-up: callbacks
        are answered, and the messages wait.
        """
        db = database(self)
        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        port = listening.getsockname()[1]
        listening.close()
        conninfo = f"postgresql://mxrecv@127.0.0.1:{port}/{db.name}"
        twistd = runTwistd(self, "--config", str(nodeConfig(self, conninfo, db.passwordFile)))
        node = yield twistd.listening
        response = yield httpClient(self).get(
            f"http://127.0.0.1:{node}/", params={**SMS, "id": "early"}
        )
        self.assertEqual(response.code, 200)
        self.assertIn(b"cannot be reached at start-up", twistd.output)
        twistd.process.signalProcess("TERM")
        yield twistd.ended
        self.assertNotIn(db.password.encode(), twistd.output)

    @inlineCallbacks
    def test_noTablesWorkers(self):
        """
        With several worker processes, a database without mxrecv's tables
        stops start-up in the parent, with the error of a server of one
        process, before any worker is started or the spool touched (not a
        worker that comes to lead, again and again).
        """
        db = database(self, initialise=False)
        config = nodeConfig(self, db.conninfo, db.passwordFile, server="workers = 2\n")
        twistd = runTwistd(self, "--config", str(config), spool=config.parent / "spool")
        twistd.listening.addErrback(lambda _: None)
        # Whichever comes first: the end of the parent, or a worker started.
        _, first = yield DeferredList(
            [twistd.ended, twistd.waitFor(r"Worker \d+ started")],
            fireOnOneCallback=True,
            consumeErrors=True,
        )
        self.assertEqual(first, 0, twistd.text)
        ended = yield twistd.ended
        self.assertEqual(ended.exitCode, 1)
        self.assertIn(noTables(db), twistd.output)
        self.assertEqual(twistd.pids, set())
        self.assertFalse((config.parent / "spool").exists())
        self.assertNotIn(db.password.encode(), twistd.output)

    @inlineCallbacks
    def test_unreachableWorkers(self):
        """
        With several worker processes, a database that cannot be reached at
        start-up does not stop start-up either (the parent says so, once).
        A worker that comes to lead does not check the database again: one
        that came back without mxrecv's tables holds the messages in the
        spool, as in a server of one process, even across a new leader,
        rather than making every new leader exit.  Once the tables are
        made, the messages are delivered.
        """
        db = database(self, initialise=False)
        running = db.cluster
        running.stop()
        self.addCleanup(lambda: None if running.running else running.start())
        config = nodeConfig(
            self,
            db.conninfo,
            db.passwordFile,
            deliver="backoff_initial = 0.05\nbackoff_max = 0.5\n",
            server="workers = 2\n",
        )
        twistd = runTwistd(self, "--config", str(config), spool=config.parent / "spool")
        twistd.listening.addErrback(lambda _: None)
        match = yield twistd.waitFor(r"listening for callbacks on [\d.]+:(\d+)")
        port = int(match.group(1))
        leader = yield twistd.waitFor(r"Worker \d+ \(pid (\d+)\) leads")
        response = yield httpClient(self).get(
            f"http://127.0.0.1:{port}/", params={**SMS, "id": "early"}
        )
        self.assertEqual(response.code, 200)
        yield twistd.waitFor(r"Delivery of new/early to the postgresql failed .*PostgreSQL: ")
        self.assertEqual(len(twistd.matches("cannot be reached at start-up")), 1, twistd.text)

        yield deferToThread(running.start)
        noTables = r"Delivery of new/early to the postgresql failed .*has no mxrecv tables"
        yield twistd.waitFor(noTables)
        # A new leader, with the database reachable and still without tables.
        os.kill(int(leader.group(1)), signal.SIGKILL)
        yield twistd.waitFor(r"Worker \d+ \(pid \d+\) leads", count=2)
        yield twistd.waitFor(noTables, count=len(twistd.matches(noTables)) + 1)

        with db.connect() as connection:
            upgrade(connection)
        yield twistd.waitFor(r"Delivered new/early to the postgresql")
        self.assertEqual(db.query("SELECT id FROM mxrecv_message"), [("early",)])
        self.assertEqual(len(twistd.matches(r"Worker \d+ \(pid \d+\) died")), 1, twistd.text)
        self.assertEqual(twistd.matches("Building the leader's work failed"), [], twistd.text)
        twistd.process.signalProcess("TERM")
        yield twistd.ended
        self.assertNotIn(db.password.encode(), twistd.output)
