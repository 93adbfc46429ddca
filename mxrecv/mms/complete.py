# -*- test-case-name: tests.test_complete -*-
"""
Completing an MMS: C{pending/NAME} (its C{message.json} and C{mms.zip}) is
unpacked and moved to C{new/NAME}; or, when it cannot be had, moved to
C{failed/NAME} with the reason.

Both POST-mode uploads and RetrieveMMS downloads end here, off the request
path, in worker threads.  Each step is restartable: C{parts/} is rebuilt from
scratch and C{message.json} replaced atomically before the final rename, so a
crash leaves the message in C{pending/} to be completed again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial
from pathlib import Path

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from mxrecv.message.model import Message
from mxrecv.mms.unpack import Unpacked, unpackInto
from mxrecv.spool.durable import fsyncPath, removeTree
from mxrecv.spool.layout import FAILED, NEW, PENDING, Attempts
from mxrecv.spool.store import Spool

log = Logger()

# Unpacking is CPU and disk work: two at a time on our two cores, so that it
# never starves the threads that fsync callbacks.
CONCURRENT_COMPLETIONS = 2


def fileDigest(path: Path) -> tuple[int, str]:
    """
    The size and lowercase hex SHA-256 of a file, read in 1 MiB pieces.
    """
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


class Completer:
    """
    Moves MMS out of C{pending/}.

    @param unpack: unpacks a zip into a directory (by default
        L{unpackInto}, with the spool's mode); a parameter so that tests can
        count calls.
    """

    def __init__(
        self,
        spool: Spool,
        *,
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        unpack: Callable[[Path, Path], Unpacked] | None = None,
    ) -> None:
        self._spool = spool
        self._reactor = reactor
        self._pool = pool
        self._unpack = unpack or partial(unpackInto, mode=spool.mode)
        self._limit = DeferredSemaphore(CONCURRENT_COMPLETIONS)
        self._running: dict[str, list[Deferred[Message]]] = {}

    def complete(self, name: str) -> Deferred[Message]:
        """
        Unpack C{pending/NAME/mms.zip} and move the message to C{new/NAME}.
        A call for a message already being completed waits for that
        completion (two at once would unpack over each other).

        @return: fires with the completed message, once it is in C{new/}
            and the spool's observers have been told.
        """
        if name not in self._running:
            self._running[name] = []
            d = self._limit.run(deferToThreadPool, self._reactor, self._pool, self._complete, name)
            d.addCallback(self._landed, name).addBoth(self._completed, name)
        result: Deferred[Message] = Deferred()
        self._running[name].append(result)
        return result

    def _landed(self, done: tuple[Message, Failure | None], name: str) -> Message:
        message, unexpected = done
        if unexpected is not None:
            # Logged here, on the reactor, rather than in the worker.
            log.failure(
                "Unpacking pending/{name} failed unexpectedly: it is in new/ with its zip "
                "but no parts",
                unexpected,
                name=name,
            )
        self._spool.landed(name)
        return message

    def _completed(self, outcome: Message | Failure, name: str) -> None:
        for d in self._running.pop(name):
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(outcome)

    def fail(self, name: str, error: str, attempts: Attempts) -> Deferred[None]:
        """
        Move C{pending/NAME} to C{failed/NAME}, recording C{error} (a sentence)
        and C{attempts} (C{attempts}, the last ones, and C{attempt_count})
        in its C{message.json}.
        """
        return deferToThreadPool(self._reactor, self._pool, self._fail, name, error, attempts)

    def _complete(self, name: str) -> tuple[Message, Failure | None]:
        """
        In a worker: unpack and move to C{new/}.

        @return: the completed message, and the failure of the unpacker if it
            failed in a way it does not foresee (a bug): the message is then
            completed with its zip and no parts, as for a zip refused as
            unsafe, so that the application has it, and the failure is
            logged with its traceback.
        @raise OSError: if our disk fails (then the message stays in
            C{pending/}, to be completed later).
        """
        sync = self._spool.sync
        pending = self._spool.message(PENDING, name)
        message = pending.readMessage()
        if message.mms_sha256 is None:
            size, sha256 = fileDigest(pending.zip)
            message = message.replace(mms_size=size, mms_sha256=sha256)
        partsDir = pending.parts
        removeTree(partsDir)
        unexpected: Failure | None = None
        try:
            unpacked = self._unpack(pending.zip, partsDir)
        except OSError:
            # Our disk, not the zip (the unpacker reports the zip's own
            # faults): the message stays in pending/ to be completed later.
            removeTree(partsDir)
            raise
        except Exception:
            unexpected = Failure()
            removeTree(partsDir)
            unpacked = Unpacked(error="the zip could not be unpacked (an internal error, logged)")
        if partsDir.is_dir():
            for part in partsDir.iterdir():
                fsyncPath(part, sync)
            fsyncPath(partsDir, sync)
        message = message.replace(
            parts=unpacked.parts, text=unpacked.text, parts_error=unpacked.error
        )
        pending.writeMessage(message)
        pending.finishIn(self._spool.dir(NEW))
        return message, unexpected

    def _fail(self, name: str, error: str, attempts: Attempts) -> None:
        pending = self._spool.message(PENDING, name)
        pending.fail(error, attempts)
        pending.finishIn(self._spool.dir(FAILED))
