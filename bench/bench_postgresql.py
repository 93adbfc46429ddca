#!/usr/bin/env python3
"""
Delivery into PostgreSQL: messages per second from one node and from two
nodes at once, the time from the 200 to the committed row, and the memory a
100 MiB MMS takes to deliver.

Starts a throwaway PostgreSQL cluster (mxrecv.testing.postgresql: initdb in
a temporary directory, fsync and synchronous_commit on, as in production)
and mxrecv nodes as a user would (twistd, each with its own spool, fsync on),
then measures:

- latency: SMS callbacks sent at a fixed rate (--rate per second, in all,
  spread over the nodes) for --seconds; for each id, the time from its 200
  (the client has read it) to its notification on LISTEN mxrecv_message,
  which PostgreSQL sends at the commit: p50, p99, max.
- throughput: --count messages accepted while the database refuses the
  nodes (role NOLOGIN), then the database let in again: the rate at which
  the backlog is committed (first to last notification).  The callbacks are
  not what is measured.
- memory (one node): an MMS whose zip holds one --mms MiB entry, posted
  while the database refuses the node; once it is complete in new/ the
  node's peak RSS (VmHWM) is reset, the database let in, and the peak growth
  read when its notification arrives.  Its bytes are compared in the
  database (sha256).

    PYTHONPATH=. python3 bench/bench_postgresql.py [--nodes 1 2] [--rate 200]
        [--seconds 10] [--count 5000] [--mms 100] [--runs 1]

Small-scale check: --rate 50 --seconds 2 --count 200 --mms 8.  Everything
is bounded in time (--timeout); the cluster and spools are removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import deque
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mxrecv.testing.postgresql import TemporaryCluster  # noqa: E402

MiB = 1024 * 1024
BOUNDARY = "mxrecv-bench-pg-5d1c"
CONFIG = """
[server]
listen = ["tcp:0:interface=127.0.0.1"]
allow = ["127.0.0.0/8"]
max_body = {maxBody}

[spool]
dir = "{spool}"

[deliver]
postgresql = "{conninfo}"
postgresql_password_file = "{passwordFile}"
postgresql_node = "{name}"
backoff_initial = 0.05
backoff_max = 0.2
{extra}
"""


class Node:
    """
    A twistd mxrecv delivering into the database, on a port of its own.
    """

    def __init__(self, work: Path, name: str, conninfo: str, passwordFile: Path, extra: str):
        self.work = work / name
        self.work.mkdir()
        self.spool = self.work / "spool"
        config = self.work / "mxrecv.toml"
        config.write_text(
            CONFIG.format(
                spool=self.spool,
                conninfo=conninfo,
                passwordFile=passwordFile,
                name=name,
                maxBody=300 * MiB,
                extra=extra,
            )
        )
        self.logPath = self.work / "twistd.log"
        self.log = self.logPath.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "mxrecv", "--config", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        self.port = self._port(30)

    def _port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(rb"CallbackSite starting on (\d+)", self.logPath.read_bytes())
            if found:
                return int(found.group(1))
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise SystemExit(f"mxrecv did not start; see {self.logPath}")

    def memory(self) -> dict[str, int]:
        values = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
        return values

    def resetPeak(self) -> int:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        return self.memory()["VmRSS"]

    def failedAttempts(self) -> int:
        return len(re.findall(rb"to the postgresql failed", self.logPath.read_bytes()))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class Listener(threading.Thread):
    """
    LISTEN mxrecv_message on a connection of its own; the time each id's
    notification arrived.
    """

    def __init__(self, cluster: TemporaryCluster, dbname: str) -> None:
        super().__init__(daemon=True)
        self.connection = cluster.admin(dbname)
        self.connection.execute("LISTEN mxrecv_message")
        self.heard: dict[str, float] = {}
        self.duplicates = 0
        self._changed = threading.Condition()
        self._closing = False
        self.start()

    def run(self) -> None:
        while not self._closing:
            for note in self.connection.notifies(timeout=0.2):
                with self._changed:
                    if note.payload in self.heard:
                        self.duplicates += 1
                    self.heard[note.payload] = time.time()
                    self._changed.notify_all()

    def waitFor(self, ids, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not all(i in self.heard for i in ids):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = [i for i in ids if i not in self.heard]
                    raise RuntimeError(f"{len(missing)} ids not notified within {timeout}s")
                self._changed.wait(left)

    def close(self) -> None:
        self._closing = True
        self.join()
        self.connection.close()


class Database:
    """
    The benchmark's database, and a switch that keeps mxrecv out.
    """

    def __init__(self, cluster: TemporaryCluster, name: str, work: Path) -> None:
        self.cluster = cluster
        self.name = name
        self.conninfo = cluster.createDatabase(name)
        self.passwordFile = work / f"{name}.password"
        self.passwordFile.write_text(cluster.password)
        subprocess.run(
            [sys.executable, "-m", "mxrecv.ops.cli", "db-init", "-c", str(self._config(work))],
            check=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            stdout=subprocess.DEVNULL,
        )

    def _config(self, work: Path) -> Path:
        path = work / f"{self.name}-init.toml"
        path.write_text(
            f'[deliver]\npostgresql = "{self.conninfo}"\n'
            f'postgresql_password_file = "{self.passwordFile}"\n'
        )
        return path

    def refuse(self) -> None:
        with self.cluster.admin(self.name) as admin:
            admin.execute("ALTER ROLE mxrecv NOLOGIN")
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'mxrecv'"
            )

    def admit(self) -> None:
        with self.cluster.admin(self.name) as admin:
            admin.execute("ALTER ROLE mxrecv LOGIN")

    def rows(self) -> int:
        with self.cluster.admin(self.name) as admin:
            return admin.execute("SELECT count(*) FROM mxrecv_message").fetchone()[0]


def sms(messageId: str) -> str:
    return "/?" + urlencode(
        {"id": messageId, "from": "447700900123", "to": "80000",
         "date": "2026-11-25 10:30:00", "type": "6", "message": "Hello from the bench"}
    )


def send(ports: list[int], ids: list[str], rate: float | None, threads: int = 8,
         timeout: float = 60.0) -> dict[str, float]:
    """
    GET callbacks for C{ids}, id i to C{ports[i % len(ports)]}, from
    C{threads} keep-alive connections per port; at C{rate} per second in all
    (open loop) or as fast as they go.  Returns when each id got its 200.
    """
    answered: dict[str, float] = {}
    lock = threading.Lock()
    start = time.monotonic() + 0.1
    queues = {port: deque() for port in ports}
    for i, messageId in enumerate(ids):
        queues[ports[i % len(ports)]].append((i, messageId))
    errors: list[str] = []

    def worker(port: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        while True:
            with lock:
                if not queues[port]:
                    return
                i, messageId = queues[port].popleft()
            if rate:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            connection.request("GET", sms(messageId))
            response = connection.getresponse()
            response.read()
            with lock:
                if response.status != 200:
                    errors.append(f"{messageId}: {response.status}")
                answered[messageId] = time.time()

    pool = [threading.Thread(target=worker, args=(p,)) for p in ports for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout)
    if errors or len(answered) != len(ids):
        raise RuntimeError(f"callbacks failed: {errors[:5]} ({len(answered)} of {len(ids)})")
    return answered


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def latency(args, db: Database, nodes: list[Node], listener: Listener, tag: str) -> dict:
    ids = [f"{tag}-lat-{i}" for i in range(int(args.rate * args.seconds))]
    answered = send([n.port for n in nodes], ids, args.rate)
    listener.waitFor(ids, args.timeout)
    delays = [listener.heard[i] - answered[i] for i in ids]
    return {
        "p50_ms": percentile(delays, 50) * 1000,
        "p99_ms": percentile(delays, 99) * 1000,
        "max_ms": max(delays) * 1000,
        "count": len(ids),
    }


def throughput(args, db: Database, nodes: list[Node], listener: Listener, tag: str) -> dict:
    ids = [f"{tag}-tp-{i}" for i in range(args.count)]
    db.refuse()
    send([n.port for n in nodes], ids, None)
    # Every node has found the database closed to it (its backlog waits).
    deadline = time.monotonic() + args.timeout
    before = [n.failedAttempts() for n in nodes]
    while any(n.failedAttempts() == b for n, b in zip(nodes, before, strict=True)):
        if time.monotonic() > deadline:
            raise RuntimeError("the nodes never tried")
        time.sleep(0.05)
    db.admit()
    listener.waitFor(ids, args.timeout)
    times = sorted(listener.heard[i] for i in ids)
    return {"rate": (len(ids) - 1) / (times[-1] - times[0]), "count": len(ids)}


def makeZip(path: Path, size: int) -> None:
    info = zipfile.ZipInfo("video.mp4", (2026, 11, 25, 10, 0, 0))
    info.file_size = size
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive, archive.open(info, "w") as entry:
        for _ in range(size // MiB):
            entry.write(os.urandom(MiB))


def postMMS(port: int, messageId: str, zipPath: Path, timeout: float) -> None:
    head = "".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in [("id", messageId), ("from", "447700900123"), ("to", "80000"),
                     ("date", "2026-11-25 10:30:00"), ("type", "2"), ("subject", "bench")]
    ).encode() + (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="mms.zip"; filename="mms.zip"'
        "\r\nContent-Type: application/zip\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    connection.putrequest("POST", "/")
    connection.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
    connection.putheader("Content-Length", str(len(head) + zipPath.stat().st_size + len(tail)))
    connection.endheaders()
    connection.send(head)
    with zipPath.open("rb") as f:
        while chunk := f.read(MiB):
            connection.send(chunk)
    connection.send(tail)
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"MMS answered {response.status}")


def memory(args, db: Database, node: Node, listener: Listener, work: Path, tag: str) -> dict:
    messageId = f"{tag}-mms"
    zipPath = work / "mms.zip"
    makeZip(zipPath, args.mms * MiB)
    db.refuse()
    before = node.failedAttempts()
    postMMS(node.port, messageId, zipPath, args.timeout)
    deadline = time.monotonic() + args.timeout
    # Complete in new/ and tried once (refused): what is left is delivery.
    while node.failedAttempts() == before or not (node.spool / "new" / messageId).is_dir():
        if time.monotonic() > deadline:
            raise RuntimeError("the MMS was never tried")
        time.sleep(0.05)
    baseline = node.resetPeak()
    db.admit()
    listener.waitFor([messageId], args.timeout)
    growth = node.memory()["VmHWM"] - baseline
    with zipfile.ZipFile(zipPath) as archive, archive.open("video.mp4") as entry:
        digest = hashlib.sha256()
        while chunk := entry.read(MiB):
            digest.update(chunk)
    with db.cluster.admin(db.name) as admin:
        stored = admin.execute(
            "SELECT encode(sha256(data), 'hex') FROM mxrecv_part WHERE message_id = %s",
            (messageId,),
        ).fetchone()
    zipPath.unlink()
    if stored is None or stored[0] != digest.hexdigest():
        raise RuntimeError("the part in the database differs from what was sent")
    return {"growth_mib": growth / MiB, "baseline_mib": baseline / MiB}


def main(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="mxrecv-bench-pg."))
    cluster = TemporaryCluster()
    try:
        cluster.start()
        extra = f"concurrency = {args.concurrency}" if args.concurrency else ""
        print(f"PostgreSQL on 127.0.0.1:{cluster.port}, work in {work}", flush=True)
        results: dict[str, list[dict]] = {}
        for run in range(args.runs):
            for count in args.nodes:
                tag = f"r{run}n{count}"
                db = Database(cluster, f"bench_{tag}", work)
                nodes = [
                    Node(work, f"{tag}-node{k}", db.conninfo, db.passwordFile, extra)
                    for k in range(count)
                ]
                listener = Listener(cluster, db.name)
                try:
                    # Warm up: imports, first connections.
                    send([n.port for n in nodes], [f"{tag}-warm-{k}" for k in range(20)], None)
                    listener.waitFor([f"{tag}-warm-{k}" for k in range(20)], args.timeout)
                    lat = latency(args, db, nodes, listener, tag)
                    tp = throughput(args, db, nodes, listener, tag)
                    row = {**{f"latency_{k}": v for k, v in lat.items()},
                           **{f"throughput_{k}": v for k, v in tp.items()}}
                    if count == 1 and args.mms:
                        mem = memory(args, db, nodes[0], listener, work, tag)
                        row.update({f"mms_{k}": v for k, v in mem.items()})
                    row["duplicates_heard"] = listener.duplicates
                    row["rows"] = db.rows()
                    results.setdefault(f"{count} node(s)", []).append(row)
                    print(f"run {run + 1}, {count} node(s): " + ", ".join(
                        f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in row.items()), flush=True)
                finally:
                    listener.close()
                    for n in nodes:
                        n.stop()
        print("\nmedians (min-max):")
        for label, rows in results.items():
            print(f"  {label}:")
            for key in rows[0]:
                values = [r[key] for r in rows]
                print(f"    {key}: {statistics.median(values):.1f} "
                      f"({min(values):.1f}-{max(values):.1f})")
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rate", type=float, default=200.0, help="callbacks/s, in all")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--count", type=int, default=5000, help="messages in the backlog")
    parser.add_argument("--mms", type=int, default=100, help="MiB; 0: skip")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=0,
                        help="[deliver] concurrency, if this mxrecv has it (0: its default)")
    parser.add_argument("--timeout", type=float, default=300.0)
    main(parser.parse_args())
