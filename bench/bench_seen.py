#!/usr/bin/env python3
"""
The seen-id index at scale: start-up, memory and the prune under load.

For each size (remembered ids), makes a spool whose index holds that many
ids (built directly in SQLite by mxrecv.testing.seen: random twelve-digit
ids, accepted evenly over the last 7 days and 1 hour, so that the prune at
start-up has an hour of them to forget), starts mxrecv as a user runs it
(twistd, the spool on this disk, fsync on) and measures:

- first 200 after start: from exec until a GET callback is first answered
  200 (one probe at a time, every few milliseconds);
- then a steady, open-loop load of GET SMS callbacks (default 500/s, new ids,
  latency counted from each request's scheduled time, so that a stall is not
  hidden by requests not sent): the prune of the oldest hour, which mxrecv
  starts with the server (as it does every hour), runs under it; the slowest
  callback and the p99 of those scheduled during the prune, against the p99
  of those scheduled after it (for --outside seconds);
- RSS (VmRSS) at the end and the peak (VmHWM), and their growth over the
  same run with an empty index.

The server is pinned to core 0 and this process (the load) to core 1 where
taskset/affinity allow.  Everything is bounded: each size's run stops after
--max-seconds whatever happens.  The report is printed and written to --out
(outside docs/; default /var/tmp/mxrecv-bench-seen.md).

    PYTHONPATH=. .venv/bin/python bench/bench_seen.py --sizes 100k
    PYTHONPATH=. .venv/bin/python bench/bench_seen.py --sizes 1M,10M,20M

Needs mxrecv importable (from the checkout: PYTHONPATH=.) and disk room:
about 60 bytes per id for the index (1.2 GB at 20 M).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from mxrecv.spool.layout import SEEN_DB, SEEN_LOCK
from mxrecv.spool.seen import SeenIndex
from mxrecv.testing.seen import generateIndex

DAY = 86400.0
PROBE_INTERVAL = 0.005


def parseSize(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    number, unit = match.groups()
    return int(float(number) * {"": 1, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6}[unit])


def freePort() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """
    mxrecv under twistd, its log read by a thread that notes when each line
    arrived.
    """

    def __init__(self, base: Path, port: int) -> None:
        config = base / "mxrecv.toml"
        config.write_text(
            f'[server]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\nallow = ["127.0.0.0/8"]\n'
            f'[spool]\ndir = "{base / "spool"}"\nfsync = true\n'
        )
        command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                   "-n", "--pidfile=", "mxrecv", "--config", str(config)]
        if shutil.which("taskset"):
            command = ["taskset", "-c", "0", *command]
        self.lines: list[tuple[float, str]] = []
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line.decode(errors="replace").rstrip()))

    def when(self, pattern: str) -> float | None:
        for at, line in list(self.lines):
            if re.search(pattern, line):
                return at
        return None

    def memory(self) -> dict[str, float]:
        """
        VmRSS and VmHWM of the server, in MiB.
        """
        pid = self.pid()
        found = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) / 1024
        return found

    def pid(self) -> int:
        # Under taskset the twistd process is the same process (exec).
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def request(messageId: str) -> bytes:
    return (
        f"GET /?id={messageId}&from=447700900123&to=80000&date=2026-11-25+10:30:00"
        f"&type=6&message=bench HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    ).encode()


async def exchange(reader, writer, messageId: str) -> int:
    writer.write(request(messageId))
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def firstOk(port: int, deadline: float, prefix: str) -> float | None:
    """
    Probe until a callback is answered 200; the time it was, or None.
    """
    n = 0
    while time.monotonic() < deadline:
        n += 1
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(PROBE_INTERVAL)
            continue
        try:
            status = await asyncio.wait_for(exchange(reader, writer, f"{prefix}-probe-{n}"), 30)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            status = 0
        finally:
            writer.close()
        if status == 200:
            return time.monotonic()
        await asyncio.sleep(PROBE_INTERVAL)
    return None


async def steadyLoad(
    port: int, rate: float, prefix: str, stopWhen, deadline: float, connections: int
) -> list[tuple[float, float, int]]:
    """
    Open loop: a request is due every 1/rate s; free connections take the
    due ones in order.  Returns (scheduled, latency, status) per request.
    """
    due: asyncio.Queue[tuple[float, int]] = asyncio.Queue()
    results: list[tuple[float, float, int]] = []
    stopping = asyncio.Event()

    async def schedule() -> None:
        start = time.monotonic()
        n = 0
        while not stopping.is_set():
            now = time.monotonic()
            if now >= deadline or stopWhen(now):
                stopping.set()
                break
            while start + n / rate <= now:
                due.put_nowait((start + n / rate, n))
                n += 1
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not (stopping.is_set() and due.empty()):
                try:
                    scheduled, n = await asyncio.wait_for(due.get(), 0.1)
                except asyncio.TimeoutError:
                    continue
                try:
                    status = await asyncio.wait_for(exchange(reader, writer, f"{prefix}-{n}"), 60)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                    status = 0
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                results.append((scheduled, time.monotonic() - scheduled, status))
        finally:
            writer.close()

    await asyncio.gather(schedule(), *(connection() for _ in range(connections)))
    return results


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def runSize(root: Path, count: int, args) -> dict:
    base = root / f"ids-{count}"
    (base / "spool" / "state").mkdir(parents=True)
    now = time.time()
    began = time.monotonic()
    generateIndex(
        base / "spool" / "state" / "seen.sqlite", count,
        oldest=now - 7 * DAY - 3600, newest=now,
    )
    built = time.monotonic() - began
    # What start-up does with the index, timed on its own.
    state = base / "spool" / "state"
    began = time.monotonic()
    index = SeenIndex(state / SEEN_DB, state / SEEN_LOCK)
    index.open()
    index.staged()
    index.close()
    opened = time.monotonic() - began
    size = sum(p.stat().st_size for p in (base / "spool" / "state").iterdir()) / 2**20
    # Drop the index from the page cache's favour: a restarted server
    # finds it on disk, not freshly written.
    subprocess.run(["sync"], check=False)
    port = freePort()
    server = Server(base, port)
    result: dict = {"ids": count, "built": built, "indexMiB": size, "open": opened}
    try:
        deadline = server.started + args.max_seconds
        ok = asyncio.run(firstOk(port, deadline, f"s{count}"))
        result["first200"] = None if ok is None else ok - server.started
        if ok is None:
            return result
        outside = args.outside

        def stopWhen(at: float) -> bool:
            ended = server.when(r"Forgot \d+ ids older")
            return ended is not None and at >= ended + outside

        samples = asyncio.run(
            steadyLoad(port, args.rate, f"s{count}", stopWhen, deadline, args.connections)
        )
        result.update(server.memory())
        pruneStart = server.when(r"Forgetting ids older")
        pruneEnd = server.when(r"Forgot \d+ ids older")
        match = [line for _, line in server.lines if re.search(r"Forgot \d+ ids older", line)]
        result["forgotten"] = (
            int(re.search(r"Forgot (\d+) ids", match[0]).group(1)) if match else None
        )
        result["pruneSeconds"] = (
            None if pruneStart is None or pruneEnd is None else pruneEnd - pruneStart
        )
        during = [s for s in samples if pruneEnd is not None and s[0] <= pruneEnd]
        after = [s for s in samples if pruneEnd is not None and s[0] > pruneEnd + 1.0]
        if pruneEnd is None:
            during = samples
        result["sent"] = len(samples)
        result["wrong"] = sum(1 for s in samples if s[2] != 200)
        result["duringCount"] = len(during)
        result["duringMax"] = max((s[1] for s in during), default=None)
        result["duringP99"] = percentile([s[1] for s in during], 99)
        result["outsideP99"] = percentile([s[1] for s in after], 99)
        result["outsideMax"] = max((s[1] for s in after), default=None)
        result["outsideCount"] = len(after)
        result["achieved"] = len(samples) / max(1e-9, (samples[-1][0] - samples[0][0])) if samples else 0
        return result
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def fmt(value, spec: str = "{:.2f}", none: str = "-") -> str:
    return none if value is None else spec.format(value)


def report(results: list[dict], args, took: float) -> str:
    empty = next((r for r in results if r["ids"] == 0), None)
    lines = [
        "# The seen-id index at scale (bench/bench_seen.py)",
        "",
        f"`{' '.join(sys.argv)}`: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{took:.0f} s, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"load average {os.getloadavg()[0]:.1f} at the end. Steady load {args.rate:.0f} "
        f"GET callbacks/s on {args.connections} keep-alive connections, open loop "
        f"(latency from each request's scheduled time).",
        "",
        "| ids | index on disk | index open | first 200 after exec | RSS end / peak (MiB) | RSS growth over empty, end / peak | prune: ids, s | during prune: slowest, p99 (ms) | after prune: p99, slowest (ms) | p99 during / after | wrong answers |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        growth = "-"
        if empty is not None and r is not empty and "VmRSS" in r and "VmRSS" in empty:
            growth = f"{r['VmRSS'] - empty['VmRSS']:+.1f} / {r['VmHWM'] - empty['VmHWM']:+.1f}"
        ratio = None
        if r.get("duringP99") and r.get("outsideP99"):
            ratio = r["duringP99"] / r["outsideP99"]
        ms = {k: None if r.get(k) is None else r[k] * 1000
              for k in ("duringMax", "duringP99", "outsideP99", "outsideMax")}
        lines.append(
            f"| {r['ids']:,} | {fmt(r.get('indexMiB'), '{:.0f} MiB')} "
            f"| {fmt(r.get('open') * 1000, '{:.1f} ms')} "
            f"| {fmt(r.get('first200'), '{:.2f} s')} "
            f"| {fmt(r.get('VmRSS'), '{:.1f}')} / {fmt(r.get('VmHWM'), '{:.1f}')} | {growth} "
            f"| {fmt(r.get('forgotten'), '{:,}')}, {fmt(r.get('pruneSeconds'), '{:.1f}')} "
            f"| {fmt(ms['duringMax'], '{:.0f}')}, {fmt(ms['duringP99'], '{:.1f}')} "
            f"| {fmt(ms['outsideP99'], '{:.1f}')}, {fmt(ms['outsideMax'], '{:.0f}')} "
            f"| {fmt(ratio, 'x{:.2f}')} | {r.get('wrong', '-')} |"
        )
    lines += [
        "",
        "Index open: SeenIndex.open() and the read of its staged rows (what start-up does "
        "with the index), timed in the benchmark's process before the server starts. "
        "First 200 after exec includes starting Python and twistd.",
        "",
        "Targets: RSS growth over an empty index under 64 MiB; first 200 after start "
        "under 2 s; during the prune no callback slower than 1 s and the p99 within 2x of the "
        "p99 outside it.",
        "",
        "Per size: " + "; ".join(
            f"{r['ids']:,}: index built in {r['built']:.1f} s, {r.get('sent', 0)} callbacks "
            f"({r.get('duringCount', 0)} during the prune, {r.get('outsideCount', 0)} after), "
            f"{fmt(r.get('achieved'), '{:.0f}')}/s achieved"
            for r in results
        ) + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,10M,20M",
                        help="remembered ids, comma-separated (k, M suffixes); an empty index is always run first")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--outside", type=float, default=20.0,
                        help="seconds of load after the prune ends")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="bound on each size's run, start included")
    parser.add_argument("--dir", default=None, help="where to make the spools (default: under /var/tmp)")
    parser.add_argument("--out", default="/var/tmp/mxrecv-bench-seen.md")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    sizes = [0] + [parseSize(s) for s in args.sizes.split(",") if s.strip()]
    try:
        os.sched_setaffinity(0, {1})
    except (AttributeError, OSError):
        pass
    root = Path(tempfile.mkdtemp(prefix="mxrecv-bench-seen.", dir=args.dir or "/var/tmp"))
    began = time.monotonic()
    results = []
    try:
        for count in sizes:
            result = runSize(root, count, args)
            print(f"{count:,} ids: {result}", file=sys.stderr)
            results.append(result)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    text = report(results, args, time.monotonic() - began)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
