# -*- test-case-name: tests.test_workers -*-
"""
The callback listeners of a server of several worker processes: each
listening socket is made once, by the parent, and handed to every worker,
which adopts it (L{AdoptedEndpoint}) and accepts from it as it would from
its own.

Why the parent's sockets rather than one C{SO_REUSEPORT} socket per
worker:
    - one accept queue per listener: a worker that dies (or is killed)
      leaves the connections waiting in the queue to the others, where with
      C{SO_REUSEPORT} the kernel resets those queued on the dead worker's
      socket;
    - any stream socket can be shared, UNIX sockets included (which
      C{SO_REUSEPORT} does not apply to), and port 0 means one port for all;
    - the parent binds once, before twistd sheds its privileges (port 443
      with C{--uid}), and a port in use stops start-up with one error;
    - nothing else on the machine can bind the same port and take a share
      of the connections, as another process of the same user can with
      C{SO_REUSEPORT};
    - what a listener does with a connection (the allow list checked at
      accept, then TLS) is the factory each worker wraps around its site,
      whatever the socket: nothing there depends on the choice.
The cost: connections are spread less evenly (whichever worker is waiting
in C{accept} first takes the next one, so an idle worker takes more than a
busy one), and a kept-alive connection stays with the worker that accepted
it either way.

Supported descriptions: C{tcp:}, C{tcp6:}, C{ssl:} (TCP, with TLS in the
worker) and C{unix:}, with Twisted's syntax and defaults.
"""

from __future__ import annotations

import inspect
import os
import socket
import stat
from collections.abc import Callable
from typing import Any

from attrs import frozen
from twisted.internet import tcp
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IListeningPort, IReactorSocket, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.unix import Port as UNIXPort
from twisted.python.lockfile import FilesystemLock
from zope.interface import implementer

from mxrecv.tls.description import endpointFields, isTLS, parseTLS

# Twisted's default for every stream endpoint.
BACKLOG = 50


@frozen
class TCPSocket:
    """
    A TCP listening socket: C{tcp:}, C{tcp6:} or C{ssl:}.
    """

    family: int
    interface: str
    port: int
    backlog: int = BACKLOG


@frozen
class UNIXSocket:
    """
    A UNIX listening socket: C{unix:}.

    @ivar lockfile: guard the path with C{PATH.lock} and remove a socket
        that a dead server left there (Twisted's default).
    """

    path: str
    mode: int = 0o666
    backlog: int = BACKLOG
    lockfile: bool = True


SocketSpec = TCPSocket | UNIXSocket


def _tcp(port: str, interface: str = "", backlog: str = str(BACKLOG)) -> TCPSocket:
    family = socket.AF_INET6 if isIPv6Address(interface) else socket.AF_INET
    return TCPSocket(family, interface, _number("port", port, 0, 65535), _number("backlog", backlog))


def _tcp6(port: str, interface: str = "::", backlog: str = str(BACKLOG)) -> TCPSocket:
    return TCPSocket(
        socket.AF_INET6, interface, _number("port", port, 0, 65535), _number("backlog", backlog)
    )


def _unix(
    address: str, mode: str = "666", backlog: str = str(BACKLOG), lockfile: str = "1"
) -> UNIXSocket:
    try:
        permissions = int(mode, 8)
    except ValueError:
        raise ValueError(f"mode {mode!r} is not an octal number") from None
    return UNIXSocket(address, permissions, _number("backlog", backlog), lockfile != "0")


def _number(name: str, text: str, low: int = 1, high: int = 65535) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a number") from None
    if not low <= value <= high:
        raise ValueError(f"{name} {value} is out of range")
    return value


_KINDS: dict[str, Callable[..., SocketSpec]] = {"tcp": _tcp, "tcp6": _tcp6, "unix": _unix}


def socketSpec(description: str) -> SocketSpec:
    """
    The listening socket a C{[server] listen} string asks for.

    @raise ValueError: for a kind of endpoint that cannot be shared by
        worker processes, or a bad value.
    """
    if isTLS(description):
        listen = parseTLS(description)
        return _tcp(str(listen.port), listen.interface, str(listen.backlog))
    fields = endpointFields(description)
    kind = fields[0][0]
    if len(fields[0]) != 1 or kind not in _KINDS:
        raise ValueError(
            f"{kind!r} listeners cannot be shared by worker processes: "
            "use tcp:, tcp6:, ssl: or unix:"
        )
    args = [f[0] for f in fields[1:] if len(f) == 1]
    kwargs = {f[0]: f[1] for f in fields[1:] if len(f) == 2}
    if kind == "unix" and "address" in kwargs:
        args.insert(0, kwargs.pop("address"))
    if kind != "unix" and "port" in kwargs:
        args.insert(0, kwargs.pop("port"))
    make = _KINDS[kind]
    try:
        inspect.signature(make).bind(*args, **kwargs)
    except TypeError as e:
        raise ValueError(f"bad {kind}: description: {e}") from None
    return make(*args, **kwargs)


def familyOf(spec: SocketSpec) -> int:
    return socket.AF_UNIX if isinstance(spec, UNIXSocket) else spec.family


class SharedSocket:
    """
    A listening socket made by the parent for its workers.  Closing it
    never shuts it down (that would stop it in every worker): the socket
    stops listening once the last process holding it has closed it.

    @ivar socket: the socket, non-blocking, listening.
    """

    def __init__(self, spec: SocketSpec) -> None:
        self.spec = spec
        self._lock: FilesystemLock | None = None
        if isinstance(spec, UNIXSocket):
            self.socket = self._unix(spec)
        else:
            self.socket = self._tcp(spec)
        self.socket.setblocking(False)

    @staticmethod
    def _tcp(spec: TCPSocket) -> socket.socket:
        s = socket.socket(spec.family, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((spec.interface, spec.port))
            s.listen(spec.backlog)
        except BaseException:
            s.close()
            raise
        return s

    def _unix(self, spec: UNIXSocket) -> socket.socket:
        if spec.lockfile:
            lock = FilesystemLock(spec.path + ".lock")
            if not lock.lock():
                raise OSError(f"cannot acquire the lock {spec.path}.lock")
            self._lock = lock
            if not lock.clean:
                # As Twisted does: a socket left by a server that died.
                try:
                    if stat.S_ISSOCK(os.stat(spec.path).st_mode):
                        os.remove(spec.path)
                except OSError:
                    pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(spec.path)
            os.chmod(spec.path, spec.mode)
            s.listen(spec.backlog)
        except BaseException:
            s.close()
            self._unlock()
            raise
        return s

    @property
    def port(self) -> int | str:
        """
        The TCP port (the one chosen for port 0), or the UNIX path.
        """
        name = self.socket.getsockname()
        return name if isinstance(name, str) else name[1]

    def fileno(self) -> int:
        return self.socket.fileno()

    def close(self) -> None:
        """
        Stop holding the socket; a UNIX socket's path is removed, so that
        new clients are refused at once.
        """
        if self.socket.fileno() == -1:
            return
        self.socket.close()
        if isinstance(self.spec, UNIXSocket):
            try:
                os.unlink(self.spec.path)
            except OSError:
                pass
            self._unlock()

    def _unlock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.unlock()


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """
    Listens on a socket inherited from the parent, as file descriptor C{fd}
    of address C{family}: the endpoint of a worker's callback listener.
    """

    def __init__(self, reactor: IReactorSocket, fd: int, family: int) -> None:
        self._reactor = reactor
        self._fd = fd
        self._family = family

    def listen(self, factory: Factory) -> Deferred[IListeningPort]:
        try:
            if self._family == socket.AF_UNIX:
                port: Any = _SharedUNIXPort._fromListeningDescriptor(
                    self._reactor, self._fd, factory
                )
                port.startListening()
            else:
                port = self._reactor.adoptStreamPort(self._fd, self._family, factory)
        except Exception:
            return fail()
        # adoptStreamPort made its own copy of the descriptor.
        os.close(self._fd)
        return succeed(port)


class _SharedUNIXPort(UNIXPort):
    """
    A UNIX port on a socket that the parent made and shares with the other
    workers: Twisted's port would C{chmod} the path when it starts (as a
    worker that shed its privileges may not), and shut the socket down and
    remove the path when it stops, for every worker at once.  Here the
    parent owns the path, and stopping closes this worker's copy only.
    """

    def startListening(self) -> None:
        tcp._reservedFD.reserve()
        skt = self._preexistingSocket
        self._preexistingSocket = None
        self._shouldShutdown = False
        self.factory.doStart()
        self.connected = True
        self.socket = skt
        self.fileno = skt.fileno
        self.numberAccepts = 100
        self.startReading()

    def connectionLost(self, reason: Any) -> None:
        tcp.Port.connectionLost(self, reason)
