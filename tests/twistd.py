"""
A real C{twistd mxrecv} in a process of its own, for the tests that need one
(a server of several worker processes, signals, kill -9): its log is read
line by line as it comes, and tests wait on a line appearing (never on
time), each wait bounded by a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

TWISTD = ["-c", "from twisted.scripts.twistd import run; run()"]

# Longest wait for a line of the log: far beyond what any step takes, so
# that a test that fails ends in good time instead of hanging.
DEADLINE = 60.0


class Twistd(ProcessProtocol):
    """
    A twistd process and its log (stdout and stderr together).

    @ivar output: all it wrote so far.
    @ivar lines: the log's whole lines so far.
    @ivar listening: fires with the first callback port it listens on.
    @ivar ended: fires with how the process ended.
    @ivar pids: the worker processes it said it started.
    """

    def __init__(self) -> None:
        self.output = b""
        self.lines: list[str] = []
        self._partial = b""
        self._waiting: list[tuple[re.Pattern[str], int, Deferred[list[re.Match[str]]]]] = []
        self.listening: Deferred[int] = Deferred()
        self.ended: Deferred[Any] = Deferred()
        self.process: Any = None
        self.pids: set[int] = set()

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def outReceived(self, data: bytes) -> None:
        self.output += data
        match = re.search(rb"CallbackSite starting on (\d+)", self.output)
        if match and not self.listening.called:
            self.listening.callback(int(match.group(1)))
        self._partial += data
        *whole, self._partial = self._partial.split(b"\n")
        for line in whole:
            self._line(line.decode("utf-8", "replace"))

    errReceived = outReceived

    def _line(self, line: str) -> None:
        self.lines.append(line)
        started = re.search(r"Worker \d+ started \(pid (\d+)\)", line)
        if started:
            self.pids.add(int(started.group(1)))
        for entry in list(self._waiting):
            pattern, count, d = entry
            matches = self.matches(pattern)
            if len(matches) >= count:
                self._waiting.remove(entry)
                d.callback(matches)

    def matches(self, pattern: str | re.Pattern[str]) -> list[re.Match[str]]:
        compiled = re.compile(pattern)
        return [m for m in map(compiled.search, self.lines) if m]

    def waitFor(self, pattern: str, count: int = 1, timeout: float = DEADLINE) -> Deferred[Any]:
        """
        Fire with the match of the C{count}th line of the log that matches
        C{pattern} (at once if there are that many already), or fail after
        C{timeout} seconds, or when the process ends first.
        """
        compiled = re.compile(pattern)
        matches = self.matches(compiled)
        if len(matches) >= count:
            return _succeed(matches[count - 1])
        d: Deferred[list[re.Match[str]]] = Deferred()
        entry = (compiled, count, d)
        self._waiting.append(entry)

        def timedOut(failure: Any) -> Any:
            if entry in self._waiting:
                self._waiting.remove(entry)
            raise AssertionError(
                f"no {count} line(s) matching {pattern!r} in {timeout:g}s; the log:\n"
                + self.text
            )

        d.addTimeout(timeout, reactor)
        d.addErrback(timedOut)
        return d.addCallback(lambda matches: matches[count - 1])

    def processEnded(self, reason: Any) -> None:
        if self._partial:
            self._line(self._partial.decode("utf-8", "replace"))
            self._partial = b""
        if not self.listening.called:
            self.listening.errback(RuntimeError(self.text))
        waiting, self._waiting = self._waiting, []
        for pattern, count, d in waiting:
            d.errback(
                AssertionError(
                    f"twistd ended before {count} line(s) matched {pattern.pattern!r}; "
                    f"the log:\n{self.text}"
                )
            )
        self.ended.callback(reason.value)

    def signal(self, name: str) -> None:
        self.process.signalProcess(name)


def _succeed(value: Any) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.callback(value)
    return d


def runTwistd(
    case: TestCase, *args: str, spool: Path | None = None, openFiles: int | None = None
) -> Twistd:
    """
    Run C{twistd -n mxrecv ARGS}; killed at the end of the test if it is
    still running, with every worker it started on C{spool} that is still
    running (known by its environment, so that no other process that
    happens to have the pid of a worker that ended is touched).

    @param openFiles: the soft limit on open files to start it with (the
        1024 most systems give), its hard limit unchanged.
    """
    protocol = Twistd()
    twistd = TWISTD
    if openFiles is not None:
        twistd = [
            "-c",
            "import resource; hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({openFiles}, hard)); "
            "from twisted.scripts.twistd import run; run()",
        ]
    protocol.process = reactor.spawnProcess(
        protocol,
        sys.executable,
        [sys.executable, *twistd, "-n", "--pidfile=", "mxrecv", *args],
        # The child imports what this test imports (trial runs in
        # _trial_temp, so a relative PYTHONPATH would not do).
        env={**os.environ, "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in sys.path)},
    )

    def stop() -> Deferred[Any] | None:
        if spool is not None:
            for pid in protocol.pids:
                if isWorkerOf(pid, spool):
                    os.kill(pid, signal.SIGKILL)
        if protocol.ended.called:
            return None
        try:
            protocol.process.signalProcess("KILL")
        except ProcessExitedAlready:
            pass
        return protocol.ended

    case.addCleanup(stop)
    return protocol


def isWorkerOf(pid: int, spool: Path) -> bool:
    """
    Whether process C{pid} is running, as a worker of the server on
    C{spool} (its metrics directory is in its environment).
    """
    marker = f"PROMETHEUS_MULTIPROC_DIR={Path(spool).absolute() / 'state' / 'metrics'}"
    try:
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return marker.encode() in environment


def writeConfig(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
