#!/usr/bin/env python3
"""
GET SMS callbacks/s and CPU per callback of mxrecv with C{[server] workers}
= 1 and = 2, and of the aiohttp and Starlette peers, in the same rounds (run
by hand; figures go in docs/benchmarks.md):

    python3 bench/bench_workers.py                        # 3 rounds of 10 s
    python3 bench/bench_workers.py --rounds 1 --seconds 2 # a check that it works

Unlike bench/run.py, nothing is pinned: the servers and the load tool
(wrk, one thread, 50 keep-alive connections) share all the machine's cores,
since a server of two worker processes needs two cores and so does the load
tool; say so when quoting the figures.  CPU per callback counts the whole
server (for mxrecv with workers, the parent and every worker: user and
system time from /proc), never wrk.  mxrecv runs as a user runs it (twistd,
a generated config, a spool on disk with fsync on, its log in a file); the
servers take turns within each round, each started once for all rounds
with a fresh spool, and each round checks that every callback answered 200
is in the spool.  The peers are single processes (as in bench/run.py).

Needs the bench venv and wrk (bench/run.py makes the venv and installs wrk:
python3 bench/run.py --quick --only none).  Listens on
127.0.0.1:18470-18473; every load lasts --seconds and stops by itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402  (bench/run.py: the venv, wrk, the servers)

PORT_BASE = 18470
NAMES = ("mxrecv", "mxrecv-w2", "aiohttp", "starlette")


@dataclasses.dataclass
class Server(bench.Server):
    """
    A server unpinned, and for mxrecv with C{workers} processes.
    """

    workers: int = 1

    def command(self) -> list:
        if self.name.startswith("mxrecv"):
            return [
                bench.VENV / "bin" / "twistd", "-n", "--pidfile=", "--logfile",
                self.workdir / "twistd.log", "mxrecv", "--config", self.writeConfig(),
            ]
        return super().command()

    def writeConfig(self) -> Path:
        config = super().writeConfig()
        text = config.read_text().replace("[server]\n", f"[server]\nworkers = {self.workers}\n", 1)
        config.write_text(text)
        return config

    def launch(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": f"{bench.REPO}:{bench.BENCH}"}
        self.log = open(self.workdir / "server.out", "wb")
        self.proc = subprocess.Popen(
            self.command(), env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        self.terminated = False

    def waitListening(self) -> None:
        super().waitListening()
        if self.workers > 1:
            # Listening is the parent's socket: wait for every worker.
            deadline = time.monotonic() + 30
            log = self.workdir / "twistd.log"
            while time.monotonic() < deadline:
                text = log.read_text(errors="replace") if log.exists() else ""
                if len(re.findall(r"Worker \d+ \(pid \d+\) ready", text)) >= self.workers:
                    return
                time.sleep(0.1)
            raise RuntimeError(f"{self.name}: its workers were not ready within 30 s")

    def processes(self) -> list[int]:
        """
        The server's process and its descendants (a parent's workers).
        """
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def treeCPU(self) -> dict[tuple[int, str], float]:
        """
        CPU seconds so far (user and system) of each process's main thread
        (its event loop) and of its other threads (mxrecv's thread pools).
        """
        tick = os.sysconf("SC_CLK_TCK")
        used: dict[tuple[int, str], float] = {}
        for pid in self.processes():
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                try:
                    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                except OSError:
                    continue
                fields = stat.rpartition(")")[2].split()
                key = (pid, "loop" if tid == str(pid) else "threads")
                used[key] = used.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / tick
        return used


def wrk(server: Server, seconds: int, runId: str) -> dict:
    """
    wrk on every core (not pinned), one thread (its ids are per thread), 50 keep-alive
    connections.
    """
    command = [
        "wrk", "-t1", "-c50", f"-d{seconds}s", "--timeout", "10s",
        "-s", bench.BENCH / "sms.lua", server.url, "--", runId,
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30).stdout
    match = re.search(r"WRKJSON (\{.*\})", out)
    if not match:
        raise RuntimeError(f"wrk gave no summary: {out[-500:]}")
    data = json.loads(match.group(1))
    errors = sum(
        data[k] for k in ("status_errors", "connect_errors", "read_errors", "write_errors", "timeouts")
    )
    acked = data["requests"] - data["status_errors"]
    return {
        "rate": acked / (data["duration_us"] / 1e6),
        "p50": data["p50_us"] / 1000,
        "p99": data["p99_us"] / 1000,
        "errors": errors,
        "acked": acked,
    }


def once(server: Server, seconds: int, runId: str) -> dict:
    stored = server.stored()
    before, wall = server.treeCPU(), time.monotonic()
    r = wrk(server, seconds, runId)
    after = server.treeCPU()
    elapsed = time.monotonic() - wall
    spent = {key: after[key] - before.get(key, 0.0) for key in after}
    used = sum(spent.values())
    acked = max(r["acked"], 1)
    r["cpu"] = used / elapsed
    r["cpums"] = 1000 * used / r["acked"] if r["acked"] else None
    parent = server.proc.pid
    r["loopms"] = 1000 * sum(v for (pid, kind), v in spent.items() if kind == "loop") / acked
    r["threadsms"] = 1000 * sum(v for (pid, kind), v in spent.items() if kind == "threads") / acked
    if server.workers > 1:
        r["parentms"] = 1000 * sum(v for (pid, _), v in spent.items() if pid == parent) / acked
    r["lost"] = max(0, r["acked"] - (server.stored() - stored))
    return r


def median(results: list[dict], key: str) -> str:
    values = [r[key] for r in results if r.get(key) is not None]
    if not values:
        return "-"
    mid = statistics.median(values)
    spread = f" ({min(values):.{_digits(key)}f}-{max(values):.{_digits(key)}f})" if len(values) > 1 else ""
    return f"{mid:.{_digits(key)}f}{spread}"


def _digits(key: str) -> int:
    return {
        "rate": 0, "cpu": 2, "cpums": 3, "loopms": 3, "threadsms": 3, "parentms": 3, "p50": 1, "p99": 1,
    }.get(key, 0)


def split(server: Server) -> str:
    """
    How many callbacks each worker answered (from the log), over all rounds.
    """
    counts: dict[str, int] = {}
    # twistd rotates its log file every MB: twistd.log, twistd.log.1, ...
    for log in server.workdir.glob("twistd.log*"):
        for worker in re.findall(r"worker=(\d+)\] get callback", log.read_text(errors="replace")):
            counts[worker] = counts.get(worker, 0) + 1
    return " / ".join(f"worker {k}: {v}" for k, v in sorted(counts.items()))


def report(
    args: argparse.Namespace, info: dict, cpu: tuple, results: dict[str, list[dict]], shares: str
) -> str:
    lines = [
        "# mxrecv with several worker processes: GET SMS",
        "",
        f"Command: `python3 bench/bench_workers.py --rounds {args.rounds} --seconds {args.seconds}`.",
        f"wrk -t1 -c50 (keep-alive), {args.seconds} s per round, {args.rounds} round(s), the servers "
        "taking turns; **nothing pinned: the servers and wrk share all "
        f"{os.cpu_count()} cores**. Median (range) over the rounds. CPU is the whole server "
        "(parent and workers), user + system; ms per callback = CPU / callbacks answered 200.",
        "",
        "| server | callbacks/s | CPU (cores) | CPU ms per callback | of which event loops "
        "| other threads | p50 ms | p99 ms | errors | lost |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in NAMES:
        rs = results.get(name, [])
        if not rs:
            continue
        lines.append(
            f"| {name} | {median(rs, 'rate')} | {median(rs, 'cpu')} | {median(rs, 'cpums')} | "
            f"{median(rs, 'loopms')} | {median(rs, 'threadsms')} | "
            f"{median(rs, 'p50')} | {median(rs, 'p99')} | {sum(r['errors'] for r in rs)} | "
            f"{sum(r['lost'] for r in rs)} |"
        )
    two, one = results.get("mxrecv-w2", []), results.get("mxrecv", [])
    if two and one:
        ratio = statistics.median(r["cpums"] for r in two) / statistics.median(r["cpums"] for r in one)
        lines += [
            "",
            f"CPU per callback, workers = 2 over workers = 1: x{ratio:.2f}; of which the parent "
            f"(logs passed on, heartbeats): {median(two, 'parentms')} ms per callback. "
            f"Callbacks answered, by worker: {shares}.",
        ]
    lines += ["", "Machine: " + "; ".join(f"{k}: {v}" for k, v in info.items()),
              f"CPU probe (share of a core a busy loop got, cores 0/1) before: {cpu[0]}, after: {cpu[1]}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--only", type=lambda s: s.split(","), default=list(NAMES),
                        help=f"some of {','.join(NAMES)}")
    parser.add_argument("--out", default="/var/tmp/mxrecv-bench-workers.md",
                        help="where the report is written too (outside docs/)")
    args = parser.parse_args()
    bench.ensureVenv()
    bench.ensureWrk()
    workdir = Path(tempfile.mkdtemp(prefix="mxrecv-workers.", dir="/var/tmp"))
    servers: dict[str, Server] = {}
    try:
        info = bench.machine(workdir)
        cpuBefore = bench.cpuProbe()
        for i, name in enumerate(n for n in NAMES if n in args.only):
            peer = name if not name.startswith("mxrecv") else "mxrecv"
            servers[name] = Server(
                peer, PORT_BASE + i, workdir / name, workers=2 if name == "mxrecv-w2" else 1
            )
        for server in servers.values():
            server.launch()
        for server in servers.values():
            server.waitListening()
        results: dict[str, list[dict]] = {}
        names = list(servers)
        for round in range(args.rounds):
            for name in names[round % len(names):] + names[: round % len(names)]:
                r = once(servers[name], args.seconds, f"w{round}{NAMES.index(name)}")
                results.setdefault(name, []).append(r)
                bench.say(f"round {round + 1} {name}: " + ", ".join(
                    f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
        shares = split(servers["mxrecv-w2"]) if "mxrecv-w2" in servers else ""
        text = report(args, info, (cpuBefore, bench.cpuProbe()), results, shares)
        Path(args.out).write_text(text + "\n")
        print(text)
    finally:
        for server in servers.values():
            server.terminate()
        for server in servers.values():
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
