#!/usr/bin/env python3
"""
POST-mode uploads: the server's memory and speed while MMS zips stream in.

Starts mxrecv as a user would (twistd with a generated configuration, spool
on this disk), a fresh server per scenario, and measures with the kernel's
own peak-RSS counter (VmHWM, reset through /proc/PID/clear_refs once the
server is warm) how much the server grows while receiving:

- one 200 MiB zip;
- 32 concurrent 16 MiB zips.

The 200 MiB upload's rate (first byte sent to the 200, which comes only once
the zip and message.json are fsynced) is compared with the disk's own
sequential write + fsync rate of a file of the same size in the same
directory, measured just before and just after in the same run.  The client
is curl (streaming the body from a file), so that the client is not what
limits the rate; the server and the clients are pinned to different cores.

    PYTHONPATH=. python3 bench/bench_post.py [--runs 3] [--port 18150]

Every upload is bounded in time (--timeout); the spool is removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

MiB = 1024 * 1024
BOUNDARY = b"mxrecv-bench-0c3f6b1e4a2d"
CONFIG = """
[server]
listen = ["tcp:{port}:interface=127.0.0.1"]
allow = ["127.0.0.0/8"]
max_body = {maxBody}
request_timeout = {timeout}

[spool]
dir = "{spool}"
"""


def makeZip(path: Path, size: int) -> None:
    """
    A zip holding one stored entry of C{size} random bytes, written in 1 MiB
    pieces (random data does not compress, as photos and videos do not).
    """
    info = zipfile.ZipInfo("video.3gp", (2026, 11, 25, 10, 0, 0))
    info.file_size = size
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        with archive.open(info, "w") as entry:
            for _ in range(size // MiB):
                entry.write(os.urandom(MiB))


def makeBody(path: Path, zipPath: Path, messageId: str) -> None:
    """
    The multipart body of an MMS callback carrying C{zipPath}.
    """
    fields = [
        ("id", messageId),
        ("from", "447700900123"),
        ("to", "80000"),
        ("date", "2026-11-25 10:30:00"),
        ("type", "2"),
        ("subject", "bench"),
    ]
    with path.open("wb") as out:
        for name, value in fields:
            out.write(
                b"--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n"
                % (BOUNDARY, name.encode(), value.encode())
            )
        out.write(
            b"--%s\r\nContent-Disposition: form-data; name=\"mms.zip\"; filename=\"mms.zip\"\r\n"
            b"Content-Type: application/zip\r\n\r\n" % BOUNDARY
        )
        with zipPath.open("rb") as source:
            shutil.copyfileobj(source, out, MiB)
        out.write(b"\r\n--%s--\r\n" % BOUNDARY)


def diskRate(directory: Path, size: int) -> float:
    """
    MB/s of writing C{size} bytes sequentially (64 KiB writes, as the server
    gets them) and fsyncing the file: the most a receiver could reach.
    """
    path = directory / "disk-baseline"
    block = os.urandom(64 * 1024)
    start = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for _ in range(size // len(block)):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.monotonic() - start
    path.unlink()
    return size / elapsed / 1e6


def hashRate(size: int) -> float:
    """
    MB/s of SHA-256 on this CPU (64 KiB updates): a cost the server cannot
    avoid, since it hashes the zip as it arrives.
    """
    block = os.urandom(64 * 1024)
    digest = hashlib.sha256()
    start = time.monotonic()
    for _ in range(size // len(block)):
        digest.update(block)
    return size / (time.monotonic() - start) / 1e6


def memory(pid: int) -> dict[str, int]:
    """
    VmRSS and VmHWM of C{pid}, in bytes.
    """
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


class Server:
    """
    A twistd mxrecv of our own, on its own spool, pinned to one core.

    @param extra: more of its configuration (tables after C{[spool]}).
    """

    def __init__(
        self,
        work: Path,
        port: int,
        maxBody: int,
        timeout: float,
        cpus: set[int],
        extra: str = "",
    ) -> None:
        self.work = work
        self.spool = work / "spool"
        config = work / "mxrecv.toml"
        config.write_text(
            CONFIG.format(port=port, maxBody=maxBody, timeout=timeout, spool=self.spool) + extra
        )
        self.log = (work / "twistd.log").open("ab")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "twistd"), "-n", "--pidfile=", "mxrecv",
             "--config", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        os.sched_setaffinity(self.process.pid, cpus)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise SystemExit(f"mxrecv did not start; see {work / 'twistd.log'}")
                time.sleep(0.1)

    def resetPeak(self) -> int:
        """
        Make the kernel's peak RSS the current RSS; return it.
        """
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        return memory(self.process.pid)["VmRSS"]

    def peak(self) -> int:
        return memory(self.process.pid)["VmHWM"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.spool, ignore_errors=True)


def startUploads(url: str, bodies: list[Path]) -> list[tuple[subprocess.Popen, float]]:
    """
    One curl per body, all at once: curl streams the file (-T), so the
    client is never what limits the rate.
    """
    started = []
    for body in bodies:
        with body.open("rb") as stdin:
            process = subprocess.Popen(
                ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
                 "-X", "POST", "-T", "-", "-H", "Expect:", "-H", "Transfer-Encoding:",
                 "-H", f"Content-Length: {body.stat().st_size}",
                 "-H", "Content-Type: multipart/form-data; boundary=" + BOUNDARY.decode(), url],
                stdin=stdin,
                stdout=subprocess.PIPE,
                text=True,
            )
        os.sched_setaffinity(process.pid, {1})
        started.append(process)
    return started


def finishUploads(processes, timeout: float) -> list[tuple[int, float]]:
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=timeout)
        code, seconds = out.split()
        results.append((int(code), float(seconds)))
    return results


def waitForNew(spool: Path, names: list[str], timeout: float) -> None:
    """
    Until every message is complete in new/ (unpacked, off the request path).
    """
    end = time.monotonic() + timeout
    while not all((spool / "new" / name / "message.json").exists() for name in names):
        if time.monotonic() > end:
            raise RuntimeError(f"not completed within {timeout}s: {names}")
        time.sleep(0.05)


def scenario(args, work: Path, bodies: list[Path], names: list[str], zipPaths) -> dict:
    server = Server(
        work, args.port, maxBody=300 * MiB, timeout=args.timeout, cpus=args.server_cpus
    )
    url = f"http://127.0.0.1:{args.port}/"
    try:
        # Warm up (imports, first spool writes), then take the baseline.
        finishUploads(startUploads(url, [args.warmBody]), 30)
        waitForNew(server.spool, ["warm"], 30)
        baseline = server.resetPeak()
        results = finishUploads(startUploads(url, bodies), args.timeout)
        atAnswers = server.peak() - baseline
        waitForNew(server.spool, names, args.timeout)
        atComplete = server.peak() - baseline
        for name, zipPath in zip(names, zipPaths):
            stored = server.spool / "new" / name / "mms.zip"
            if sha256(stored) != sha256(zipPath):
                raise RuntimeError(f"{name}: mms.zip differs from what was sent")
        codes = {code for code, _ in results}
        if codes != {200}:
            raise RuntimeError(f"statuses {codes}")
        return {
            "baseline": baseline,
            "growthAtAnswers": atAnswers,
            "growthAtComplete": atComplete,
            "seconds": [s for _, s in results],
        }
    finally:
        server.stop()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def main(args) -> None:
    os.sched_setaffinity(0, {1})
    work = Path(tempfile.mkdtemp(prefix="mxrecv-bench-post.", dir=args.dir))
    try:
        print(f"preparing bodies in {work} ...", flush=True)
        bigZip, smallZip = work / "big.zip", work / "small.zip"
        makeZip(bigZip, args.big * MiB)
        makeZip(smallZip, args.small * MiB)
        warmZip = work / "warm.zip"
        makeZip(warmZip, MiB)
        args.warmBody = work / "warm.body"
        makeBody(args.warmBody, warmZip, "warm")
        rows = []
        for run in range(args.runs):
            before = diskRate(work, args.big * MiB)
            hashing = hashRate(args.big * MiB)
            body = work / "big.body"
            makeBody(body, bigZip, f"big-{run}")
            big = scenario(args, work, [body], [f"big-{run}"], [bigZip])
            after = diskRate(work, args.big * MiB)
            body.unlink()
            smallBodies = []
            for i in range(args.count):
                smallBodies.append(work / f"small-{i}.body")
                makeBody(smallBodies[-1], smallZip, f"small-{run}-{i}")
            names = [f"small-{run}-{i}" for i in range(args.count)]
            small = scenario(args, work, smallBodies, names, [smallZip] * args.count)
            for b in smallBodies:
                b.unlink()
            uploadRate = args.big * MiB / big["seconds"][0] / 1e6
            row = {
                "disk_before": before,
                "disk_after": after,
                "sha256": hashing,
                "upload": uploadRate,
                "ratio": uploadRate / statistics.mean([before, after]),
                "big_growth_answer": big["growthAtAnswers"] / MiB,
                "big_growth_complete": big["growthAtComplete"] / MiB,
                "small_growth_answer": small["growthAtAnswers"] / MiB,
                "small_growth_complete": small["growthAtComplete"] / MiB,
                "small_seconds": max(small["seconds"]),
                "baseline": big["baseline"] / MiB,
            }
            rows.append(row)
            print(
                f"run {run + 1}: disk write+fsync {before:.0f} / {after:.0f} MB/s (before/after); "
                f"sha256 {hashing:.0f} MB/s; "
                f"{args.big} MiB upload {uploadRate:.0f} MB/s = {row['ratio']:.0%} of their mean; "
                f"RSS growth, 1 x {args.big} MiB: {row['big_growth_answer']:.1f} MiB at the 200, "
                f"{row['big_growth_complete']:.1f} MiB once unpacked; "
                f"{args.count} x {args.small} MiB: {row['small_growth_answer']:.1f} / "
                f"{row['small_growth_complete']:.1f} MiB (all answered in {row['small_seconds']:.1f} s); "
                f"server RSS when warm {row['baseline']:.1f} MiB",
                flush=True,
            )
        if len(rows) > 1:
            print("medians (min-max):")
            for key in rows[0]:
                values = [r[key] for r in rows]
                print(f"  {key}: {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=18150)
    parser.add_argument("--big", type=int, default=200, help="MiB")
    parser.add_argument("--small", type=int, default=16, help="MiB")
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--server-cpus",
        type=lambda v: {int(c) for c in v.split(",")},
        default={0},
        help="cores the server may use, e.g. 0,1 (default 0; curl always runs on core 1)",
    )
    parser.add_argument("--dir", default=None, help="where the spool goes (default: TMPDIR)")
    main(parser.parse_args())
