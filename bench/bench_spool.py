#!/usr/bin/env python3
"""
GET SMS callbacks per second, with and without durability.

Starts mxrecv as a user would (twistd with a generated configuration, spool
on this disk), once with `[spool] fsync = true` and once with `false`,
interleaved, and drives each with wrk (50 keep-alive connections, unique ids
so that every request is stored).  The server and wrk are pinned to different
cores.  Each run is bounded in time; the figures are medians of the runs,
with their range, beside a disk baseline measured in the same run.

    python3 bench/bench_spool.py [--runs 3] [--seconds 10] [--connections 50]

Needs wrk (Debian package "wrk") and mxrecv importable (installed, or run
from the checkout: PYTHONPATH=.).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LUA = """
counter = 0
prefix = os.getenv("MXRECV_BENCH_PREFIX") or "b"
request = function()
  counter = counter + 1
  return wrk.format("GET", "/?id=" .. prefix .. "-" .. counter ..
    "&from=447700900123&to=80000&date=2026-11-25+10:30:00&type=6&message=benchmark")
end
"""


def diskBaseline(directory: Path, seconds: float = 2.0) -> float:
    """
    Serial small write + fsync + rename + directory fsync per second: what a
    receiver that fsyncs each message alone could reach at best.
    """
    count = 0
    end = time.monotonic() + seconds
    dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while time.monotonic() < end:
            path = directory / f"t{count}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            os.write(fd, b"x" * 400)
            os.fsync(fd)
            os.close(fd)
            os.rename(path, directory / f"d{count}")
            os.fsync(dirfd)
            count += 1
    finally:
        os.close(dirfd)
    return count / seconds


def startServer(base: Path, fsync: bool) -> tuple[subprocess.Popen, int]:
    config = base / "mxrecv.toml"
    config.write_text(
        '[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\nallow = ["127.0.0.0/8"]\n'
        f'[spool]\ndir = "{base / "spool"}"\nfsync = {"true" if fsync else "false"}\n'
    )
    command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
               "-n", "--pidfile=", "mxrecv", "--config", str(config)]
    if shutil.which("taskset"):
        command = ["taskset", "-c", "0", *command]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    output = b""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output += line
        match = re.search(rb"CallbackSite starting on (\d+)", line)
        if match:
            # Keep draining the log so that the server never blocks on it.
            subprocess.Popen(["cat"], stdin=process.stdout, stdout=subprocess.DEVNULL)
            return process, int(match.group(1))
    process.kill()
    raise SystemExit(f"mxrecv did not start:\n{output.decode(errors='replace')}")


def cpuSeconds(pid: int) -> float:
    """
    User + system CPU time of a process so far: the cost per callback, which
    other load on the machine does not change as much as the rate.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parseDuration(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1000.0}[unit]


def runWrk(port: int, seconds: int, connections: int, prefix: str, script: Path) -> dict:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
               "-s", str(script), f"http://127.0.0.1:{port}/"]
    if shutil.which("taskset"):
        command = ["taskset", "-c", "1", *command]
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 30,
        env={**os.environ, "MXRECV_BENCH_PREFIX": prefix},
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rate": rate,
        "total": total,
        "non2xx": int(bad.group(1)) if bad else 0,
        "socketErrors": errors.group(1) if errors else "",
        "p50": parseDuration(re.search(r"50%\s+(\S+)", out).group(1)),
        "p99": parseDuration(re.search(r"99%\s+(\S+)", out).group(1)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--dir", default=None, help="where to put the spools (default: a temporary directory under var/)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")

    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-spool.", dir=Path("var").absolute() if Path("var").is_dir() else None))
    root.mkdir(parents=True, exist_ok=True)
    script = root / "ids.lua"
    script.write_text(LUA)
    baselineDir = root / "baseline"
    baselineDir.mkdir()
    baseline = diskBaseline(baselineDir)
    shutil.rmtree(baselineDir)

    results: dict[bool, list[dict]] = {True: [], False: []}
    for run in range(args.runs):
        for fsync in (True, False):
            base = root / f"run{run}-{'fsync' if fsync else 'nofsync'}"
            base.mkdir()
            process, port = startServer(base, fsync)
            try:
                before = cpuSeconds(process.pid)
                result = runWrk(port, args.seconds, args.connections, f"r{run}", script)
                result["cpuMs"] = (cpuSeconds(process.pid) - before) * 1000 / max(1, result["total"])
            finally:
                process.terminate()
                process.wait(timeout=30)
            stored = sum(1 for _ in (base / "spool" / "new").iterdir())
            result["stored"] = stored
            results[fsync].append(result)
            print(f"run {run} fsync={fsync}: {result}", file=sys.stderr)
            shutil.rmtree(base)

    def summary(values: list[float], fmt: str) -> str:
        return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"

    print(f"\nDisk baseline: {baseline:.0f} serial write+fsync+rename+dir-fsync per second\n")
    print("| spool.fsync | callbacks/s | p50 ms | p99 ms | server CPU ms/callback | non-2xx | every 200 in new/ |")
    print("|---|---|---|---|---|---|---|")
    for fsync in (True, False):
        rs = results[fsync]
        # wrk stops with requests in flight that the server may still store.
        consistent = all(r["stored"] >= r["total"] - r["non2xx"] for r in rs)
        print(
            f"| {str(fsync).lower()} | {summary([r['rate'] for r in rs], '{:.0f}')} "
            f"| {summary([r['p50'] for r in rs], '{:.1f}')} | {summary([r['p99'] for r in rs], '{:.1f}')} "
            f"| {summary([r['cpuMs'] for r in rs], '{:.2f}')} "
            f"| {sum(r['non2xx'] for r in rs)} | {'yes' if consistent else 'NO'} |"
        )
    print(f"\n{args.runs} runs of {args.seconds} s, {args.connections} keep-alive connections, "
          f"wrk -t1; median (min-max). {os.cpu_count()} cores, Python {sys.version.split()[0]}.")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
