"""
A legitimate callback while thousands of idle connections are held open from
addresses outside [server] allow, against a real twistd
mxrecv (run by hand; figures go in docs/benchmarks.md):

    PYTHONPATH=. .venv/bin/python bench/bench_idle.py [--count 5000] [--seconds 20]
        [--open-files 1024] [--backlog 50] [--checkout PATH]

The server is started with the soft limit on open files most systems give a
process (1024, its hard limit unchanged), allowing only 127.0.0.1, with
header_timeout = 600 so that nothing idle would time out during the run; a
listen backlog of --backlog (Twisted's default is 50).  Then
mxrecv.testing.idle opens --count connections to it from 127.0.0.2 ..
127.0.0.254 and holds them, sending nothing, while this script sends one GET
SMS callback every 0.2 s from 127.0.0.1, each on a new connection, for
--seconds, and times each from connect to the end of its answer.  It prints
the callbacks' times (all, and after the idle connections were all made),
how many were not answered 200 within 10 s, the server's open descriptors
at the end, and the holder's counts.

--checkout PATH runs the mxrecv of another checkout instead (a git worktree
of an earlier commit, say), to compare before and after in one sitting.
Everything is on loopback, bounded in count and time, and stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).absolute().parent.parent
SMS = {"from": "447700900123", "to": "80000", "date": "2026-11-25 10:30:00", "type": "6",
       "message": "Hello"}


def startServer(base: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, int]:
    config = base / "mxrecv.toml"
    config.write_text(
        f'[server]\nlisten = ["tcp:0:interface=127.0.0.1:backlog={args.backlog}"]\n'
        'allow = ["127.0.0.1/32"]\nheader_timeout = 600.0\n'
        f'[spool]\ndir = "{base / "spool"}"\n'
    )
    code = (
        "import resource; hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({args.open_files}, hard)); "
        "from twisted.scripts.twistd import run; run()"
    )
    checkout = Path(args.checkout).absolute() if args.checkout else ROOT
    log = open(base / "twistd.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-c", code, "-n", "--pidfile=", "mxrecv", "--config", str(config)],
        env={**os.environ, "PYTHONPATH": str(checkout)},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=base,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(rb"CallbackSite starting on (\d+)", (base / "twistd.log").read_bytes())
        if match:
            return server, int(match.group(1))
        if server.poll() is not None:
            break
        time.sleep(0.1)
    server.kill()
    raise SystemExit("the server did not start:\n" + (base / "twistd.log").read_text())


def callback(port: int, n: int) -> tuple[float, int | None]:
    """
    One GET SMS callback on a new connection: seconds taken, status (None
    when there was no answer within 10 s).
    """
    query = urlencode({**SMS, "id": f"idle-bench-{n}"})
    request = f"GET /?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    began = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(request)
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        status = int(answer.split(b" ", 2)[1])
    except (OSError, IndexError, ValueError):
        status = None
    return time.monotonic() - began, status


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summary(name: str, probes: list[tuple[float, float, int | None]]) -> None:
    times = [t for _, t, _ in probes]
    if not times:
        print(f"{name}: no callbacks")
        return
    bad = sum(1 for _, t, s in probes if s != 200 or t > 10)
    print(
        f"{name}: {len(times)} callbacks, p50 {percentile(times, 50) * 1000:.1f} ms, "
        f"p99 {percentile(times, 99) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms, "
        f"over 1 s: {sum(1 for t in times if t > 1)}, not 200 in 10 s: {bad}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=5000, help="idle connections")
    p.add_argument("--seconds", type=float, default=20.0, help="how long callbacks are sent")
    p.add_argument("--open-files", type=int, default=1024, help="the server's soft limit")
    p.add_argument("--backlog", type=int, default=50, help="of the server's listening socket")
    p.add_argument("--checkout", help="run the mxrecv of this checkout")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="mxrecv-idle-") as tmp:
        base = Path(tmp)
        server, port = startServer(base, args)
        holder = None
        try:
            probes: list[tuple[float, float, int | None]] = []
            stop = threading.Event()
            began = time.monotonic()

            def probe() -> None:
                n = 0
                while not stop.is_set():
                    at = time.monotonic() - began
                    seconds, status = callback(port, n)
                    probes.append((at, seconds, status))
                    n += 1
                    stop.wait(0.2)

            prober = threading.Thread(target=probe)
            prober.start()
            holder = subprocess.Popen(
                [sys.executable, "-m", "mxrecv.testing.idle", "--port", str(port),
                 "--count", str(args.count), "--hold", str(args.seconds + 30)],
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            settled = json.loads(holder.stdout.readline())
            settledAt = time.monotonic() - began
            time.sleep(max(0.0, args.seconds - settledAt))
            stop.set()
            prober.join()
            holder.stdin.write("status\n")
            holder.stdin.flush()
            final = json.loads(holder.stdout.readline())
            files = len(os.listdir(f"/proc/{server.pid}/fd"))
        finally:
            if holder is not None:
                holder.stdin.close()
                holder.wait(timeout=30)
            server.terminate()
            server.wait(timeout=60)
        checkout = args.checkout or "this checkout"
        print(
            f"mxrecv of {checkout}, open files {args.open_files}, backlog {args.backlog}, "
            f"{args.count} idle connections from 127.0.0.2-254 (allow: 127.0.0.1/32)"
        )
        print(f"idle connections made in {settled['seconds']:.1f} s: {settled}")
        summary("all callbacks", probes)
        summary("after they were all made", [x for x in probes if x[0] > settledAt])
        print(f"at the end: server's open descriptors {files}; holder {final}")


if __name__ == "__main__":
    main()
