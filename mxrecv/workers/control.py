# -*- test-case-name: tests.test_workers -*-
"""
What the parent and its worker processes say to each other.

The parent starts a worker with these file descriptors:

    0   the parent's messages (and, first, the L{Hello}: one JSON line)
    1   the worker's log, one formatted event per line
    2   anything else the worker writes (a crash before its log is set up)
    3   the worker's messages to the parent
    4   the spool's lock (L{mxrecv.spool.store.claimSpool})
    5.. the listening sockets, in the order of C{[server] listen}

Messages are lines, C{VERB} or C{VERB ARGUMENT}; a message name is a
spool name, which holds no space or line break.

    worker -> parent    alive N       every second while its reactor turns,
                                      listening on N sockets
                        leader        it leads (L{mxrecv.workers.leader})
                        pending NAME  an MMS it accepted into pending/
                        new NAME      a message it committed into new/
    parent -> worker    pending NAME  (to the leader) take it up
                        new NAME      (to the leader) deliver it

The end of file descriptor 0 means that the parent is gone: the worker
stops, as on SIGTERM.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

from attrs import frozen
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

log = Logger()

PARENT_FD = 0
LOG_FD = 1
STDERR_FD = 2
CONTROL_FD = 3
LOCK_FD = 4
FIRST_SOCKET_FD = 5

ALIVE = "alive"
LEADER = "leader"
PENDING = "pending"
NEW = "new"

# A line longer than this is cut (a log line) or dropped (a message).
MAX_LINE = 64 * 1024


@frozen
class Hello:
    """
    What a worker is told as it starts.

    @ivar worker: its number, 0 to C{workers - 1}; a worker started again
        after a death keeps the number.
    @ivar config: the text of the configuration file the parent read (so
        that every worker runs the parent's configuration, even after the
        file changed), or L{None} for the defaults.
    @ivar base: the directory relative paths in it are read from.
    @ivar families: the address family of each listening socket, from
        L{FIRST_SOCKET_FD} on.
    """

    worker: int
    config: str | None
    base: str
    families: tuple[int, ...]

    def encode(self) -> bytes:
        document = {
            "worker": self.worker,
            "config": self.config,
            "base": self.base,
            "families": list(self.families),
        }
        return json.dumps(document).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> Hello:
        document = json.loads(line)
        return cls(
            worker=int(document["worker"]),
            config=document["config"],
            base=document["base"],
            families=tuple(int(f) for f in document["families"]),
        )


def readHello(fd: int = PARENT_FD) -> Hello:
    """
    Read the L{Hello} from C{fd}, blocking, and not a byte beyond its line
    (what follows is for the worker's reactor to read).

    @raise ValueError: if the parent closed C{fd} first, or sent no hello.
    """
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            raise ValueError("the parent closed its pipe before saying hello")
        line += byte
        if len(line) > 16 * MAX_LINE:
            raise ValueError("the parent's hello is too long")
    return Hello.decode(bytes(line))


def message(verb: str, argument: str | None = None) -> bytes:
    if argument is None:
        return f"{verb}\n".encode()
    return f"{verb} {argument}\n".encode()


def parseMessage(line: bytes) -> tuple[str, str | None]:
    """
    The verb and argument of a message line (without its line break).
    """
    text = line.decode("utf-8", "replace")
    verb, _, argument = text.partition(" ")
    return verb, argument or None


class Lines:
    """
    Cuts a byte stream into whole lines: a process's writes reach its
    parent in pieces that need not end at a line's end.
    """

    def __init__(self, limit: int = MAX_LINE) -> None:
        self._buffer = b""
        self._limit = limit

    def feed(self, data: bytes) -> bytes:
        """
        @return: the whole lines completed by C{data}, line breaks included
            (empty if none); a line longer than the limit comes out cut.
        """
        self._buffer += data
        end = self._buffer.rfind(b"\n") + 1
        if end == 0 and len(self._buffer) > self._limit:
            end = len(self._buffer)
        whole, self._buffer = self._buffer[:end], self._buffer[end:]
        return whole

    def rest(self) -> bytes:
        """
        What is left without a line break (at the end of the stream).
        """
        rest, self._buffer = self._buffer, b""
        return rest


def lines(data: bytes) -> Iterator[bytes]:
    """
    Each line of C{data} (from L{Lines.feed}), without its line break.
    """
    for line in data.split(b"\n"):
        if line:
            yield line


class ParentChannel(LineOnlyReceiver):
    """
    A worker's side of the channel: reads the parent's messages from
    L{PARENT_FD}, writes its own to L{CONTROL_FD} (run by
    L{twisted.internet.stdio.StandardIO} on those two).

    @param handlers: what to do with each verb the parent sends.
    @param orphaned: called once the parent is gone.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(
        self,
        handlers: dict[str, Callable[[str | None], None]],
        orphaned: Callable[[], None],
    ) -> None:
        self._handlers = handlers
        self._orphaned = orphaned
        self.connected = False

    def connectionMade(self) -> None:
        self.connected = True

    def send(self, verb: str, argument: str | None = None) -> None:
        if self.connected:
            self.transport.write(message(verb, argument))

    def lineReceived(self, line: bytes) -> None:
        verb, argument = parseMessage(line)
        handler = self._handlers.get(verb)
        if handler is None:
            log.warn("Unknown message from the parent: {verb}", verb=verb)
            return
        try:
            handler(argument)
        except Exception:
            log.failure("Handling {verb} from the parent", verb=verb)

    def lineLengthExceeded(self, line: bytes) -> None:
        log.warn("A message from the parent was too long ({length} bytes)", length=len(line))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.connected:
            self.connected = False
            self._orphaned()
