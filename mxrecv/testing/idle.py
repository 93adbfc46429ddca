# -*- test-case-name: tests.test_connections -*-
"""
Idle connections, many of them, from many loopback addresses: what a client
that wants to exhaust a server's descriptors does.  For tests and the
benchmark (C{bench/bench_idle.py}), never against anything but loopback.

    python -m mxrecv.testing.idle --port 8080 --count 5000 [--hold 60]

It raises its own open files limit, connects C{count} sockets to
127.0.0.1:PORT, each from one of 127.0.0.2 .. 127.0.0.254 in turn (all of
127.0.0.0/8 is this machine; to the server they are distinct clients),
C{batch} at a time, and sends nothing.  Once every connection is made or
has failed it prints one JSON line::

    {"connected": 5000, "failed": 0, "closedByServer": 4987, "seconds": 0.9}

and then, for each line read on stdin, another with the counts then (those
closed by the server grow as it drops them).  It ends at EOF on stdin, or
after C{hold} seconds, whichever comes first: it is bounded in count and time.
"""

from __future__ import annotations

import argparse
import errno
import json
import resource
import selectors
import socket
import sys
import time
from collections.abc import Sequence

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
FIRST_SOURCE = 2
LAST_SOURCE = 254


class Holder:
    """
    The connections, their states, and a selector watching them: for
    writability while connecting, then readability (the server's FIN or
    RST, since the server has nothing to say to a client that said nothing).
    """

    def __init__(self, port: int, count: int, batch: int, timeout: float) -> None:
        self.port = port
        self.count = count
        self.batch = batch
        self.timeout = timeout
        self.selector = selectors.DefaultSelector()
        self.connecting: dict[socket.socket, float] = {}
        self.open: set[socket.socket] = set()
        self.connected = 0
        self.failed = 0
        self.closedByServer = 0

    def connectAll(self) -> None:
        started = 0
        while started < self.count or self.connecting:
            while started < self.count and len(self.connecting) < self.batch:
                self._start(started)
                started += 1
            self.poll(0.05)

    def _start(self, i: int) -> None:
        source = f"127.0.0.{FIRST_SOURCE + i % (LAST_SOURCE - FIRST_SOURCE + 1)}"
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            # The port is chosen at connect, for the whole address pair: a
            # port chosen at bind may clash with one the server still has
            # in TIME_WAIT from an earlier run.
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((source, 0))
            code = s.connect_ex(("127.0.0.1", self.port))
        except OSError:
            s.close()
            self.failed += 1
            return
        if code not in (0, errno.EINPROGRESS):
            s.close()
            self.failed += 1
            return
        self.connecting[s] = time.monotonic() + self.timeout
        self.selector.register(s, selectors.EVENT_WRITE)

    def poll(self, wait: float) -> list[object]:
        """
        Take the events that came within C{wait} seconds.

        @return: the other files registered with the selector that are
            ready.
        """
        others = []
        for key, _ in self.selector.select(wait):
            s = key.fileobj
            if not isinstance(s, socket.socket):
                others.append(s)
            elif s in self.connecting:
                del self.connecting[s]
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    self._drop(s)
                    self.failed += 1
                else:
                    self.connected += 1
                    self.open.add(s)
                    self.selector.modify(s, selectors.EVENT_READ)
            else:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    self.open.discard(s)
                    self._drop(s)
                    self.closedByServer += 1
        now = time.monotonic()
        for s, deadline in list(self.connecting.items()):
            if now > deadline:
                del self.connecting[s]
                self._drop(s)
                self.failed += 1
        return others

    def _drop(self, s: socket.socket) -> None:
        self.selector.unregister(s)
        s.close()

    def counts(self) -> dict[str, int]:
        return {
            "connected": self.connected,
            "failed": self.failed,
            "closedByServer": self.closedByServer,
            "open": len(self.open),
        }

    def close(self) -> None:
        for s in list(self.open):
            self._drop(s)
        self.open.clear()


def raiseFileLimit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mxrecv.testing.idle", description=__doc__)
    p.add_argument("--port", type=int, required=True, help="of 127.0.0.1")
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--batch", type=int, default=200, help="connections being made at once")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to connect each")
    p.add_argument("--hold", type=float, default=60.0, help="seconds to hold them, at most")
    args = p.parse_args(argv)
    raiseFileLimit(args.count + 64)
    holder = Holder(args.port, args.count, args.batch, args.timeout)
    began = time.monotonic()
    holder.connectAll()
    end = began + args.hold

    def report() -> None:
        print(json.dumps({**holder.counts(), "seconds": round(time.monotonic() - began, 3)}))
        sys.stdout.flush()

    report()
    holder.selector.register(sys.stdin, selectors.EVENT_READ)
    try:
        while time.monotonic() < end:
            if holder.poll(min(0.5, max(0.0, end - time.monotonic()))):
                if not sys.stdin.readline():
                    return 0
                report()
    finally:
        holder.selector.unregister(sys.stdin)
        holder.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
