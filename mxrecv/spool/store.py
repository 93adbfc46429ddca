# -*- test-case-name: tests.test_spool -*-
"""
The spool: a Maildir-like directory that the customer's application reads.

Layout (a public interface, documented in the README)::

    tmp/       work in progress, emptied at start-up
    new/NAME/  one directory per complete message; appears atomically
    cur/       the application's; mxrecv never touches it
    pending/NAME/  MMS accepted but not complete yet (internal)
    failed/NAME/   what could not be completed, with the reason
    state/     mxrecv's own files (the seen-id index, the lock)

A message is acknowledged only when it is durable.  Making it durable costs
fsyncs, so they are shared: each message is written and fsynced in its own
directory under C{tmp/} by a pool of worker threads (concurrent fsyncs share
the filesystem's journal commits), handed over once per turn of the reactor;
then, for a whole group of messages at once (L{mxrecv.spool.commit}), their
names are durably marked seen (one transaction of the seen-id index,
L{mxrecv.spool.seen}), then they are renamed into place and the parent
directories fsynced.

A name is seen before its message is visible, and the index records where
the message is staged until its rename is durable, so that after a crash
start-up rolls a staged message forward (L{mxrecv.spool.recovery}): a name
marked seen always has its message stored, and a stored message always has
its name marked seen (docs/spool.md).  The spool belongs to one server at a
time (L{mxrecv.spool.lock}).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from mxrecv.interfaces import IReactorTimeAndThreads
from mxrecv.message.model import Message
from mxrecv.spool.commit import Accepted, Commit, GroupCommit, SpoolError, Staging
from mxrecv.spool.directory import MessageDirectory
from mxrecv.spool.durable import fsyncPath, makeDirectory, removeTree, writeNew
from mxrecv.spool.layout import MESSAGE_JSON, NEW, TMP, Layout
from mxrecv.spool.lock import SpoolLocked, adoptLock, lockSpool
from mxrecv.spool.mode import SpoolMode
from mxrecv.spool.naming import isName, nameForId
from mxrecv.spool.recovery import emptyTmp, importOldJournal, recoverStaged
from mxrecv.spool.seen import PRUNE_CHUNK, SeenIndex, SeenIndexError

__all__ = [
    "Accepted",
    "Spool",
    "SpoolError",
    "SpoolLocked",
    "Staging",
    "claimSpool",
    "stagingPrefix",
]

log = Logger()


def stagingPrefix(worker: int | None) -> str:
    """
    How the names of a process's staging directories in C{tmp/} start:
    C{in.N} for a server of one process, C{wK.in.N} for its worker K.
    """
    return "" if worker is None else f"w{worker}."


def claimSpool(
    root: Path,
    *,
    sync: bool = True,
    dedupeSeconds: float = 7 * 86400,
    now: float | None = None,
    mode: SpoolMode = SpoolMode(),
) -> int:
    """
    Claim the spool at C{root} for a server of several worker processes,
    before they start: create its layout, take its lock, import the seen-id
    journal of an older mxrecv (once), roll forward every message whose id
    was marked seen before a crash cut its commit short, and empty the rest
    of C{tmp/} (no process of this server has started yet).

    @param sync: C{[spool] fsync}.
    @param dedupeSeconds: C{[spool] dedupe_days}, in seconds: the old
        journal's ids older than that are not imported.
    @param now: the time (unix seconds), for the import.
    @param mode: the permissions of what is made (C{[spool] mode}, C{group}).
    @return: the file descriptor holding the lock, for the workers to
        inherit (L{Spool.open}'s C{lock}); the lock lasts as long as any
        process holds it.
    @raise SpoolLocked: if another server uses this spool.
    @raise SpoolError: if the seen-id index cannot be opened or written.
    """
    root = Path(root).absolute()
    lock = lockSpool(root, mode)
    index = SeenIndex.inSpool(root, sync=sync, mode=mode.file)
    try:
        index.open()
        importOldJournal(root, index, time.time() if now is None else now, dedupeSeconds, sync)
        stuck = recoverStaged(root, index, "", sync)
        emptyTmp(root, "", stuck)
    except SeenIndexError as e:
        os.close(lock)
        raise SpoolError(str(e)) from e
    except BaseException:
        os.close(lock)
        raise
    finally:
        index.close()
    return lock


class Spool:
    """
    Durable storage of messages, shared fsyncs, and the seen-id index.

    @param reactor: runs the callbacks; blocking work goes to C{pool}.
    @param pool: a started L{twisted.python.threadpool.ThreadPool}.
    @param clock: tells the time of acceptance (the reactor by default).
    @param sync: fsync, or not (benchmarks only: acks are then not durable).
    @param pruneChunk: ids forgotten per transaction of the seen index.
    @param worker: the number of this worker process when the server runs
        several (C{[server] workers}); its staging directories in C{tmp/}
        are named apart from the other workers'.
    @param mode: the permissions of everything it writes (C{[spool] mode}
        and C{group}), L{MessageDirectory}s' included.
    """

    def __init__(
        self,
        root: Path,
        *,
        reactor: IReactorTimeAndThreads,
        pool: ThreadPool,
        sync: bool = True,
        dedupeSeconds: float = 7 * 86400,
        clock: IReactorTime | None = None,
        pruneChunk: int = PRUNE_CHUNK,
        worker: int | None = None,
        mode: SpoolMode = SpoolMode(),
    ) -> None:
        self.root = Path(root).absolute()
        self.mode = mode
        self.worker = worker
        self._prefix = stagingPrefix(worker)
        self.sync = sync
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._pool = pool
        self._dedupe = dedupeSeconds
        self._seen = SeenIndex.inSpool(
            self.root,
            sync=sync,
            pruneChunk=pruneChunk,
            mode=mode.file,
        )
        self._commits = GroupCommit(
            self.root,
            self._seen,
            reactor=reactor,
            pool=pool,
            sync=sync,
            landed=self.landed,
            done=self._checkIdle,
        )
        self._lock: int | None = None
        self._inflight: dict[str, list[Callable[[Accepted | Failure], None]]] = {}
        self._idleWaiting: list[Deferred[None]] = []
        self._newObservers: list[Callable[[str], None]] = []
        self._discarding = 0
        self._staged = itertools.count(1)
        self._toPrepare: list[Commit] = []

    @property
    def isOpen(self) -> bool:
        return self._lock is not None

    def dir(self, which: str) -> Path:
        return Layout(self.root).dir(which)

    def message(self, which: str, name: str) -> MessageDirectory:
        """
        The directory of message C{name} in C{which} (L{NEW}, L{PENDING},
        L{FAILED}), whether it is there or not.
        """
        return MessageDirectory.at(self.root, which, name, self.sync, self.mode)

    # Start and stop (blocking, before the server listens and after it stops)

    def open(self, lock: int | None = None) -> None:
        """
        Create the layout, take the lock, open the seen-id index (importing
        the journal of an older mxrecv once), roll forward this process's
        messages whose ids were marked seen before a crash cut their commit
        short, and clear the rest of its leftovers from C{tmp/}.

        @param lock: in a worker process (C{[server] workers} above 1), the
            spool's lock, taken by the parent (L{claimSpool}, which also
            imported the old journal and recovered what every process left)
            and inherited as this file descriptor: the workers of one server
            share the spool, which stays refused to any other server.
        @raise SpoolLocked: if another server uses this spool.
        @raise OSError: if the spool cannot be created.
        @raise SpoolError: if the seen-id index cannot be opened or written.
        """
        if lock is None:
            self._lock = lockSpool(self.root, self.mode)
        else:
            self._lock = adoptLock(self.root, lock)
        try:
            self._seen.open()
            if lock is None:
                importOldJournal(
                    self.root, self._seen, self._clock.seconds(), self._dedupe, self.sync
                )
            self._commits.stuck = recoverStaged(self.root, self._seen, self._prefix, self.sync)
            emptyTmp(self.root, self._prefix, self._commits.stuck)
        except SeenIndexError as e:
            self.close()
            raise SpoolError(str(e)) from e
        except BaseException:
            self.close()
            raise

    def whenIdle(self) -> Deferred[None]:
        """
        Fire once no message is being committed and no staging directory is
        being removed.
        """
        d: Deferred[None] = Deferred()
        self._idleWaiting.append(d)
        self._checkIdle()
        return d

    def _checkIdle(self) -> None:
        if self._inflight or self._commits.busy or self._discarding:
            return
        waiting, self._idleWaiting = self._idleWaiting, []
        for d in waiting:
            d.callback(None)

    def close(self) -> None:
        """
        Close the index and release the spool; a prune still under way ends
        with what it forgot so far.
        """
        self._commits.close()
        try:
            self._seen.close()
        finally:
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None

    # Observers of new/ (delivery to the application)

    def observeNew(self, observer: Callable[[str], None]) -> None:
        """
        Call C{observer} on the reactor with the name of each message that
        lands in C{new/}, once it is durable there (after its 200).
        """
        self._newObservers.append(observer)

    def landed(self, name: str) -> None:
        """
        C{new/NAME} has just appeared: called by the group commit and by
        whatever else moves a message into C{new/} (the MMS completer).
        """
        for observer in self._newObservers:
            try:
                observer(name)
            except Exception:
                log.failure("Observer of new/{name} failed", name=name)

    # Listings (in a worker: a directory can hold many messages)

    def names(
        self, which: str, where: Callable[[MessageDirectory], bool] | None = None
    ) -> Deferred[list[str]]:
        """
        The names of the messages in C{which} (L{NEW}, L{PENDING},
        L{FAILED}), sorted, listed off the reactor; only those for which
        C{where} (called in the worker) is true, if given.
        """

        def names() -> list[str]:
            found = sorted(e.name for e in self.dir(which).iterdir() if isName(e.name))
            if where is None:
                return found
            return [n for n in found if where(self.message(which, n))]

        return deferToThreadPool(self._reactor, self._pool, names)

    # Staging (on the reactor: a mkdir, no fsync)

    def stage(self) -> Staging:
        """
        Make a fresh directory under C{tmp/} for a message being received.

        @raise SpoolError: if it cannot be made.
        """
        try:
            return self._makeStaging()
        except OSError as e:
            raise SpoolError(f"cannot write to the spool: {e.strerror}") from e

    def _makeStaging(self) -> Staging:
        """
        A new, empty directory under C{tmp/}, named from a counter (after
        the worker's prefix): the spool is locked to this server, and this
        process's names are cleared from C{tmp/} when it opens, so names
        cannot clash, and C{mkdtemp}'s random names cost as much as the
        C{mkdir} itself, once per callback.  Thread-safe.
        """
        while True:
            path = self.dir(TMP) / f"{self._prefix}in.{next(self._staged)}"
            try:
                makeDirectory(path, self.mode.directory)
            except FileExistsError:
                continue
            return Staging(path)

    def discard(self, staging: Staging, after: Deferred[None] | None = None) -> Deferred[None]:
        """
        Remove a staging directory that will not be committed, in a worker,
        once C{after} (if given: a file in it being closed) has fired.
        L{whenIdle} waits for it too.
        """
        self._discarding += 1
        if after is None:
            after = succeed(None)
        d = after.addBoth(
            lambda _: deferToThreadPool(self._reactor, self._pool, removeTree, staging.path)
        )
        d.addErrback(lambda f: log.failure("Removing {path}", f, path=str(staging.path)))

        def removed(_: object) -> None:
            self._discarding -= 1
            self._checkIdle()

        return d.addBoth(removed)

    # Accepting messages

    def isSeen(self, messageId: bytes | str) -> Deferred[bool]:
        """
        Whether the id is marked seen (in a worker: the index is on disk).
        """
        name = nameForId(messageId)
        return deferToThreadPool(self._reactor, self._pool, self._seen.__contains__, name)

    def accept(
        self, message: Message, target: str = NEW, staging: Staging | None = None
    ) -> Deferred[Accepted]:
        """
        Make C{message} durable in C{target} (C{new} or C{pending}), with the
        files already written in C{staging}, unless its id was accepted
        before.

        @return: fires with L{Accepted} once the message is durable, or fails
            with L{SpoolError}.  Either way C{staging} is consumed.
        """
        name = nameForId(message.rawId)
        waiting = self._inflight.get(name)
        if waiting is not None:
            return self._afterEarlier(waiting, message, target, staging)
        self._inflight[name] = []
        commit = Commit(name, target, message.encode(), staging, self._clock.seconds())
        if not self._toPrepare:
            self._reactor.callLater(0, self._handOff)
        self._toPrepare.append(commit)
        return commit.result.addBoth(self._settled, name)

    def _afterEarlier(
        self,
        waiting: list[Callable[[Accepted | Failure], None]],
        message: Message,
        target: str,
        staging: Staging | None,
    ) -> Deferred[Accepted]:
        """
        A retry arrived while the first copy is still being committed: it
        gets the first copy's outcome, or another try if that failed.
        """
        result: Deferred[Accepted] = Deferred()

        def settled(outcome: Accepted | Failure) -> None:
            if isinstance(outcome, Failure):
                self.accept(message, target, staging).chainDeferred(result)
            else:
                if staging is not None:
                    self.discard(staging)
                result.callback(Accepted(outcome.name, duplicate=True))

        waiting.append(settled)
        return result

    def _settled(self, outcome: Accepted | Failure, name: str) -> Accepted | Failure:
        waiting = self._inflight.pop(name)
        for settled in waiting:
            settled(outcome)
        self._checkIdle()
        return outcome

    def _handOff(self) -> None:
        """
        On the reactor, once per turn: hand the messages accepted in the
        turn to the worker threads.  Each is prepared in a thread of its own
        (concurrent fsyncs share the filesystem's journal commits), and the
        last one done brings the whole batch back to the reactor: one wake-up
        of the reactor per batch, not per message.
        """
        batch, self._toPrepare = self._toPrepare, []
        remaining = _Countdown(len(batch))
        for commit in batch:
            self._pool.callInThread(self._prepare, commit, batch, remaining)

    def _prepare(self, commit: Commit, batch: list[Commit], remaining: _Countdown) -> None:
        """
        In a worker: prepare one message of a batch; the last of the batch
        hands it to the group commit, on the reactor.
        """
        try:
            self._writeFiles(commit)
        except SpoolError as e:
            commit.error = Failure(e)
        except BaseException:
            commit.error = Failure()
        if remaining.done():
            self._reactor.callFromThread(self._prepared, batch)

    def _prepared(self, batch: list[Commit]) -> None:
        for commit in batch:
            if commit.error is not None:
                commit.fail(commit.error)
        self._commits.add(c for c in batch if c.error is None)

    def _writeFiles(self, commit: Commit) -> None:
        """
        In a worker: write and fsync the message's files in its staging
        directory.
        """
        try:
            if commit.staging is None:
                commit.staging = self._makeStaging()
            else:
                for existing in commit.staging.path.iterdir():
                    fsyncPath(existing, self.sync)
            path = commit.staging.path
            writeNew(path / MESSAGE_JSON, commit.document, self.sync, self.mode.file)
            fsyncPath(path, self.sync)
        except OSError as e:
            if commit.staging is not None:
                removeTree(commit.staging.path)
            raise SpoolError(f"cannot write to the spool: {e.strerror}") from e

    # Forgetting old ids

    def prune(self) -> Deferred[int]:
        """
        Forget ids older than the dedupe window, a chunk with each group
        commit (or, with no callbacks coming, a chunk at a time with short
        pauses between), until none is older.  A prune asked for while one is
        under way joins it.

        @return: fires with the number of ids forgotten.
        """
        return self._commits.prune(self._clock.seconds() - self._dedupe)


class _Countdown:
    """
    Counts the jobs of a batch down, from any thread: L{done} is true for
    the last one.
    """

    def __init__(self, count: int) -> None:
        self._left = count
        self._lock = threading.Lock()

    def done(self) -> bool:
        with self._lock:
            self._left -= 1
            return self._left == 0
