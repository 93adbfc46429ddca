"""
How fast the admin inbox answers with a large spool (the target: a page
under 200 ms with 100,000 messages).

Builds a spool of --messages messages spread over new/ (60%), cur/ (35%),
failed/ (3%) and pending/ (2%), half SMS and half MMS (message.json only:
the list reads nothing else), starts mxrecv on it with twistd, and times
GET /inbox over loopback, each scenario --requests times:

  first-build    start-up to the first page: the catalog read from scratch
  first-page     the newest page, nothing changed in the spool
  deep-pages     following "Older" links page after page
  filtered       type, folder, sender substring, received range, id
  busy           a message lands in new/ and one moves new/ -> cur/ before
                 each request (both folders listed again each time)
  restart        mxrecv restarted: to the first page with the catalog kept

    python bench/bench_inbox.py                      # 100,000 messages
    python bench/bench_inbox.py --messages 5000      # a quick check

Needs mxrecv importable (installed, or run with PYTHONPATH=.).  Only
loopback traffic; every loop is bounded by --requests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mxrecv.message.model import Message, Part
from mxrecv.spool.layout import DIRECTORIES, MESSAGE_JSON

FOLDERS = (("new", 0.60), ("cur", 0.35), ("failed", 0.03), ("pending", 0.02))


def build(root: Path, count: int, seed: int = 15) -> None:
    """
    Write C{count} messages into C{root}, as mxrecv and an application
    would leave them (names in random order, received over 30 days).
    """
    rng = random.Random(seed)
    for directory in DIRECTORIES:
        (root / directory).mkdir(parents=True, exist_ok=True)
    start = time.mktime((2026, 11, 1, 0, 0, 0, 0, 0, 0))
    for i in range(count):
        folder = rng.choices([f for f, _ in FOLDERS], [w for _, w in FOLDERS])[0]
        when = start + rng.random() * 30 * 86400
        received = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{i % 1000:03d}Z"
        sender = f"4477009{rng.randrange(10**5):05d}"
        if i % 2:
            message = Message(
                id=f"bench-{i}", type="sms", sender=sender, to=("80000",),
                date=received[:19].replace("T", " "), delivery="get", received=received,
                message=f"Message {i}: " + "lorem ipsum " * rng.randrange(1, 12),
                charset="utf-8",
            )
        else:
            message = Message(
                id=f"bench-{i}", type="mms", sender=sender, to=("80000",),
                date=received[:19].replace("T", " "), delivery="post", received=received,
                subject=f"Picture {i}", mms_size=200_000,
                parts=(Part("a.smil", "parts/a.smil", 300, "application/smil"),
                       Part("p.jpg", "parts/p.jpg", 190_000, "image/jpeg"),
                       Part("t.txt", "parts/t.txt", 40, "text/plain")),
                text="Hello",
            )
        document = message.toJSON()
        if folder == "failed":
            document["error"] = "no zip from RetrieveMMS before the expiry"
            document["attempts"] = [{"at": received, "outcome": "HTTP 404"}]
        directory = root / folder / f"bench-{i}"
        directory.mkdir()
        (directory / MESSAGE_JSON).write_text(json.dumps(document, indent=2))


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path, work: Path) -> None:
        self.port = freePort()
        self.config = work / "mxrecv.toml"
        self.config.write_text(
            f'[server]\nlisten = ["tcp:{freePort()}:interface=127.0.0.1"]\n'
            f'[spool]\ndir = "{root}"\nfsync = false\n'
            f'[admin]\nlisten = ["tcp:{self.port}:interface=127.0.0.1"]\n'
        )
        self.log = open(work / "mxrecv.log", "ab")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        """
        Start mxrecv; the seconds until its first inbox page.
        """
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "mxrecv",
             "--config", str(self.config)],
            stdout=self.log, stderr=self.log,
        )
        deadline = started + 600
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                self.log.flush()
                tail = (self.config.parent / "mxrecv.log").read_text()[-2000:]
                raise SystemExit(f"mxrecv exited:\n{tail}")
            try:
                get(self.url + "/inbox", timeout=600)
                return time.perf_counter() - started
            except OSError:
                time.sleep(0.05)
        raise SystemExit("mxrecv did not answer within 600 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)
        self.process = None


def get(url: str, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        if response.status != 200:
            raise SystemExit(f"{url}: {response.status}")
        return response.read()


def timed(url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    body = get(url)
    return (time.perf_counter() - started) * 1000, body


def summary(name: str, times: list[float]) -> str:
    times = sorted(times)
    p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
    return (
        f"| {name} | {len(times)} | {statistics.median(times):.1f} | {p95:.1f} | {times[-1]:.1f} |"
    )


def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-inbox-"))
    root = Path(args.spool) if args.spool else work / "spool"
    try:
        if not (root / "new").is_dir():
            t = time.perf_counter()
            build(root, args.messages)
            print(f"built {args.messages} messages in {time.perf_counter() - t:.1f} s", flush=True)
        for leftover in ("inbox.sqlite", "inbox.sqlite-wal", "inbox.sqlite-shm"):
            (root / "state" / leftover).unlink(missing_ok=True)
        server = Server(root, work)
        rows = []
        try:
            first = server.start()
            print(f"first page after start (catalog built from scratch): {first:.2f} s", flush=True)
            base = server.url + "/inbox"
            n = args.requests

            rows.append(summary("first-page", [timed(base)[0] for _ in range(n)]))

            deep, url = [], base
            for _ in range(n):
                ms, body = timed(url)
                deep.append(ms)
                older = re.search(rb'href="(/inbox\?[^"]*before=[^"]*)"', body)
                if older is None:
                    url = base
                else:
                    url = server.url + older.group(1).decode().replace("&amp;", "&")
            rows.append(summary("deep-pages", deep))

            filters = ["type=mms", "folder=failed", "from=77009123", "id=bench-4242",
                       "since=2026-11-10T00:00&until=2026-11-10T12:00", "type=sms&folder=cur"]
            filtered = [timed(f"{base}?{filters[i % len(filters)]}")[0] for i in range(n)]
            rows.append(summary("filtered", filtered))

            busy = []
            new = sorted((root / "new").iterdir())
            for i in range(n):
                landed = root / "tmp" / f"busy-{i}"
                landed.mkdir()
                (landed / MESSAGE_JSON).write_text(
                    json.dumps({"id": f"busy-{i}", "type": "sms", "from": "447700900123",
                                "to": ["80000"], "received": "2026-12-01T00:00:00.000Z",
                                "message": "arrived during the benchmark", "parts": []})
                )
                os.rename(landed, root / "new" / landed.name)
                os.rename(new[i], root / "cur" / new[i].name)
                busy.append(timed(base)[0])
            rows.append(summary("busy", busy))

            server.stop()
            again = server.start()
            print(f"first page after a restart (catalog kept): {again:.2f} s", flush=True)
            rows.append(summary("after-restart", [timed(base)[0] for _ in range(n)]))
        finally:
            server.stop()
        print(f"\n{args.messages} messages; ms per GET /inbox (50 rows) over loopback\n")
        print("| scenario | requests | median | p95 | max |")
        print("|---|---|---|---|---|")
        print("\n".join(rows))
    finally:
        if not args.spool:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--spool", help="build the spool here (or reuse one built there)")
    run(p.parse_args())


if __name__ == "__main__":
    main()
