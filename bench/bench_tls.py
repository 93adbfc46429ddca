"""
Callbacks per second over HTTPS beside plain HTTP, against a real twistd
mxrecv (run by hand; figures go in docs/tls.md):

    PYTHONPATH=. /tmp/venv/bin/python bench/bench_tls.py [--seconds 10] [--concurrency 8]

Four runs of GET SMS callbacks: HTTP and HTTPS, each with a new connection
per request (for HTTPS a full handshake each time: no session resumption,
which is mxrecv's default) and with keep-alive connections.  The server is
started by this script (ports 18310 and 18311 on 127.0.0.1, a self-signed
certificate and a spool in a temporary directory) and stopped at the end.
Client and server share the machine, so the client's own cost is in the
figures too; the server's CPU time per callback is printed beside them.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

from twisted.internet import defer, task
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from treq.client import HTTPClient
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from mxrecv.selfsigned import certificate, certificatePEM, keyPEM, newKey

ROOT = Path(__file__).absolute().parent.parent
HTTP_PORT = 18310
HTTPS_PORT = 18311


def serverCPU(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def startServer(directory: Path, fsync: bool) -> subprocess.Popen:
    key = newKey()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = certificate(
        key, hosts=["127.0.0.1"], notBefore=now - datetime.timedelta(hours=1),
        notAfter=now + datetime.timedelta(days=30),
    )
    (directory / "key.pem").write_bytes(keyPEM(key))
    (directory / "cert.pem").write_bytes(certificatePEM(cert))
    config = directory / "bench.toml"
    config.write_text(
        "[server]\n"
        f'listen = ["tcp:{HTTP_PORT}:interface=127.0.0.1", '
        f'"ssl:{HTTPS_PORT}:interface=127.0.0.1:privateKey={directory}/key.pem:certKey={directory}/cert.pem"]\n'
        'allow = ["127.0.0.0/8"]\n'
        f'[spool]\ndir = "{directory}/spool"\nfsync = {"true" if fsync else "false"}\n'
    )
    server = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", "--logfile", str(directory / "twistd.log"),
         "mxrecv", "--config", str(config)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", HTTPS_PORT), timeout=1).close()
            return server
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"server exited: see {directory / 'twistd.log'}")
            time.sleep(0.1)
    server.terminate()
    raise SystemExit("server did not start listening")


@defer.inlineCallbacks
def run(reactor, scheme: str, keepAlive: bool, seconds: float, concurrency: int, ids, pid: int, trust):
    pool = HTTPConnectionPool(reactor, persistent=keepAlive)
    pool.maxPersistentPerHost = concurrency
    client = HTTPClient(Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trust), pool=pool))
    port = HTTPS_PORT if scheme == "https" else HTTP_PORT
    done = {"ok": 0, "failed": 0}
    cpu = serverCPU(pid)
    start = time.monotonic()
    stop = start + seconds

    @defer.inlineCallbacks
    def worker():
        while time.monotonic() < stop:
            query = urlencode({
                "id": f"bench-{next(ids)}", "from": "447700900001", "to": "80000",
                "date": "2026-11-25 10:00:00", "type": "6", "message": "benchmark",
            })
            try:
                response = yield client.get(f"{scheme}://127.0.0.1:{port}/?{query}")
                yield response.content()
                done["ok" if response.code == 200 else "failed"] += 1
            except Exception:
                done["failed"] += 1

    yield defer.gatherResults([worker() for _ in range(concurrency)])
    elapsed = time.monotonic() - start
    cpu = serverCPU(pid) - cpu
    yield pool.closeCachedConnections()
    return done["ok"], done["failed"], elapsed, cpu


@defer.inlineCallbacks
def main(reactor, args):
    directory = Path(tempfile.mkdtemp(prefix="bench-tls-"))
    server = startServer(directory, args.fsync)
    try:
        trust = trustRootFromCertificates([Certificate.loadPEM((directory / "cert.pem").read_bytes())])
        ids = itertools.count()
        print(f"{args.seconds:g} s per run, {args.concurrency} concurrent clients, "
              f"fsync={'on' if args.fsync else 'off'}")
        print(f"{'scheme':6} {'connections':12} {'callbacks/s':>11} {'failed':>6} {'server CPU ms/callback':>23}")
        for scheme, keepAlive in [("http", False), ("https", False), ("http", True), ("https", True)]:
            ok, failed, elapsed, cpu = yield run(
                reactor, scheme, keepAlive, args.seconds, args.concurrency, ids, server.pid, trust
            )
            print(f"{scheme:6} {'keep-alive' if keepAlive else 'new each':12} {ok / elapsed:11.0f} "
                  f"{failed:6d} {1000 * cpu / max(ok, 1):23.2f}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(directory)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--no-fsync", dest="fsync", action="store_false")
    task.react(main, [parser.parse_args()])
