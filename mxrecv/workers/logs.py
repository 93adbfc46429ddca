# -*- test-case-name: tests.test_workers -*-
"""
A worker's log: its events formatted as the parent's log would have them,
naming the worker, and sent to the parent several lines at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import IO, Any

from twisted.logger import ILogObserver

from mxrecv.interfaces import IServerReactor

# Seconds a worker's log lines may wait to be sent to the parent together.
LOG_DELAY = 0.1


class CoalescingFile:
    """
    A text file whose writes go out together, C{delay} seconds after the
    first of them (or once C{limit} characters wait): a worker logs a line
    per callback, and each write to the parent's pipe costs both processes
    a system call and the parent a turn of its reactor (measured: about 35
    microseconds of the parent's CPU per callback when each line went
    alone).  Before the reactor runs, and once it is shutting down, each
    write goes out at once, so that nothing is left behind when the process
    ends; a worker killed with -9 loses the lines of its last C{delay}
    seconds.
    """

    def __init__(
        self,
        file: IO[str],
        reactor: IServerReactor,
        delay: float = LOG_DELAY,
        limit: int = 64 * 1024,
    ) -> None:
        self._file = file
        self._reactor = reactor
        self._delay = delay
        self._limit = limit
        # Made where the reactor runs (twistd's main thread).
        self._reactorThread = threading.get_ident()
        self._lock = threading.Lock()
        self._waiting: list[str] = []
        self._size = 0
        self._scheduled = False
        self._direct = False
        reactor.addSystemEventTrigger("before", "shutdown", self._shuttingDown)

    def write(self, text: str) -> None:
        with self._lock:
            self._waiting.append(text)
            self._size += len(text)
            if self._direct or not self._reactor.running or self._size >= self._limit:
                self._send()
                return
            if self._scheduled:
                return
            self._scheduled = True
        if threading.get_ident() == self._reactorThread:
            self._reactor.callLater(self._delay, self._flush)
        else:
            self._reactor.callFromThread(self._reactor.callLater, self._delay, self._flush)

    def flush(self) -> None:
        """
        L{FileLogObserver} flushes after each event: here, the delay does.
        """

    def _send(self) -> None:
        if self._waiting:
            self._file.write("".join(self._waiting))
            self._file.flush()
            self._waiting = []
            self._size = 0

    def _flush(self) -> None:
        with self._lock:
            self._scheduled = False
            self._send()

    def _shuttingDown(self) -> None:
        with self._lock:
            self._direct = True
            self._send()


def namedObserver(observer: ILogObserver, worker: int, *, text: bool) -> ILogObserver:
    suffix = f" worker={worker}"

    def observe(event: Mapping[str, Any]) -> None:
        event = dict(event)
        event["worker"] = worker
        if text:
            system = event.get("log_system")
            if system is None:
                level = event.get("log_level")
                system = f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')}"
            event["log_system"] = f"{system}{suffix}"
        observer(event)

    return observe  # type: ignore[return-value]
