"""
Callbacks per second over HTTPS beside plain HTTP, against a real twistd
mxrecv (run by hand; figures go in docs/tls.md):

    PYTHONPATH=. /tmp/venv/bin/python bench/bench_tls.py [--seconds 10] [--concurrency 8]

Four runs of GET SMS callbacks: HTTP and HTTPS, each with a new connection
per request (for HTTPS a full handshake each time: no session resumption,
which is mxrecv's default) and with keep-alive connections.  The server is
started by this script (ports 18310 and 18311 on 127.0.0.1, a self-signed
certificate and a spool in a temporary directory) and stopped at the end.
With --reload N it instead times N reloads: from SIGHUP until a new
connection gets the new certificate.
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
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

from cryptography import x509
from cryptography.x509.oid import NameOID
from treq.client import HTTPClient
from twisted.internet import defer, task
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from mxrecv.tls.selfsigned import certificate, certificatePEM, keyPEM, newKey

ROOT = Path(__file__).absolute().parent.parent
HTTP_PORT = 18310
HTTPS_PORT = 18311


def serverCPU(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def writeCertificate(directory: Path, name: str) -> None:
    """
    A new key and self-signed certificate for 127.0.0.1, each file replaced
    atomically.
    """
    key = newKey()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = certificate(
        key, hosts=["127.0.0.1"], commonName=name, notBefore=now - datetime.timedelta(hours=1),
        notAfter=now + datetime.timedelta(days=30),
    )
    for path, data in (("key.pem", keyPEM(key)), ("cert.pem", certificatePEM(cert))):
        (directory / f"{path}.new").write_bytes(data)
        os.replace(directory / f"{path}.new", directory / path)


def servedName() -> str:
    """
    The common name of the certificate a new connection gets.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", HTTPS_PORT), timeout=5) as raw:
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    name = x509.load_der_x509_certificate(der).subject
    return name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def measureReload(pid: int, directory: Path, times: int) -> list[float]:
    """
    Seconds from SIGHUP to a new connection getting the new certificate.
    """
    delays = []
    for i in range(times):
        name = f"renewed {i}"
        writeCertificate(directory, name)
        start = time.monotonic()
        os.kill(pid, signal.SIGHUP)
        while servedName() != name:
            if time.monotonic() - start > 10:
                raise SystemExit("the new certificate was not served within 10 s")
        delays.append(time.monotonic() - start)
    return delays


def startServer(directory: Path, fsync: bool) -> subprocess.Popen:
    writeCertificate(directory, "mxrecv bench")
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
    clientCPU = sum(os.times()[:2])
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
    clientCPU = sum(os.times()[:2]) - clientCPU
    yield pool.closeCachedConnections()
    return done["ok"], done["failed"], elapsed, cpu, clientCPU


@defer.inlineCallbacks
def main(reactor, args):
    directory = Path(tempfile.mkdtemp(prefix="bench-tls-"))
    server = startServer(directory, args.fsync)
    try:
        if args.reload:
            delays = measureReload(server.pid, directory, args.reload)
            print(f"SIGHUP to new certificate served, {len(delays)} reloads: "
                  f"median {1000 * sorted(delays)[len(delays) // 2]:.1f} ms, "
                  f"max {1000 * max(delays):.1f} ms")
            return
        trust = trustRootFromCertificates([Certificate.loadPEM((directory / "cert.pem").read_bytes())])
        ids = itertools.count()
        print(f"{args.seconds:g} s per run, {args.concurrency} concurrent clients, "
              f"fsync={'on' if args.fsync else 'off'}")
        print("CPU: milliseconds per callback, server process and this client")
        print(f"{'scheme':6} {'connections':12} {'callbacks/s':>11} {'failed':>6} {'server CPU':>10} {'client CPU':>10}")
        modes = [("http", False), ("https", False), ("http", True), ("https", True)]
        for round in range(args.rounds):
            # Alternate the order, so that drift in the machine's load is
            # not always charged to the same mode.
            for scheme, keepAlive in modes if round % 2 == 0 else modes[::-1]:
                ok, failed, elapsed, cpu, clientCPU = yield run(
                    reactor, scheme, keepAlive, args.seconds, args.concurrency, ids, server.pid, trust
                )
                n = max(ok, 1)
                print(f"{scheme:6} {'keep-alive' if keepAlive else 'new each':12} {ok / elapsed:11.0f} "
                      f"{failed:6d} {1000 * cpu / n:10.2f} {1000 * clientCPU / n:10.2f}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(directory)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="repeat the four runs")
    parser.add_argument("--reload", type=int, default=0, metavar="N",
                        help="instead: time N certificate reloads (SIGHUP to new certificate served)")
    parser.add_argument("--no-fsync", dest="fsync", action="store_false")
    task.react(main, [parser.parse_args()])
