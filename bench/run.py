#!/usr/bin/env python3
"""
Benchmarks mxrecv against two peer receivers doing the same job (aiohttp,
Starlette under uvicorn), side by side in one run, and writes the results as
markdown (/var/tmp/mxrecv-bench-run.md by default: outside docs/, which holds
the current figures only, in docs/benchmarks.md).

    python3 bench/run.py --quick            # under 2 minutes
    python3 bench/run.py                    # longer runs
    python3 bench/run.py --only S1 --profile

Everything runs on loopback, bounded in time.  The runner makes its own venv
(/tmp/venv-bench, from bench/requirements.txt) and installs wrk with apt-get
if it is missing.  mxrecv runs as a user runs it: twistd with a generated
config and a spool on disk, from this work tree (PYTHONPATH).  Each server is
pinned to core 0 and the load tool to core 1 (taskset); the servers take
turns within each of 3 rounds per scenario, each with a fresh spool; the
figures are the median and range of the 3.  A disk baseline and a CPU probe
are measured in the same run, because a shared machine's disk and CPU can
vary a lot from one hour to the next: compare ratios within a run, not across runs.

Scenarios (those needing a feature mxrecv lacks are skipped with a note):
  S1   GET SMS, 50 keep-alive connections: callbacks/s, p50/p99 time to ack
  S2   the same, a new connection per request
  S3   POSTs carrying a 1 MiB zip, 16 at a time: callbacks/s and MiB/s
  S4   one POST carrying a 200 MiB zip: MiB/s, server's peak RSS growth
  S5   32 concurrent POSTs of 16 MiB: server's peak RSS growth
  S6   1,000 GET-mode MMS drained through the RetrieveMMS stand-in (mxrecv only)
  S1-TLS, S3-TLS: S1 and S3 over HTTPS
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
VENV = Path(os.environ.get("MXRECV_BENCH_VENV", "/tmp/venv-bench"))
PY = VENV / "bin" / "python"
SERVER_CORE = "0"
LOAD_CORE = "1"
PORT_BASE = 18400
MiB = 1024 * 1024
SERVERS = ("mxrecv", "aiohttp", "starlette")
ALL = ("S1", "S2", "S3", "S4", "S5", "S6", "S1-TLS", "S3-TLS")


_T0 = time.monotonic()


def say(*args) -> None:
    print(f"bench: [{time.monotonic() - _T0:5.1f}s]", *args, file=sys.stderr, flush=True)


# Set-up


def mxrecvRequirements() -> list[str]:
    """
    mxrecv's own dependencies, from setup.cfg: the one list of them.
    """
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    return setup["options"]["install_requires"].split()


def ensureVenv() -> None:
    if not PY.exists():
        say(f"creating {VENV}")
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    # Quick when all is there already; picks up what mxrecv has come to need.
    subprocess.run(
        [PY, "-m", "pip", "install", "-q", "-r", BENCH / "requirements.txt", *mxrecvRequirements()],
        check=True,
    )


def ensureWrk() -> str:
    wrk = shutil.which("wrk")
    if wrk:
        return wrk
    say("installing wrk with apt-get")
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
        subprocess.run(install, check=True, capture_output=True)
    return shutil.which("wrk") or "wrk"


def machine(workdir: Path) -> dict[str, str]:
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return "?"

    model = re.search(r"Model name:\s*(.*)", run("lscpu"))
    versions = run(
        str(PY),
        "-c",
        "import importlib.metadata as m, sys; print(sys.version.split()[0], *("
        "f'{p} {m.version(p)}' for p in ('twisted','aiohttp','starlette','uvicorn','uvloop',"
        "'httptools','treq','multipart')), sep=', ')",
    )
    wrk = run("wrk", "-v").splitlines()
    return {
        "cpu": f"{model.group(1) if model else '?'}, {os.cpu_count()} cores",
        "kernel": platform.release(),
        "memory": run("sh", "-c", "free -m | awk '/Mem:/ {print $2\" MiB\"}'"),
        "filesystem": f"{run('stat', '-f', '-c', '%T', str(workdir))} ({workdir})",
        "python and packages": versions,
        "wrk": wrk[0] if wrk else "?",
        "commit": run("git", "-C", str(REPO), "describe", "--always", "--dirty"),
        "load": run("cat", "/proc/loadavg"),
    }


# Baselines


DISK_PROBE = r"""
import os, sys, time, json
d = sys.argv[1]; seconds = float(sys.argv[2]); size = int(sys.argv[3])
os.makedirs(d + "/a"); os.makedirs(d + "/b")
def fsync(p):
    fd = os.open(p, os.O_RDONLY); os.fsync(fd); os.close(fd)
n = 0; start = time.perf_counter()
while time.perf_counter() - start < seconds and n < 20000:
    p = f"{d}/a/{n}"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL); os.write(fd, b"x" * 400)
    os.fsync(fd); os.close(fd); os.rename(p, f"{d}/b/{n}"); fsync(d + "/b"); n += 1
small = n / (time.perf_counter() - start)
block = os.urandom(1 << 20); start = time.perf_counter()
fd = os.open(d + "/seq", os.O_WRONLY | os.O_CREAT)
for _ in range(size): os.write(fd, block)
os.fsync(fd); os.close(fd)
seq = size / (time.perf_counter() - start)
print(json.dumps({"small_per_s": small, "seq_mib_s": seq}))
"""

CPU_PROBE = r"""
import time
start = time.perf_counter(); cpu = time.process_time(); n = 0
while time.perf_counter() - start < 0.5: n += 1
print((time.process_time() - cpu) / (time.perf_counter() - start))
"""


def diskBaseline(workdir: Path, quick: bool) -> dict[str, float]:
    d = Path(tempfile.mkdtemp(dir=workdir, prefix="disk."))
    try:
        out = subprocess.run(
            ["taskset", "-c", SERVER_CORE, PY, "-c", DISK_PROBE, d / "x", "1.5", "64" if quick else "256"],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout
        return json.loads(out)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def cpuProbe() -> dict[str, float]:
    """
    The share of each core a busy loop gets for half a second: 1.0 is a whole
    core; less means other work on the machine took the rest.
    """
    result = {}
    for core in (SERVER_CORE, LOAD_CORE):
        out = subprocess.run(
            ["taskset", "-c", core, PY, "-c", CPU_PROBE], capture_output=True, text=True, timeout=30
        ).stdout
        result[core] = float(out.strip() or "nan")
    return result


# Servers


@dataclass
class Server:
    name: str
    port: int
    workdir: Path
    tls: tuple[Path, Path] | None = None
    retrieveURL: str | None = None
    proc: subprocess.Popen | None = None
    terminated = False

    @property
    def spool(self) -> Path:
        return self.workdir / "spool"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/"

    def command(self) -> list:
        if self.name.startswith("mxrecv+"):
            return [
                PY, BENCH / "variants.py", self.name.partition("+")[2], "-n", "--pidfile=",
                "--logfile", self.workdir / "twistd.log", "mxrecv", "--config", self.writeConfig(),
            ]
        if self.name == "mxrecv":
            return [
                VENV / "bin" / "twistd", "-n", "--pidfile=", "--logfile", self.workdir / "twistd.log",
                "mxrecv", "--config", self.writeConfig(),
            ]
        script = BENCH / f"peer_{self.name}.py"
        command = [PY, script, "--port", str(self.port), "--spool", self.spool]
        if self.tls:
            command += ["--cert", self.tls[0], "--key", self.tls[1]]
        return command

    def writeConfig(self) -> Path:
        if self.tls:
            listen = (
                f"ssl:{self.port}:interface=127.0.0.1:privateKey={self.tls[1]}:certKey={self.tls[0]}"
            )
        else:
            listen = f"tcp:{self.port}:interface=127.0.0.1"
        config = self.workdir / "mxrecv.toml"
        retrieve = ""
        if self.retrieveURL:
            retrieve = (
                f'\n[retrieve]\nurl = "{self.retrieveURL}"\nuser = "sim"\n'
                f'password = "sim-password"\nbackoff_initial = 1.0\n'
            )
        config.write_text(
            f'[server]\nlisten = ["{listen}"]\nallow = ["127.0.0.0/8"]\n'
            f"max_body = {300 * MiB}\n"
            f'[spool]\ndir = "{self.spool}"\n{retrieve}'
        )
        return config

    def start(self) -> None:
        self.launch()
        self.waitListening()

    def launch(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": f"{REPO}:{BENCH}"}
        self.log = open(self.workdir / "server.out", "wb")
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *self.command()],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.workdir,
        )
        self.terminated = False

    def waitListening(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen on {self.port} within 20 s")

    def tail(self) -> str:
        self.log.flush()
        return (self.workdir / "server.out").read_text(errors="replace")[-1500:]

    def terminate(self) -> None:
        """
        Ask the server to stop, without waiting (L{stop} waits): servers
        asked together stop together.
        """
        if self.proc is not None and self.proc.poll() is None and not self.terminated:
            self.proc.send_signal(signal.SIGTERM)
            self.terminated = True

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc and self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    # Memory

    def resetPeak(self) -> int:
        """
        Reset the kernel's peak-RSS mark and return the current RSS (bytes).
        """
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")
        return self._status("VmRSS")

    def peak(self) -> int:
        return self._status("VmHWM")

    def _status(self, key: str) -> int:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(rf"{key}:\s*(\d+) kB", text).group(1)) * 1024

    def cpuSeconds(self) -> float:
        """
        CPU time (user + system, all threads) the server has used so far.
        """
        return sum(self.threadCPU().values())

    def threadCPU(self) -> dict[str, float]:
        """
        CPU seconds so far, user and system, of the main (event loop) thread
        and of all other threads (the I/O workers).
        """
        tick = os.sysconf("SC_CLK_TCK")
        pid = self.proc.pid
        split = dict.fromkeys(("loop user", "loop sys", "workers user", "workers sys"), 0.0)
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            who = "loop" if tid == str(pid) else "workers"
            split[f"{who} user"] += int(fields[11]) / tick
            split[f"{who} sys"] += int(fields[12]) / tick
        return split

    def stored(self) -> int:
        """
        How many messages the spool holds.  C{pending/} is listed first: a
        message moves on from there to C{new/} or C{failed/}, so listing in
        that order never misses one that moves meanwhile (the set counts it
        once).
        """
        names: set[str] = set()
        for which in ("pending", "new", "failed"):
            if (self.spool / which).is_dir():
                names.update(entry.name for entry in (self.spool / which).iterdir())
        return len(names)


# Load


def wrk(server: Server, seconds: float, runId: str, close: bool) -> dict:
    command = [
        "taskset", "-c", LOAD_CORE, "wrk", "-t1", "-c50", f"-d{int(seconds)}s", "--timeout", "10s",
        "-s", BENCH / "sms.lua", server.url, "--", runId,
    ]
    if close:
        command.append("close")
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30).stdout
    match = re.search(r"WRKJSON (\{.*\})", out)
    if not match:
        raise RuntimeError(f"wrk gave no summary: {out[-500:]}")
    data = json.loads(match.group(1))
    seconds = data["duration_us"] / 1e6
    errors = sum(data[k] for k in ("status_errors", "connect_errors", "read_errors", "write_errors", "timeouts"))
    return {
        "rate": (data["requests"] - data["status_errors"]) / seconds,
        "p50": data["p50_us"] / 1000,
        "p99": data["p99_us"] / 1000,
        "errors": errors,
        "acked": data["requests"] - data["status_errors"],
    }


SIM_LINE = re.compile(r"mxrecv-sim: sent=(\d+) ok=(\d+) wrong=(\d+) seconds=([\d.]+) rate=([\d.]+)/s"
                      r"(?: MiB/s=([\d.]+))? p50=([\d.-]+)m?s? p99=([\d.-]+)m?s?")


def sim(server: Server, args: list[str], timeout: float, caFile: Path | None = None) -> dict:
    command = [
        "taskset", "-c", LOAD_CORE, PY, "-c", "from mxrecv.testing.sim import main; main()",
        "--url", server.url, *args,
    ]
    if caFile:
        command += ["--ca-file", caFile]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    match = SIM_LINE.search(done.stdout)
    if not match:
        raise RuntimeError(f"mxrecv-sim failed: {done.stdout[-800:]} {done.stderr[-800:]}")
    sent, ok, wrong = (int(match.group(i)) for i in (1, 2, 3))
    seconds = float(match.group(4))
    result = {
        "rate": ok / seconds if seconds else 0.0,
        "mibs": float(match.group(6) or 0) * ok / max(sent, 1),
        "p50": _float(match.group(7)),
        "p99": _float(match.group(8)),
        "errors": wrong,
        "acked": ok,
        "firstProblem": next((l for l in done.stdout.splitlines() if ": HTTP " in l or "Error" in l), ""),
    }
    drained = re.search(r"retrieved=(\d+)/(\d+)(?: drained=([\d.]+)s)?", done.stdout)
    if drained:
        result["retrieved"] = int(drained.group(1))
        result["drained"] = float(drained.group(3)) if drained.group(3) else None
    return result


def _float(text: str) -> float | None:
    return None if text in ("-", "") else float(text)


# Scenarios


@dataclass
class Scenario:
    name: str
    title: str
    servers: tuple[str, ...] = SERVERS
    needs: tuple[str, ...] = ()
    tls: bool = False
    metrics: tuple[str, ...] = ("rate", "p50", "p99")
    results: dict[str, list[dict]] = field(default_factory=dict)
    note: str = ""


def scenarios(quick: bool) -> list[Scenario]:
    return [
        Scenario("S1", "GET SMS, 50 keep-alive connections", metrics=("rate", "p50", "p99", "cpu", "cpums")),
        Scenario("S2", "GET SMS, a new connection per request", metrics=("rate", "p50", "p99", "cpu", "cpums")),
        Scenario("S3", "POST MMS with a 1 MiB zip, 16 at a time", needs=("post",),
                 metrics=("rate", "mibs", "p99", "cpu")),
        Scenario("S4", "one POST with a 200 MiB zip", needs=("post",), metrics=("mibs", "rss")),
        Scenario("S5", "32 concurrent POSTs of 16 MiB", needs=("post",), metrics=("mibs", "rss")),
        Scenario("S6", f"{200 if quick else 1000} GET-mode MMS drained through RetrieveMMS",
                 servers=("mxrecv",), needs=("retrieve",), metrics=("drained", "rss")),
        Scenario("S1-TLS", "S1 over HTTPS", needs=("tls",), tls=True,
                 metrics=("rate", "p50", "p99", "cpu", "cpums")),
        Scenario("S3-TLS", "S3 over HTTPS", needs=("post", "tls"), tls=True,
                 metrics=("rate", "mibs", "p99", "cpu")),
    ]


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.quick = args.quick
        self.workdir = workdir
        self.seconds = 2 if args.quick else 10
        self.cert = self.makeCert()
        self.counter = 0
        self.variants = [f"mxrecv+{v}" for v in args.variants]
        self.names = list(SERVERS) + self.variants
        self.removing: threading.Thread | None = None

    def removeLater(self, paths: list[Path]) -> None:
        """
        Remove a finished scenario's work directories (tens of thousands of
        message directories after S1) while the next scenario's servers
        start; L{removed} waits for it before any load.
        """
        self.removed()
        self.removing = threading.Thread(
            target=lambda: [shutil.rmtree(p, ignore_errors=True) for p in paths], daemon=True
        )
        self.removing.start()

    def removed(self) -> None:
        if self.removing is not None:
            self.removing.join()
            self.removing = None

    def makeCert(self) -> tuple[Path, Path]:
        cert, key = self.workdir / "cert.pem", self.workdir / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
             "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True,
        )
        return cert, key

    def server(self, name: str, tls: bool = False, retrieve: bool = False) -> Server:
        self.counter += 1
        return Server(
            name,
            PORT_BASE + 10 + self.names.index(name),
            self.workdir / f"{self.counter:03d}-{name}",
            tls=self.cert if tls else None,
            retrieveURL=f"http://127.0.0.1:{PORT_BASE + 20}/RetrieveMMS" if retrieve else None,
        )

    # Which of mxrecv's features are there (probed, not assumed)

    def probe(self, needed: set[str]) -> dict[str, str | None]:
        """
        Each needed feature -> None if mxrecv has it, else why it is skipped.
        """
        found: dict[str, str | None] = {}
        if needed & {"post", "retrieve"}:
            s = self.server("mxrecv", retrieve=True)
            s.start()
            try:
                if "post" in needed:
                    r = sim(s, ["--mode", "post", "--type", "mms", "-n", "2", "--zip-size", "5000"], 60)
                    found["post"] = None if r["errors"] == 0 else (
                        "multipart POST not available in mxrecv "
                        f"({r['firstProblem'].split(': ', 2)[-1][:60]})"
                    )
                if "retrieve" in needed:
                    r = sim(s, ["--type", "mms", "-n", "3", "--linger", "3",
                                "--retrieve-listen", f"tcp:{PORT_BASE + 20}:interface=127.0.0.1"], 60)
                    found["retrieve"] = None if r.get("retrieved") == 3 else (
                        "RetrieveMMS downloads not available in mxrecv "
                        f"(retrieved {r.get('retrieved')}/3 in 3 s)"
                    )
            finally:
                s.stop()
        if "tls" in needed:
            s = self.server("mxrecv", tls=True)
            try:
                s.start()
                r = sim(s, ["-n", "2"], 60, caFile=self.cert[0])
                found["tls"] = None if r["errors"] == 0 else f"HTTPS answers wrong: {r['firstProblem']}"
            except RuntimeError as e:
                found["tls"] = f"mxrecv does not start with an ssl: endpoint ({str(e)[-120:]})"
            finally:
                s.stop()
        return found

    # Running one scenario on one server

    def once(self, scenario: Scenario, s: Server, round: int) -> dict:
        """
        One round of C{scenario} against the running server C{s}.
        """
        name = s.name
        storedBefore = s.stored()
        base = s.resetPeak()
        split, wall = s.threadCPU(), time.monotonic()
        runId = f"r{round}{name[0]}{self.counter}"
        ca = self.cert[0] if scenario.tls else None
        kind = scenario.name.split("-")[0]
        # Quick mode: S1 gets the longest rounds (it carries the main target).
        n = self.seconds if not self.quick or kind == "S1" else self.seconds / 2
        if kind in ("S1", "S2"):
            r = wrk(s, max(1, int(n)), runId, close=kind == "S2")
        elif kind == "S3":
            r = sim(s, ["--mode", "post", "--type", "mms", "-c", "16", "-n", "20000",
                        "--zip-size", str(MiB), "--duration", f"{n:g}", "--run-id", runId], n + 90, ca)
        elif kind == "S4":
            r = sim(s, ["--mode", "post", "--type", "mms", "-c", "1", "-n", "1",
                        "--zip-size", str(200 * MiB), "--run-id", runId], 300, ca)
        elif kind == "S5":
            r = sim(s, ["--mode", "post", "--type", "mms", "-c", "32", "-n", "32",
                        "--zip-size", str(16 * MiB), "--run-id", runId], 300, ca)
        elif kind == "S6":
            count = 200 if self.quick else 1000
            r = sim(s, ["--type", "mms", "-c", "16", "-n", str(count), "--zip-size", str(100 * 1024),
                        "--linger", "120", "--run-id", runId,
                        "--retrieve-listen", f"tcp:{PORT_BASE + 20}:interface=127.0.0.1"], 300)
        else:
            raise ValueError(kind)
        r["rss"] = (s.peak() - base) / MiB
        after = s.threadCPU()
        used = sum(after.values()) - sum(split.values())
        r["cpu"] = used / (time.monotonic() - wall)
        r["cpums"] = 1000 * used / r["acked"] if r["acked"] else None
        if r["acked"]:
            r["split"] = {k: 1000 * (after[k] - split[k]) / r["acked"] for k in split}
        r["stored"] = s.stored() - storedBefore
        if r["stored"] < r["acked"]:
            r["errors"] += r["acked"] - r["stored"]
            r["lost"] = r["acked"] - r["stored"]
        return r

    def run(self, scenario: Scenario, features: dict[str, str | None]) -> None:
        """
        Three rounds of C{scenario}, the servers taking turns (each its own
        process and spool, started once for the three rounds).
        """
        missing = [features[f] for f in scenario.needs if features.get(f)]
        if missing:
            scenario.note = "; ".join(missing)
            say(f"{scenario.name}: skipped: {scenario.note}")
            return
        if scenario.name in ("S1", "S2", "S3"):
            scenario.servers = tuple(scenario.servers) + tuple(self.variants)
        servers = {
            name: self.server(name, tls=scenario.tls, retrieve=scenario.name == "S6")
            for name in scenario.servers
        }
        try:
            for server in servers.values():
                server.launch()
            for server in servers.values():
                server.waitListening()
            self.removed()
            names = scenario.servers
            for round in range(3):
                order = names[round % len(names):] + names[: round % len(names)]
                for name in order:
                    r = self.once(scenario, servers[name], round)
                    scenario.results.setdefault(name, []).append(r)
                    say(f"{scenario.name} round {round + 1} {name}: " + ", ".join(
                        f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in r.items() if k not in ("firstProblem", "split")))
        finally:
            for server in servers.values():
                server.terminate()
            for server in servers.values():
                server.stop()
            if not self.args.keep:
                self.removeLater([server.workdir for server in servers.values()])

    def profile(self, seconds: float) -> str:
        """
        py-spy samples of mxrecv under S1 load: where its time goes.
        """
        s = self.server("mxrecv")
        s.start()
        raw = self.workdir / "profile.txt"
        try:
            spy = subprocess.Popen(
                [VENV / "bin" / "py-spy", "record", "--pid", str(s.proc.pid), "--duration", f"{int(seconds)}",
                 "--rate", "200", "--format", "raw", "--output", raw, "--threads", "--gil", "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            time.sleep(0.5)
            r = wrk(s, seconds, "prof", close=False)
            spy.wait(60)
        finally:
            s.stop()
        return summariseProfile(raw.read_text() if raw.exists() else "", r)


AREAS = (
    # (area, patterns matched against a frame), first match from the leaf up
    ("thread hand-off (deferToThreadPool, callFromThread, wake-ups)",
     ("Condition.notify", "deferToThreadPool", "callInThreadWithCallback", "callFromThread",
      "Queue.put", "_team.py", "_threadworker.py", "Waker.", "_SocketWaker", "_UnixWaker")),
    ("logging (one event per callback, twistd's text log)",
     ("_logger.py", "_observer.py", "_format.py", "_file.py", "logfile.py", "_global.py",
      "_legacy.py", "_filter.py", "_buffer.py", "_io.py")),
    ("message.json encoding", ("encoder.py", "Message.encode", "Message.toJSON", "json/__init__")),
    ("validation (params, dates, text, naming)",
     ("params.py", "dates.py", "text.py", "naming.py", "zoneinfo", "ipaddress.py", "access.py")),
    ("spool bookkeeping on the reactor", ("spool.py", "seen.py", "defer.py")),
    ("twisted.web request and response", ("web/http.py", "web/server.py", "http_headers.py",
                                          "web/resource.py", "mxrecv/web/request.py", "mxrecv/web/resource.py",
                                          "basic.py", "urllib/parse.py")),
    ("TCP and the reactor loop", ("tcp.py", "epollreactor.py", "posixbase.py", "abstract.py",
                                  "fdesc.py", "base.py", "log.py", "context.py")),
)


def _area(frames: list[str]) -> str:
    for frame in reversed(frames):
        for area, patterns in AREAS:
            if any(p in frame for p in patterns):
                return area
    return "other"


def summariseProfile(raw: str, load: dict) -> str:
    """
    Where the reactor thread's GIL-holding samples go (by area, and by
    function, self), from py-spy's collapsed stacks (--gil: only the thread
    holding the GIL is sampled, so this is Python CPU, not waiting).
    """
    selfTime: Counter = Counter()
    areas: Counter = Counter()
    threads: Counter = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        thread = "reactor" if "MainThread" in frames[0] else "workers"
        threads[thread] += n
        total += n
        funcs = frames[1:]
        if funcs:
            short = re.sub(r" \((.*/)?(site-packages/)?", " (", funcs[-1])
            selfTime[(thread, short)] += n
        if thread == "reactor":
            areas[_area(funcs)] += n
    if not total:
        return "py-spy recorded nothing (permissions?)."
    reactor = threads["reactor"] or 1
    lines = [f"Load during profiling: {load['rate']:.0f} callbacks/s, p99 {load['p99']:.1f} ms "
             f"(py-spy at 200 Hz slows the server). {total} samples of the thread holding the GIL.", "",
             "GIL-holding samples by thread: " + ", ".join(f"{t} {100 * n / total:.0f}%" for t, n in threads.items()),
             "", "| reactor thread, by area (leaf-most match) | % of reactor samples |", "|---|---|"]
    for area, n in areas.most_common():
        lines.append(f"| {area} | {100 * n / reactor:.1f} |")
    lines += ["", "| thread | function (self time) | % of all samples |", "|---|---|---|"]
    for (t, f), n in selfTime.most_common(25):
        lines.append(f"| {t} | `{f}` | {100 * n / total:.1f} |")
    return "\n".join(lines)


# Report


METRIC = {
    "rate": ("callbacks/s", "{:.0f}", True),
    "mibs": ("MiB/s", "{:.1f}", True),
    "p50": ("p50 ms", "{:.1f}", False),
    "p99": ("p99 ms", "{:.1f}", False),
    "rss": ("peak RSS growth MiB", "{:.1f}", False),
    "drained": ("drain s", "{:.2f}", False),
    "cpu": ("server CPU (cores)", "{:.2f}", False),
    "cpums": ("server CPU ms per callback", "{:.2f}", False),
}


def medianRange(values: list[float | None]) -> tuple[float, float, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def table(s: Scenario) -> list[str]:
    head = ["server"] + [METRIC[m][0] + " (median, range)" for m in s.metrics] + ["wrong answers"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    medians: dict[str, dict[str, float]] = {}
    for name, runs in s.results.items():
        cells = [name]
        medians[name] = {}
        for m in s.metrics:
            mr = medianRange([r.get(m) for r in runs])
            if mr is None:
                cells.append("-")
                continue
            fmt = METRIC[m][1]
            medians[name][m] = mr[0]
            cells.append(f"{fmt.format(mr[0])} ({fmt.format(mr[1])}-{fmt.format(mr[2])})")
        cells.append(str(sum(r["errors"] for r in runs)))
        lines.append("| " + " | ".join(cells) + " |")
    ours = [name for name in medians if name.startswith("mxrecv")]
    peers = [name for name in medians if not name.startswith("mxrecv")]
    if ours and peers:
        lines.append("")
        for mine in ours:
            for peer in peers:
                ratios = []
                for m in s.metrics:
                    a, b = medians[mine].get(m), medians[peer].get(m)
                    if a is not None and b:
                        ratios.append(f"{METRIC[m][0]} x{a / b:.2f}")
                lines.append(f"- {mine} / {peer}: " + ", ".join(ratios))
    return lines


def cpuSplit(s: Scenario) -> list[str]:
    """
    Server CPU per callback by thread and user/kernel, medians of the rounds.
    """
    keys = ("loop user", "loop sys", "workers user", "workers sys")
    lines = ["| server (CPU ms per callback) | " + " | ".join(keys) + " |", "|" + "---|" * 5]
    for name, runs in s.results.items():
        splits = [r["split"] for r in runs if r.get("split")]
        if splits:
            lines.append(f"| {name} | " + " | ".join(
                f"{statistics.median(x[k] for x in splits):.3f}" for k in keys) + " |")
    return lines


def verdicts(scenarios: list[Scenario]) -> list[str]:
    by = {s.name: s for s in scenarios}
    out = []

    def med(s: Scenario, server: str, m: str) -> float | None:
        mr = medianRange([r.get(m) for r in s.results.get(server, [])])
        return mr[0] if mr else None

    s1 = by["S1"]
    if s1.results:
        peers = [p for p in s1.results if not p.startswith("mxrecv")]
        best = max(med(s1, p, "rate") for p in peers)
        rate, p99 = med(s1, "mxrecv", "rate"), med(s1, "mxrecv", "p99")
        ok = rate >= 2 * best and all(p99 < med(s1, p, "p99") for p in peers)
        out.append(f"- S1 (>= 2x the best peer's callbacks/s, p99 below every peer's): "
                   f"{'met' if ok else 'NOT met'}: x{rate / best:.2f} of the best peer, p99 {p99:.1f} ms vs "
                   + ", ".join(f"{p} {med(s1, p, 'p99'):.1f} ms" for p in peers))
    s3 = by["S3"]
    if s3.results:
        best = max(med(s3, p, "rate") for p in s3.results if not p.startswith("mxrecv"))
        rate = med(s3, "mxrecv", "rate")
        out.append(f"- S3 (>= 1.5x the best peer): {'met' if rate >= 1.5 * best else 'NOT met'}: x{rate / best:.2f}")
    s4 = by["S4"]
    if s4.results:
        best = max(med(s4, p, "mibs") for p in s4.results if not p.startswith("mxrecv"))
        mibs, rss = med(s4, "mxrecv", "mibs"), med(s4, "mxrecv", "rss")
        ok = mibs >= best and rss < 16
        out.append(f"- S4 (>= best peer's MiB/s, RSS growth < 16 MiB): {'met' if ok else 'NOT met'}: "
                   f"x{mibs / best:.2f}, {rss:.1f} MiB")
    s5 = by["S5"]
    if s5.results:
        rss = med(s5, "mxrecv", "rss")
        out.append(f"- S5 (RSS growth < 16 MiB): {'met' if rss < 16 else 'NOT met'}: {rss:.1f} MiB")
    return out


def report(args, info, disk, cpuBefore, cpuAfter, all_: list[Scenario], profile: str | None, took: float) -> str:
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# Benchmarks", "",
        f"Measured {now} with `python3 bench/run.py{' --quick' if args.quick else ''}"
        f"{' --only ' + ','.join(args.only) if args.only else ''}"
        f"{' --variants ' + repr(';'.join(args.variants)) if args.variants else ''}` in {took:.0f} s.", "",
        "How: each server runs as its own process pinned to core 0 (all three are started for a scenario, and "
        "only the one under load is busy), each with its own spool on the same disk; the load tool "
        "(wrk for GET, `mxrecv-sim` for POST and RetrieveMMS) is pinned to core 1. The servers take turns "
        "within each of 3 rounds; each figure is the median of the 3 rounds with their range. "
        "\"Wrong answers\" counts non-200 answers, socket errors, and acknowledged callbacks missing from "
        "the spool afterwards. The peers (bench/peer_aiohttp.py, bench/peer_starlette.py) share "
        "bench/peercommon.py: mxrecv's own validation, fsync of file and directory and rename in 16 worker "
        "threads before the 200, zip streamed to disk; they do not keep mxrecv's durable seen-id journal "
        "(see the module docstring). Compare ratios within this run, not figures across runs.", "",
        "## Machine", "",
    ]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += [
        "", "## Baselines (same run)", "",
        f"- Disk: {disk['small_per_s']:.0f} serial small write+fsync+rename+dir-fsync per second; "
        f"sequential write+fsync {disk['seq_mib_s']:.0f} MiB/s.",
        f"- CPU share a busy loop got (1.0 = a whole core): before core 0 {cpuBefore[SERVER_CORE]:.2f}, "
        f"core 1 {cpuBefore[LOAD_CORE]:.2f}; after core 0 {cpuAfter[SERVER_CORE]:.2f}, core 1 {cpuAfter[LOAD_CORE]:.2f}.",
        "", "## Results", "",
    ]
    for s in all_:
        lines.append(f"### {s.name}: {s.title}")
        lines.append("")
        if s.note:
            lines.append(f"Not run: {s.note}.")
        elif not s.results:
            lines.append("Not run (not selected).")
        else:
            lines += table(s)
            if "cpums" in s.metrics:
                lines += [""] + cpuSplit(s)
        lines.append("")
    v = verdicts(all_)
    if v:
        lines += ["## Targets", ""] + v + [""]
    if profile:
        lines += ["## Profile of mxrecv under S1 (py-spy)", "", profile, ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs (under 2 minutes)")
    parser.add_argument("--only", type=lambda s: s.split(","), default=None, help="e.g. S1,S2")
    parser.add_argument("--profile", action="store_true", help="also profile mxrecv under S1 load")
    parser.add_argument("--out", default="/var/tmp/mxrecv-bench-run.md",
                        help="where the report is written (outside docs/)")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--variants", type=lambda s: s.split(";"), default=[],
                        help="also run these bench/variants.py variants of mxrecv in S1, S2 and S3, "
                        "separated by ';' (each may combine several with ','), e.g. 'syncfs;nosync'")
    parser.add_argument("--keep", action="store_true", help="keep the spools and logs")
    args = parser.parse_args()
    started = time.monotonic()
    ensureVenv()
    ensureWrk()
    workdir = Path(tempfile.mkdtemp(prefix="mxrecv-bench.", dir=os.environ.get("MXRECV_BENCH_DIR", "/var/tmp")))
    say(f"working in {workdir}")
    try:
        bench = Bench(args, workdir)
        info = machine(workdir)
        cpuBefore = cpuProbe()
        disk = diskBaseline(workdir, args.quick)
        say(f"disk {disk}, cpu {cpuBefore}")
        all_ = scenarios(args.quick)
        if args.only:
            selected = [s for s in all_ if s.name in args.only]
        elif args.quick:
            # Under 2 minutes: the TLS scenarios only when asked for (--only).
            selected = [s for s in all_ if not s.tls]
            for s in all_:
                if s.tls:
                    s.note = "quick mode; run with --only S1-TLS,S3-TLS"
        else:
            selected = all_
        needed = {f for s in selected for f in s.needs}
        features = bench.probe(needed)
        say(f"features: {features}")
        for s in selected:
            bench.run(s, features)
        bench.removed()
        profile = bench.profile(max(bench.seconds, 8)) if args.profile else None
        cpuAfter = cpuProbe()
        text = report(args, info, disk, cpuBefore, cpuAfter, all_, profile, time.monotonic() - started)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        if args.json:
            Path(args.json).write_text(json.dumps(
                {s.name: {"results": s.results, "note": s.note} for s in all_}, indent=1, default=str))
        print(text)
        say(f"wrote {args.out} in {time.monotonic() - started:.0f} s")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
