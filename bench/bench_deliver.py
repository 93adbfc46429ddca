#!/usr/bin/env python3
"""
Delivery to the application's URL (signed webhooks): how fast a backlog
drains, and the memory a large MMS takes to deliver.

Starts mxrecv as a user would (twistd, fsync on, pinned to one core;
bench_post.Server) with C{[deliver] url} pointing at an application
stand-in in this process (a threaded http.server on 127.0.0.1 that reads
each body through, checks its signature with the key, and answers 503 while
"closed", 200 once "open"), then measures:

- backlog: --count SMS callbacks accepted while the application answers
  503; the application opened; the rate at which the backlog arrives (first
  to last 200), for each --concurrency.
- memory: an MMS whose zip holds one --mms MiB entry, accepted while the
  application answers 503; once it is complete in new/ the server's peak
  RSS (VmHWM) is reset, the application opened, and the peak growth read
  when the MMS has arrived (read twice by mxrecv: signed, then sent), with
  the time its request took (first byte to answer).

    PYTHONPATH=. python3 bench/bench_deliver.py [--count 2000] [--concurrency 1 4]
        [--mms 100] [--port 18160]

Small-scale check: --count 100 --mms 8.  Every wait is bounded (--timeout);
the spool is removed at the end.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlencode

from bench_post import MiB, Server, finishUploads, makeBody, makeZip, startUploads, waitForNew

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()


class Application(ThreadingHTTPServer):
    """
    The application: reads each POST through, checks its signature, and
    answers 503 while closed.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.open = False
        #: (webhook-id, when its request began, when it was answered 200)
        self.accepted: list[tuple[str, float, float]] = []
        self.badSignatures = 0
        self.changed = threading.Condition()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def waitFor(self, count: int, timeout: float) -> None:
        end = time.monotonic() + timeout
        with self.changed:
            while len(self.accepted) < count:
                left = end - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{len(self.accepted)} of {count} arrived in {timeout}s")
                self.changed.wait(left)


class _Handler(BaseHTTPRequestHandler):
    server: Application

    def do_POST(self) -> None:
        began = time.monotonic()
        webhookId = self.headers["webhook-id"]
        signed = f"{webhookId}.{self.headers['webhook-timestamp']}.".encode()
        mac = hmac.new(KEY, signed, hashlib.sha256)
        left = int(self.headers["Content-Length"])
        while left:
            chunk = self.rfile.read(min(left, MiB))
            if not chunk:
                break
            mac.update(chunk)
            left -= len(chunk)
        good = self.headers["webhook-signature"] == "v1," + base64.b64encode(mac.digest()).decode()
        status = 200 if self.server.open and good else 503
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
        with self.server.changed:
            if not good:
                self.server.badSignatures += 1
            if status == 200:
                self.server.accepted.append((webhookId, began, time.monotonic()))
                self.server.changed.notify_all()

    def log_message(self, *args) -> None:
        pass


def deliverConfig(url: str, secretFile: Path, concurrency: int) -> str:
    return (
        f'\n[deliver]\nurl = "{url}"\nsecret_file = "{secretFile}"\n'
        f"concurrency = {concurrency}\nbackoff_initial = 0.05\nbackoff_max = 0.2\n"
    )


def sendSMS(port: int, ids: list[str]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for messageId in ids:
        query = urlencode(
            {"id": messageId, "from": "447700900123", "to": "80000", "type": "6",
             "date": "2026-11-25 10:30:00", "message": "Hello"}
        )
        connection.request("GET", "/?" + query)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{messageId}: {response.status}")
    connection.close()


def backlog(args, work: Path, secretFile: Path, concurrency: int) -> dict:
    app = Application()
    server = Server(work, args.port, 300 * MiB, args.timeout, args.server_cpus,
                    deliverConfig(app.url, secretFile, concurrency))
    try:
        ids = [f"sms-{concurrency}-{i}" for i in range(args.count)]
        sendSMS(args.port, ids)
        waitForNew(server.spool, ids, args.timeout)
        app.open = True
        app.waitFor(args.count, args.timeout)
        times = sorted(t for _, _, t in app.accepted)
        seconds = times[-1] - times[0]
        return {"concurrency": concurrency, "count": args.count, "seconds": seconds,
                "rate": (args.count - 1) / seconds if seconds else float("inf"),
                "badSignatures": app.badSignatures}
    finally:
        server.stop()
        app.shutdown()


def memory(args, work: Path, secretFile: Path) -> dict:
    app = Application()
    server = Server(work, args.port, 300 * MiB, args.timeout, args.server_cpus,
                    deliverConfig(app.url, secretFile, 1))
    try:
        zipPath, body = work / "mms.zip", work / "mms.body"
        makeZip(zipPath, args.mms * MiB)
        makeBody(body, zipPath, "mms-1")
        [(code, _)] = finishUploads(startUploads(f"http://127.0.0.1:{args.port}/", [body]),
                                    args.timeout)
        if code != 200:
            raise RuntimeError(f"the MMS was answered {code}")
        waitForNew(server.spool, ["mms-1"], args.timeout)
        baseline = server.resetPeak()
        app.open = True
        app.waitFor(1, args.timeout)
        _, began, ended = app.accepted[0]
        seconds = ended - began
        return {"size": args.mms * MiB, "growth": server.peak() - baseline,
                "seconds": seconds, "badSignatures": app.badSignatures}
    finally:
        server.stop()
        app.shutdown()


def main(args) -> None:
    os.sched_setaffinity(0, args.client_cpus)
    work = Path(tempfile.mkdtemp(prefix="mxrecv-bench-deliver.", dir=args.dir))
    try:
        secretFile = work / "webhook-secret"
        secretFile.write_text(SECRET + "\n")
        for concurrency in args.concurrency:
            result = backlog(args, work, secretFile, concurrency)
            print(f"backlog of {result['count']} SMS, concurrency {concurrency}: "
                  f"{result['rate']:.0f} messages/s ({result['seconds']:.2f} s); "
                  f"bad signatures {result['badSignatures']}", flush=True)
        result = memory(args, work, secretFile)
        print(f"one {args.mms} MiB MMS: peak RSS growth {result['growth'] / MiB:.1f} MiB, "
              f"its request took {result['seconds']:.2f} s "
              f"({result['size'] / MiB / result['seconds']:.0f} MiB/s); "
              f"bad signatures {result['badSignatures']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--mms", type=int, default=100, help="MiB")
    parser.add_argument("--port", type=int, default=18160)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--dir", default=None, help="where the spool goes (default: /tmp)")
    parser.add_argument("--server-cpus", type=lambda s: {int(c) for c in s.split(",")},
                        default={0})
    parser.add_argument("--client-cpus", type=lambda s: {int(c) for c in s.split(",")},
                        default={1})
    if subprocess.run(["which", "curl"], capture_output=True).returncode:
        sys.exit("bench_deliver needs curl (to post the MMS)")
    main(parser.parse_args())
