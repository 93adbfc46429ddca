# -*- test-case-name: tests.test_spool -*-
"""
The spool: a Maildir-like directory that the customer's application reads.

Layout (a public interface, documented in the README)::

    tmp/       work in progress, emptied at start-up
    new/NAME/  one directory per complete message; appears atomically
    cur/       the application's; mxrecv never touches it
    pending/NAME/  MMS accepted but not complete yet (internal)
    failed/NAME/   what could not be completed, with the reason
    state/     mxrecv's own files (the seen-id journal, the lock)

A message is acknowledged only when it is durable.  Making it durable costs
fsyncs, so they are shared: each message is written and fsynced in its own
directory under C{tmp/} by a pool of worker threads (concurrent fsyncs share
the filesystem's journal commits), and the renames into place, the fsync of
the parent directories and the seen-id journal line are done for a whole
group of messages at once (group commit), one group at a time.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from mxrecv.message.model import Message
from mxrecv.spool.directory import MessageDirectory
from mxrecv.spool.durable import fsyncPath, removeTree, writeNew
from mxrecv.spool.layout import (
    DIRECTORIES,
    FAILED,
    LOCK,
    MESSAGE_JSON,
    NEW,
    PENDING,
    SEEN,
    STATE,
    TMP,
    Layout,
)
from mxrecv.spool.naming import isName, nameForId
from mxrecv.spool.seen import SeenIndex

log = Logger()


class SpoolError(Exception):
    """
    A message could not be made durable; the callback is answered 503 so that
    MX Telecom retries it.
    """


class SpoolLocked(Exception):
    """
    Another process holds the spool.
    """


@frozen
class Accepted:
    """
    The outcome of L{Spool.accept}: the message is durable in the spool under
    C{name}, stored by this call or (C{duplicate}) by an earlier one.
    """

    name: str
    duplicate: bool


@frozen
class Staging:
    """
    A directory under C{tmp/} where a message's files are written (an
    uploaded zip, for instance) before L{Spool.accept} commits it.
    """

    path: Path

    def file(self, name: str) -> Path:
        return self.path / name


def stagingPrefix(worker: int | None) -> str:
    """
    How the names of a process's staging directories in C{tmp/} start:
    C{in.N} for a server of one process, C{wK.in.N} for its worker K.
    """
    return "" if worker is None else f"w{worker}."


def claimSpool(root: Path) -> int:
    """
    Claim the spool at C{root} for a server of several worker processes,
    before they start: create its layout, take its lock, and empty C{tmp/}
    (no process of this server has started yet).

    @return: the file descriptor holding the lock, for the workers to
        inherit (L{Spool.open}'s C{lock}); the lock lasts as long as any
        process holds it.
    @raise SpoolLocked: if another server uses this spool.
    """
    root = Path(root).absolute()
    lock = _lock(root)
    try:
        for leftover in (root / TMP).iterdir():
            removeTree(leftover)
    except BaseException:
        os.close(lock)
        raise
    return lock


def _lock(root: Path) -> int:
    """
    Create the spool's layout and take its lock, exclusively.
    """
    for which in DIRECTORIES:
        (root / which).mkdir(parents=True, exist_ok=True)
    lock = os.open(root / STATE / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        raise SpoolLocked(f"another process is using the spool {root}") from None
    return lock


def _adoptLock(root: Path, fd: int) -> int:
    """
    Check that the inherited C{fd} is this spool's lock file, holding its
    lock (taking it again through the same open file is a no-op); it is
    then closed on exec, so that no process this one runs holds it.
    """
    try:
        held, path = os.fstat(fd), os.stat(root / STATE / LOCK)
    except OSError as e:
        raise SpoolLocked(f"the inherited lock of {root} is not usable: {e.strerror}") from None
    if (held.st_dev, held.st_ino) != (path.st_dev, path.st_ino):
        raise SpoolLocked(f"the inherited lock is not the lock of the spool {root}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SpoolLocked(f"another process is using the spool {root}") from None
    os.set_inheritable(fd, False)
    return fd


class Spool:
    """
    Durable storage of messages, shared fsyncs, and the seen-id index.

    @param reactor: runs the callbacks; blocking work goes to C{pool}.
    @param pool: a started L{twisted.python.threadpool.ThreadPool}.
    @param clock: tells the time of acceptance (the reactor by default).
    @param sync: fsync, or not (benchmarks only: acks are then not durable).
    @param worker: the number of this worker process when the server runs
        several (C{[server] workers}); its staging directories in C{tmp/}
        are named apart from the other workers'.
    """

    def __init__(
        self,
        root: Path,
        *,
        reactor: Any,
        pool: Any,
        sync: bool = True,
        dedupeSeconds: float = 7 * 86400,
        clock: Any = None,
        worker: int | None = None,
    ) -> None:
        self.root = Path(root).absolute()
        self.worker = worker
        self._prefix = stagingPrefix(worker)
        self.sync = sync
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._pool = pool
        self._seen = SeenIndex(self.root / STATE / SEEN, dedupeSeconds, sync)
        self._lock: int | None = None
        self._inflight: dict[str, list[Callable[[Accepted | Failure], None]]] = {}
        self._queue: list[_Commit] = []
        self._committing = False
        self._pruneWaiting: list[Deferred[int]] = []
        self._idleWaiting: list[Deferred[None]] = []
        self._newObservers: list[Callable[[str], None]] = []
        self._discarding = 0
        self._staged = itertools.count(1)

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
        return MessageDirectory.at(self.root, which, name, self.sync)

    # Start and stop (blocking, before the server listens and after it stops)

    def open(self, lock: int | None = None) -> None:
        """
        Create the layout, take the lock, clear this process's leftovers
        from C{tmp/}, and load the seen-id index.

        @param lock: in a worker process (C{[server] workers} above 1), the
            spool's lock, taken by the parent (L{claimSpool}) and inherited
            as this file descriptor: the workers of one server share the
            spool, which stays refused to any other server.
        @raise SpoolLocked: if another server uses this spool.
        @raise OSError: if the spool cannot be created.
        """
        if lock is None:
            self._lock = _lock(self.root)
        else:
            self._lock = _adoptLock(self.root, lock)
        for leftover in self._leftovers():
            removeTree(leftover)
        # A crash between a rename and its directory's fsync leaves a message
        # visible but not durable: make it durable before it counts as seen.
        for which in (NEW, PENDING, FAILED):
            fsyncPath(self.dir(which), self.sync)
        present = [
            entry.name
            for which in (NEW, PENDING, FAILED)
            for entry in self.dir(which).iterdir()
            if isName(entry.name)
        ]
        self._seen.load(self._clock.seconds(), present)

    def _leftovers(self) -> list[Path]:
        """
        What a previous run of this process left in C{tmp/}: all of it for a
        server of one process; a worker's own entries only (its staging
        names start with its prefix), since the other workers are running.
        """
        return [
            entry for entry in self.dir(TMP).iterdir() if entry.name.startswith(self._prefix)
        ]

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
        if self._inflight or self._queue or self._committing or self._discarding:
            return
        waiting, self._idleWaiting = self._idleWaiting, []
        for d in waiting:
            d.callback(None)

    def close(self) -> None:
        try:
            self._seen.close()
        except OSError as e:
            log.error(
                "Cannot journal accepted ids in {journal} ({error}) at shutdown: after a "
                "restart, a retry of them that MX Telecom sends will be stored again once "
                "the application has taken the first copy from new/",
                journal=str(self.dir(STATE) / SEEN),
                error=e.strerror,
            )
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
                os.mkdir(path, 0o700)
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

    def isSeen(self, messageId: bytes | str) -> bool:
        return nameForId(messageId) in self._seen

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
        if name in self._seen:
            if staging is not None:
                self.discard(staging)
            return succeed(Accepted(name, duplicate=True))
        waiting = self._inflight.get(name)
        if waiting is not None:
            return self._afterEarlier(waiting, message, target, staging)
        self._inflight[name] = []
        commit = _Commit(name, target, message.encode(), staging, self._clock.seconds())
        d = deferToThreadPool(self._reactor, self._pool, self._prepare, commit)
        d.addCallbacks(lambda _: self._enqueue(commit), commit.fail)
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
        if not isinstance(outcome, Failure):
            self._seen.add(name, self._clock.seconds())
        for settled in waiting:
            settled(outcome)
        self._checkIdle()
        return outcome

    def _prepare(self, commit: _Commit) -> None:
        """
        In a worker: write and fsync the message's files in its staging
        directory.  Concurrent calls share the filesystem's journal commits.
        """
        try:
            if commit.staging is None:
                commit.staging = self._makeStaging()
            else:
                for existing in commit.staging.path.iterdir():
                    fsyncPath(existing, self.sync)
            path = commit.staging.path
            writeNew(path / MESSAGE_JSON, commit.document, self.sync)
            fsyncPath(path, self.sync)
        except OSError as e:
            if commit.staging is not None:
                removeTree(commit.staging.path)
            raise SpoolError(f"cannot write to the spool: {e.strerror}") from e

    # Group commit

    def _enqueue(self, commit: _Commit) -> None:
        self._queue.append(commit)
        self._next()

    def _next(self) -> None:
        if self._committing or not (self._queue or self._pruneWaiting):
            return
        group, self._queue = self._queue, []
        prunes, self._pruneWaiting = self._pruneWaiting, []
        self._committing = True
        d = deferToThreadPool(self._reactor, self._pool, self._commitGroup, group, bool(prunes))
        d.addBoth(self._committed, group, prunes)

    def _commitGroup(
        self, group: list[_Commit], prune: bool
    ) -> tuple[list, float | Failure | None, str | None]:
        """
        In a worker, one group at a time: rename each prepared message into
        place, fsync each parent directory once, and journal the names once.
        """
        outcomes: list[Accepted | SpoolError] = []
        parents: set[Path] = set()
        for commit in group:
            destination = self.dir(commit.target) / commit.name
            try:
                os.rename(commit.staging.path, destination)
            except OSError as e:
                removeTree(commit.staging.path)
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    # Answered as stored: so its entry must be durable too.
                    parents.add(destination.parent)
                    outcomes.append(Accepted(commit.name, duplicate=True))
                else:
                    outcomes.append(SpoolError(f"cannot write to the spool: {e.strerror}"))
                continue
            parents.add(destination.parent)
            outcomes.append(Accepted(commit.name, duplicate=False))
        try:
            for parent in parents:
                fsyncPath(parent, self.sync)
        except OSError as e:
            error = SpoolError(f"cannot write to the spool: {e.strerror}")
            self._unrename(group, outcomes)
            outcomes = [error if isinstance(o, Accepted) else o for o in outcomes]
        journalError: str | None = None
        try:
            self._seen.append(
                (c.name, c.received)
                for c, o in zip(group, outcomes)
                if isinstance(o, Accepted)
            )
        except OSError as e:
            # The messages are durable where they are: answer 200.  Their
            # names are still remembered in memory, and journaled next time.
            journalError = e.strerror
        pruned: float | Failure | None = None
        if prune:
            try:
                pruned = self._seen.rewrite(self._clock.seconds())
            except OSError:
                # Only the prune fails: the messages of this group are fine.
                pruned = Failure()
        return outcomes, pruned, journalError

    def _unrename(self, group: list[_Commit], outcomes: list) -> None:
        """
        In a worker, after a failed directory fsync: take the messages this
        group renamed back out of their targets, so that none that will be
        answered 503 (and retried by MX Telecom) is left for the
        application.  Best effort: one that cannot be moved back stays, and
        the retry finds it there (a duplicate).
        """
        for commit, outcome in zip(group, outcomes):
            if isinstance(outcome, Accepted) and not outcome.duplicate:
                try:
                    os.rename(self.dir(commit.target) / commit.name, commit.staging.path)
                except OSError:
                    continue
                removeTree(commit.staging.path)

    def _committed(
        self,
        result: tuple[list, float | Failure | None, str | None] | Failure,
        group: list[_Commit],
        prunes: list[Deferred],
    ) -> None:
        self._committing = False
        if isinstance(result, Failure):
            log.failure("Group commit failed", result)
            for commit in group:
                commit.fail(SpoolError("cannot write to the spool"))
            for d in prunes:
                d.errback(result)
        else:
            outcomes, pruned, journalError = result
            if journalError is not None:
                log.error(
                    "Cannot journal accepted ids in {journal} ({error}): the messages are "
                    "stored; their ids will be journaled with the next group",
                    journal=str(self.dir(STATE) / SEEN),
                    error=journalError,
                )
            for commit, outcome in zip(group, outcomes):
                if isinstance(outcome, Accepted):
                    commit.result.callback(outcome)
                    # After the 200: delivery must never delay an ack.
                    if commit.target == NEW and not outcome.duplicate:
                        self.landed(commit.name)
                else:
                    commit.fail(outcome)
            if isinstance(pruned, Failure):
                for d in prunes:
                    d.errback(pruned)
            elif prunes:
                forgotten = self._seen.forget(pruned)
                for d in prunes:
                    d.callback(forgotten)
        self._next()
        # A group of prunes only settles no message: check here too.
        self._checkIdle()

    def prune(self) -> Deferred[int]:
        """
        Forget ids older than the dedupe window, in the next group commit.

        @return: fires with the number of ids forgotten.
        """
        d: Deferred[int] = Deferred()
        self._pruneWaiting.append(d)
        self._next()
        return d


class _Commit:
    """
    One message on its way through L{Spool.accept}.
    """

    def __init__(
        self, name: str, target: str, document: bytes, staging: Staging | None, received: float
    ) -> None:
        self.name = name
        self.target = target
        self.document = document
        self.staging = staging
        self.received = received
        self.result: Deferred[Accepted] = Deferred()

    def fail(self, reason: Failure | Exception) -> None:
        self.result.errback(reason)
