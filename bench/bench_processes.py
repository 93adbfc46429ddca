"""
What several mxrecv processes could give at best (run by hand; figures go in
docs/benchmarks.md):

    python3 bench/bench_processes.py [--rounds 2] [--seconds 10]

The ceiling of several processes sharing one machine, as an answer to S1:
two fully independent mxrecv processes, each with its own spool and port
(so none of the coordination that [server] workers needs, which
bench/bench_workers.py measures), both free to use both cores, each driven by its own
wrk at 25 connections, also on both cores; beside it, in the same round, S1
as bench/run.py runs it (one process pinned to core 0, wrk with 50
connections on core 1) for mxrecv and for the aiohttp peer.

Needs wrk and the bench venv (python3 bench/run.py --quick --only none
makes it).  Listens on 127.0.0.1:18500-18502; every load lasts --seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
VENV = Path(os.environ.get("MXRECV_BENCH_VENV", "/tmp/venv-bench"))
PORTS = (18500, 18501, 18502)


def waitListening(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on {port} exited")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port} within 20 s")


def mxrecv(work: Path, index: int, cores: str) -> subprocess.Popen:
    config = work / f"mxrecv{index}.toml"
    config.write_text(
        f'[server]\nlisten = ["tcp:{PORTS[index]}:interface=127.0.0.1"]\n'
        f'allow = ["127.0.0.0/8"]\n[spool]\ndir = "{work / f"spool{index}"}"\n'
    )
    return subprocess.Popen(
        ["taskset", "-c", cores, VENV / "bin" / "twistd", "-n", "--pidfile=",
         "--logfile", work / f"twistd{index}.log", "mxrecv", "--config", config],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def aiohttp(work: Path) -> subprocess.Popen:
    return subprocess.Popen(
        ["taskset", "-c", "0", VENV / "bin" / "python", BENCH / "peer_aiohttp.py",
         "--port", str(PORTS[2]), "--spool", work / "spool-aiohttp"],
        env={**os.environ, "PYTHONPATH": f"{REPO}:{BENCH}"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def wrk(cores: str, connections: int, port: int, runId: str, seconds: int) -> subprocess.Popen:
    return subprocess.Popen(
        ["taskset", "-c", cores, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
         "--timeout", "10s", "-s", BENCH / "sms.lua", f"http://127.0.0.1:{port}/", "--", runId],
        stdout=subprocess.PIPE, text=True,
    )


def acked(load: subprocess.Popen) -> int:
    out, _ = load.communicate(timeout=120)
    data = json.loads(re.search(r"WRKJSON (\{.*\})", out).group(1))
    return data["requests"] - data["status_errors"] - data["timeouts"]


def stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mxrecv-processes.", dir="/var/tmp"))
    try:
        for round in range(1, args.rounds + 1):
            seconds = args.seconds
            one = mxrecv(work, 0, "0")
            waitListening(PORTS[0], one)
            rate = acked(wrk("1", 50, PORTS[0], f"one{round}", seconds)) / seconds
            stop(one)
            print(f"round {round}: one mxrecv on core 0: {rate:.0f}/s", flush=True)

            two = [mxrecv(work, i, "0,1") for i in (0, 1)]
            for i, proc in enumerate(two):
                waitListening(PORTS[i], proc)
            loads = [wrk("0,1", 25, PORTS[i], f"two{round}{i}", seconds) for i in (0, 1)]
            rates = [acked(load) / seconds for load in loads]
            stop(*two)
            print(
                f"round {round}: two independent mxrecv on cores 0-1: {sum(rates):.0f}/s "
                f"({rates[0]:.0f} + {rates[1]:.0f})",
                flush=True,
            )

            peer = aiohttp(work)
            waitListening(PORTS[2], peer)
            rate = acked(wrk("1", 50, PORTS[2], f"peer{round}", seconds)) / seconds
            stop(peer)
            print(f"round {round}: aiohttp on core 0: {rate:.0f}/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
