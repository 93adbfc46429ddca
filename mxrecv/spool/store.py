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
the filesystem's journal commits), and for a whole group of messages at once
(group commit), one group at a time, their names are durably marked seen
(one transaction of the seen index), then they are renamed into place and
the parent directories fsynced.

A name is seen before its message is visible, and the index records where
the message is staged until its rename is durable, so that after a crash
start-up rolls a staged message forward: a name marked seen always has its
message stored, and a stored message always has its name marked seen
(docs/spool.md).
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
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
    SEEN_DB,
    SEEN_JOURNAL,
    SEEN_LOCK,
    STATE,
    TMP,
    Layout,
)
from mxrecv.spool.naming import isName, nameForId
from mxrecv.spool.seen import (
    PRUNE_CHUNK,
    Claim,
    Pruned,
    PruneStep,
    SeenIndex,
    SeenIndexError,
)
from mxrecv.spool.seenjournal import importJournal

log = Logger()

#: Between two chunks of a prune that no group commit carries (no callbacks
#: coming in), so that other processes' writers find the index free.
PRUNE_PAUSE = 0.01


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


def claimSpool(
    root: Path,
    *,
    sync: bool = True,
    dedupeSeconds: float = 7 * 86400,
    now: float | None = None,
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
    @return: the file descriptor holding the lock, for the workers to
        inherit (L{Spool.open}'s C{lock}); the lock lasts as long as any
        process holds it.
    @raise SpoolLocked: if another server uses this spool.
    @raise SpoolError: if the seen-id index cannot be opened or written.
    """
    root = Path(root).absolute()
    lock = _lock(root)
    index = SeenIndex(root / STATE / SEEN_DB, root / STATE / SEEN_LOCK, sync=sync)
    try:
        index.open()
        _importJournal(root, index, time.time() if now is None else now, dedupeSeconds, sync)
        stuck = _recover(root, index, "", sync)
        _emptyTmp(root, "", stuck)
    except SeenIndexError as e:
        os.close(lock)
        raise SpoolError(str(e)) from e
    except BaseException:
        os.close(lock)
        raise
    finally:
        index.close()
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


@frozen
class _Placed:
    """
    What became of staged messages rolled forward: the names now in place
    (C{landed}, as C{(target, name)}), the staging directories whose staged
    rows can go (C{settled}), and the claims still staged (C{stuck}).
    """

    landed: list[tuple[str, str]]
    settled: list[str]
    stuck: list[Claim]


@frozen
class _Claimed:
    """
    The first step of a group commit: the group's claims, the names that
    were new (C{won}), what the prune did, what the leftovers rolled
    forward put in place, or the C{error} that failed the whole group.
    """

    claims: list[Claim]
    won: set[str]
    pruned: Pruned | SeenIndexError | None
    landed: list[tuple[str, str]]
    error: SpoolError | None = None


@frozen
class _GroupResult:
    outcomes: list[Accepted | SpoolError]
    pruned: Pruned | SeenIndexError | None
    landed: list[tuple[str, str]]
    errors: list[str]


@define
class _Pruning:
    step: PruneStep
    waiting: list[Deferred[int]]
    forgotten: int = 0
    pause: IDelayedCall | None = field(default=None)


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
        pruneChunk: int = PRUNE_CHUNK,
        worker: int | None = None,
    ) -> None:
        self.root = Path(root).absolute()
        self.worker = worker
        self._prefix = stagingPrefix(worker)
        self.sync = sync
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._pool = pool
        self._dedupe = dedupeSeconds
        self._seen = SeenIndex(
            self.root / STATE / SEEN_DB,
            self.root / STATE / SEEN_LOCK,
            sync=sync,
            pruneChunk=pruneChunk,
        )
        self._lock: int | None = None
        self._inflight: dict[str, list[Callable[[Accepted | Failure], None]]] = {}
        self._queue: list[_Commit] = []
        self._committing = False
        self._pruning: _Pruning | None = None
        self._idleWaiting: list[Deferred[None]] = []
        self._newObservers: list[Callable[[str], None]] = []
        self._discarding = 0
        self._staged = itertools.count(1)
        self._toPrepare: list[_Commit] = []
        # Touched only by the group commit, one job at a time: the staging
        # directories whose staged rows the next transaction deletes, and
        # the claims whose messages are still to be rolled forward.
        self._unstage: list[str] = []
        self._stuck: list[Claim] = []

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
            self._lock = _lock(self.root)
        else:
            self._lock = _adoptLock(self.root, lock)
        try:
            self._seen.open()
            if lock is None:
                _importJournal(
                    self.root, self._seen, self._clock.seconds(), self._dedupe, self.sync
                )
            self._stuck = _recover(self.root, self._seen, self._prefix, self.sync)
            _emptyTmp(self.root, self._prefix, self._stuck)
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
        if self._inflight or self._queue or self._committing or self._discarding:
            return
        waiting, self._idleWaiting = self._idleWaiting, []
        for d in waiting:
            d.callback(None)

    def close(self) -> None:
        """
        Close the index and release the spool; a prune still under way ends
        with what it forgot so far.
        """
        pruning, self._pruning = self._pruning, None
        if pruning is not None:
            if pruning.pause is not None and pruning.pause.active():
                pruning.pause.cancel()
            for d in pruning.waiting:
                d.callback(pruning.forgotten)
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
        commit = _Commit(name, target, message.encode(), staging, self._clock.seconds())
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

    def _prepare(self, commit: _Commit, batch: list[_Commit], remaining: _Countdown) -> None:
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

    def _prepared(self, batch: list[_Commit]) -> None:
        for commit in batch:
            if commit.error is None:
                self._queue.append(commit)
            else:
                commit.fail(commit.error)
        self._next()

    def _writeFiles(self, commit: _Commit) -> None:
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
            writeNew(path / MESSAGE_JSON, commit.document, self.sync)
            fsyncPath(path, self.sync)
        except OSError as e:
            if commit.staging is not None:
                removeTree(commit.staging.path)
            raise SpoolError(f"cannot write to the spool: {e.strerror}") from e

    # Group commit

    def _next(self) -> None:
        if self._committing:
            return
        pruning = self._pruning
        # A group carries a chunk of the prune under way; with no group,
        # a chunk goes alone, after a pause.
        if not self._queue and (pruning is None or pruning.pause is not None):
            return
        step = pruning.step if pruning is not None else None
        group, self._queue = self._queue, []
        self._committing = True
        self._pool.callInThread(self._claimGroup, group, step)

    def _claimGroup(self, group: list[_Commit], prune: PruneStep | None) -> None:
        """
        In a worker, the first step of a group commit, then the second, as
        a job of its own (so that a test's pool can stop between the two).
        """
        try:
            claimed: _Claimed | Failure = self._claim(group, prune)
        except BaseException:
            claimed = Failure()
        self._pool.callInThread(self._placeGroup, group, claimed)

    def _claim(self, group: list[_Commit], prune: PruneStep | None) -> _Claimed:
        """
        In a worker: make the staging directories' entries durable, then
        mark the names seen in one transaction (with one chunk of a prune
        under way).
        """
        landed: list[tuple[str, str]] = []
        if self._stuck:
            placed = _rollForward(self.root, self._stuck, self.sync)
            landed += placed.landed
            self._unstage += placed.settled
            self._stuck = placed.stuck
        claims = [
            Claim(c.name, str(c.staging.path.relative_to(self.root)), c.target, c.received)
            for c in group
        ]
        try:
            if group:
                # The names are about to be durably seen: their messages'
                # staging directories must be durable first.
                fsyncPath(self.dir(TMP), self.sync)
            won, pruned = self._seen.claim(claims, self._unstage, prune)
        except (OSError, SeenIndexError) as e:
            for commit in group:
                removeTree(commit.staging.path)
            error = SpoolError(f"cannot write to the spool: {_reason(e)}")
            failed = SeenIndexError(str(error)) if prune is not None else None
            return _Claimed(claims, set(), failed, landed, error)
        self._unstage = []
        return _Claimed(claims, won, pruned, landed)

    def _placeGroup(self, group: list[_Commit], claimed: _Claimed | Failure) -> None:
        """
        In a worker, the second step: put the messages in place; then back
        to the reactor with the outcomes.
        """
        result: _GroupResult | Failure
        if isinstance(claimed, Failure):
            result = claimed
        elif claimed.error is not None:
            error = claimed.error
            result = _GroupResult([error] * len(group), claimed.pruned, claimed.landed, [])
        else:
            try:
                errors: list[str] = []
                outcomes = self._place(group, claimed.claims, claimed.won, errors)
                result = _GroupResult(outcomes, claimed.pruned, claimed.landed, errors)
            except BaseException:
                result = Failure()
        self._reactor.callFromThread(self._committed, result, group)

    def _place(
        self, group: list[_Commit], claims: list[Claim], won: set[str], errors: list[str]
    ) -> list[Accepted | SpoolError]:
        """
        In a worker, once the names are durably seen: rename each message
        whose name was new into place, and fsync the parents.  A message
        that cannot be put in place is answered 503 but stays staged, its
        name seen, to be moved into place with the next group (or at
        start-up): another process may have answered MX Telecom's retry of
        it as a duplicate already, and the retries to come are too.
        """
        outcomes: list[Accepted | SpoolError] = []
        parents: set[Path] = set()
        renamed: list[Claim] = []
        for commit, claim in zip(group, claims):
            if commit.name not in won:
                removeTree(commit.staging.path)
                outcomes.append(Accepted(commit.name, duplicate=True))
                continue
            destination = self.dir(commit.target) / commit.name
            try:
                os.rename(commit.staging.path, destination)
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    # Already there (put by hand?): answered as stored, so
                    # its entry must be durable too.
                    removeTree(commit.staging.path)
                    parents.add(destination.parent)
                    self._unstage.append(claim.dir)
                    outcomes.append(Accepted(commit.name, duplicate=True))
                else:
                    self._stuck.append(claim)
                    errors.append(_stuckError(claim, e))
                    outcomes.append(SpoolError(f"cannot write to the spool: {e.strerror}"))
                continue
            parents.add(destination.parent)
            renamed.append(claim)
            outcomes.append(Accepted(commit.name, duplicate=False))
        try:
            for parent in parents:
                fsyncPath(parent, self.sync)
        except OSError as e:
            # In place, but not durably: their rows stay until a later
            # fsync of their parents succeeds.
            error = SpoolError(f"cannot write to the spool: {e.strerror}")
            outcomes = [error if isinstance(o, Accepted) else o for o in outcomes]
            self._stuck += renamed
            errors += [_stuckError(claim, e) for claim in renamed]
        else:
            self._unstage += [claim.dir for claim in renamed]
        return outcomes

    def _committed(
        self, result: _GroupResult | Failure, group: list[_Commit]
    ) -> None:
        self._committing = False
        if isinstance(result, Failure):
            log.failure("Group commit failed", result)
            for commit in group:
                commit.fail(SpoolError("cannot write to the spool"))
            self._pruneFailed(result)
        else:
            for error in result.errors:
                log.error("Group commit: {error}", error=error)
            for commit, outcome in zip(group, result.outcomes):
                if isinstance(outcome, Accepted):
                    commit.result.callback(outcome)
                    # After the 200: delivery must never delay an ack.
                    if commit.target == NEW and not outcome.duplicate:
                        self.landed(commit.name)
                else:
                    commit.fail(outcome)
            for target, name in result.landed:
                log.info("Moved the staged message {name} to {target}/", name=name, target=target)
                if target == NEW:
                    self.landed(name)
            if isinstance(result.pruned, SeenIndexError):
                self._pruneFailed(Failure(result.pruned))
            elif result.pruned is not None:
                self._pruneProgress(result.pruned, alone=not group)
        self._next()
        # A group of prunes only settles no message: check here too.
        self._checkIdle()

    # Forgetting old ids

    def prune(self) -> Deferred[int]:
        """
        Forget ids older than the dedupe window, a chunk with each group
        commit (or, with no callbacks coming, a chunk at a time with short
        pauses between), until none is older.  A prune asked for while one is
        under way joins it.

        @return: fires with the number of ids forgotten.
        """
        d: Deferred[int] = Deferred()
        if self._pruning is not None:
            self._pruning.waiting.append(d)
            return d
        cutoff = self._clock.seconds() - self._dedupe
        self._pruning = _Pruning(PruneStep(cutoff), [d])
        self._next()
        return d

    def _pruneProgress(self, pruned: Pruned, alone: bool) -> None:
        pruning = self._pruning
        if pruning is None:
            return
        pruning.forgotten += pruned.forgotten
        pruning.step = pruned.next(pruning.step)
        if pruned.done:
            self._pruning = None
            for d in pruning.waiting:
                d.callback(pruning.forgotten)
        elif alone:
            pruning.pause = self._reactor.callLater(PRUNE_PAUSE, self._resumePrune, pruning)

    def _resumePrune(self, pruning: _Pruning) -> None:
        pruning.pause = None
        self._next()

    def _pruneFailed(self, reason: Failure) -> None:
        pruning, self._pruning = self._pruning, None
        if pruning is not None:
            for d in pruning.waiting:
                d.errback(reason)


def _importJournal(
    root: Path, index: SeenIndex, now: float, dedupeSeconds: float, sync: bool
) -> None:
    """
    Import the seen-id journal of an older mxrecv, if it is there.
    """
    journal = root / STATE / SEEN_JOURNAL
    if not journal.is_file():
        return
    present = [
        entry.name
        for which in (NEW, PENDING, FAILED)
        for entry in (root / which).iterdir()
        if isName(entry.name)
    ]
    added = importJournal(
        index, journal, cutoff=now - dedupeSeconds, alsoPresent=present, now=now, sync=sync
    )
    log.info(
        "Imported {count} ids from the seen-id journal {journal} into {index}",
        count=added,
        journal=str(journal),
        index=str(index.path),
    )


def _recover(root: Path, index: SeenIndex, prefix: str, sync: bool) -> list[Claim]:
    """
    Blocking, at start-up: roll forward the staged messages of the process
    whose staging names start with C{prefix} (all of them for C{""}), and
    delete their staged rows.

    @return: the claims that could not be rolled forward (logged): their
        staging directories are kept, to be tried again.
    """
    # A crash between a rename and its directory's fsync leaves a message
    # visible but not durable: make it durable before its staged row goes.
    for which in (NEW, PENDING, FAILED):
        fsyncPath(root / which, sync)
    claims = [c for c in index.staged() if Path(c.dir).name.startswith(prefix)]
    placed = _rollForward(root, claims, sync)
    index.settle(placed.settled)
    for target, name in placed.landed:
        log.info("Moved the staged message {name} to {target}/", name=name, target=target)
    for claim in placed.stuck:
        log.error(
            "Cannot move the staged message {dir} to {target}/{name}: its id is "
            "marked seen; will try again with each group commit",
            dir=claim.dir,
            target=claim.target,
            name=claim.name,
        )
    return placed.stuck


def _emptyTmp(root: Path, prefix: str, keep: Sequence[Claim]) -> None:
    """
    Remove what a previous run of the process left in C{tmp/} (its staging
    names start with C{prefix}; C{""} for all), but for the staging
    directories of C{keep}.
    """
    kept = {root / c.dir for c in keep}
    for entry in (root / TMP).iterdir():
        if entry.name.startswith(prefix) and entry not in kept:
            removeTree(entry)


def _rollForward(root: Path, claims: Sequence[Claim], sync: bool) -> _Placed:
    """
    Blocking: rename the messages of C{claims} (marked seen, with their
    staging directories) into place, and fsync the parents.  A claim whose
    staging directory is gone was renamed already: its parent is fsynced
    too (that rename's own fsync may have failed) before its row goes.
    """
    landed: list[tuple[str, str]] = []
    settled: list[str] = []
    stuck: list[Claim] = []
    parents: dict[Path, list[tuple[Claim, bool]]] = {}
    for claim in claims:
        source = _stagedPath(root, claim)
        if source is None:
            settled.append(claim.dir)
            continue
        destination = root / claim.target / claim.name
        moved = source.exists()
        if moved:
            try:
                os.rename(source, destination)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    stuck.append(claim)
                    continue
                removeTree(source)
                moved = False
        parents.setdefault(destination.parent, []).append((claim, moved))
    for parent, placed in parents.items():
        try:
            fsyncPath(parent, sync)
        except OSError:
            # In place, not yet durable: their rows stay, for the next try.
            stuck += [claim for claim, _ in placed]
            continue
        settled += [claim.dir for claim, _ in placed]
        landed += [(claim.target, claim.name) for claim, moved in placed if moved]
    return _Placed(landed, settled, stuck)


def _stagedPath(root: Path, claim: Claim) -> Path | None:
    """
    The staging directory of a claim read from the index, or C{None} if the
    row is not one this spool could have written.
    """
    parts = Path(claim.dir).parts
    if (
        len(parts) != 2
        or parts[0] != TMP
        or parts[1] in ("", ".", "..")
        or claim.target not in (NEW, PENDING)
        or not isName(claim.name)
    ):
        return None
    return root / claim.dir


def _stuckError(claim: Claim, e: OSError) -> str:
    return (
        f"cannot move {claim.dir} to {claim.target}/{claim.name} ({e.strerror}): its id is "
        "marked seen; it stays staged, to be moved with the next group"
    )


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e)


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
        self.error: Failure | None = None

    def fail(self, reason: Failure | Exception) -> None:
        self.result.errback(reason)
