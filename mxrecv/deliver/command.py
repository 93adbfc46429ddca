# -*- test-case-name: tests.test_deliver -*-
"""
The C{command} target: run C{[deliver] command} with the message's directory
as its last argument; its exit status says how it went
(L{mxrecv.deliver.policy.commandOutcome}).

Its environment is mxrecv's, plus C{MXRECV_ID} (the message's id, as the
C{webhook-id} header has it: L{mxrecv.deliver.identity.deliveryId}),
C{MXRECV_NAME} (its directory's name), C{MXRECV_PATH} (its directory, the
last argument) and C{MXRECV_SPOOL} (the spool).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from mxrecv.deliver.identity import deliveryId
from mxrecv.deliver.interfaces import ITarget
from mxrecv.deliver.outcome import Outcome, PermanentFailure, TemporaryFailure
from mxrecv.deliver.policy import STDERR_TAIL, commandOutcome
from mxrecv.message.model import decodeJSON
from mxrecv.spool.layout import MESSAGE_JSON

#: Seconds the rest of a command's stderr is waited for once it has exited:
#: what it left running (a job in the background, the child of a script
#: killed at the timeout) may hold the pipe open for much longer.
COMMAND_GRACE = 1.0


class _Command(ProcessProtocol):
    def __init__(self, done: Deferred[Outcome], timeout: float, clock: IReactorTime) -> None:
        self.done = done
        self.timeout = timeout
        self.stderr = b""
        self.killed = False
        self._clock = clock
        self._grace: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def errReceived(self, data: bytes) -> None:
        self.stderr = (self.stderr + data)[-STDERR_TAIL:]

    def processExited(self, reason: Failure) -> None:
        # Its end is known; what it left running may keep its pipes open.
        self._grace = self._clock.callLater(COMMAND_GRACE, self.transport.loseConnection)

    def processEnded(self, reason: Failure) -> None:
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        status, signal = 0, None
        if not reason.check(ProcessDone):
            value = reason.value
            assert isinstance(value, ProcessTerminated)
            status, signal = value.exitCode, value.signal
        self.done.callback(
            commandOutcome(status, signal, self.stderr, self.timeout if self.killed else None)
        )

    def kill(self) -> None:
        """
        Kill the command at its timeout (if it has not exited already).
        """
        if self._grace is not None:
            return
        self.killed = True
        self.transport.signalProcess("KILL")


@implementer(ITarget)
class CommandTarget:
    """
    Run C{argv} plus the message directory, with C{env} and the message's
    variables as its environment and stdin closed.  A command that runs
    longer than C{timeout} seconds is killed.  The attempt ends when the
    command does: what it left running (a job in the background, the child
    of a script killed at the timeout) is waited for no longer than
    L{COMMAND_GRACE}, for the rest of its stderr.
    """

    name = "command"

    def __init__(
        self,
        argv: Sequence[str],
        *,
        reactor: IReactorProcess,
        clock: IReactorTime,
        timeout: float,
        env: Mapping[str, str],
        spool: Path,
    ) -> None:
        self._argv = list(argv)
        self._reactor = reactor
        self._clock = clock
        self._timeout = timeout
        self._env = dict(env)
        self._spool = spool

    def deliver(self, directory: Path) -> Deferred[Outcome]:
        try:
            document = decodeJSON((directory / MESSAGE_JSON).read_bytes())
            messageId = document["id"]
            if not isinstance(messageId, str):
                raise TypeError("the id is not a string")
        except (OSError, ValueError, KeyError, TypeError) as e:
            return succeed(PermanentFailure(f"cannot read {MESSAGE_JSON}: {e}"))
        env = {
            **self._env,
            "MXRECV_ID": deliveryId(messageId),
            "MXRECV_NAME": directory.name,
            "MXRECV_PATH": str(directory),
            "MXRECV_SPOOL": str(self._spool),
        }
        done: Deferred[Outcome] = Deferred()
        protocol = _Command(done, self._timeout, self._clock)
        try:
            self._reactor.spawnProcess(
                protocol, self._argv[0], [*self._argv, str(directory)], env=env
            )
        except OSError as e:
            return succeed(TemporaryFailure(f"cannot run {self._argv[0]}: {e.strerror or e}"))
        timer = self._clock.callLater(self._timeout, protocol.kill)

        def ended(result: Outcome) -> Outcome:
            if timer.active():
                timer.cancel()
            return result

        return done.addBoth(ended)
