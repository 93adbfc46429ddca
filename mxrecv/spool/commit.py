# -*- test-case-name: tests.test_spool -*-
"""
The group commit (docs/spool.md): the messages whose files are written and
fsynced in their staging directories are made durable and put in place a
group at a time, sharing the fsyncs and one transaction of the seen-id
index, in two steps run in worker threads:

 1. fsync C{tmp/}, then, in one transaction of the index, mark the group's
    names seen, each with a staged row saying where its message is and
    where it goes (and carry one chunk of a prune under way);
 2. rename each message whose name was new into C{new/} or C{pending/},
    and fsync each parent once.

Then, back on the reactor, each message's outcome: stored, a duplicate, or
a L{SpoolError}.  A message whose id is seen stays staged (its row kept)
until its rename is durable, however long that takes
(L{mxrecv.spool.recovery.rollForward}).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from mxrecv.interfaces import IReactorTimeAndThreads
from mxrecv.spool.durable import fsyncPath, removeTree
from mxrecv.spool.layout import NEW, TMP
from mxrecv.spool.recovery import putInPlace, rollForward
from mxrecv.spool.seen import (
    Claim,
    Pruned,
    PruneStep,
    SeenIndex,
    SeenIndexError,
    errorReason,
)

log = Logger()

#: Between two chunks of a prune that no group commit carries (no callbacks
#: coming in), so that other processes' writers find the index free.
PRUNE_PAUSE = 0.01


class SpoolError(Exception):
    """
    A message could not be made durable; the callback is answered 503 so that
    MX Telecom retries it.
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


class GroupCommit:
    """
    Commits the messages it is given (L{add}) a group at a time, and prunes
    the seen-id index a chunk with each group (L{prune}).

    @param root: the spool.
    @param seen: its seen-id index, open.
    @param reactor: runs the outcomes; the steps go to C{pool}.
    @param pool: a started L{twisted.python.threadpool.ThreadPool}.
    @param sync: fsync, or not (see C{[spool] fsync}).
    @param landed: called on the reactor with the name of each message put
        in C{new/}, after the outcomes of its group.
    @param done: called on the reactor after each group.
    @ivar stuck: the claims whose messages are still to be put in place
        (what start-up recovery could not); touched only by the steps, one
        group at a time.
    """

    def __init__(
        self,
        root: Path,
        seen: SeenIndex,
        *,
        reactor: IReactorTimeAndThreads,
        pool: ThreadPool,
        sync: bool,
        landed: Callable[[str], None],
        done: Callable[[], None],
    ) -> None:
        self.root = root
        self.sync = sync
        self._seen = seen
        self._reactor = reactor
        self._pool = pool
        self._landed = landed
        self._done = done
        self._queue: list[Commit] = []
        self._committing = False
        self._pruning: _Pruning | None = None
        self.stuck: list[Claim] = []
        # The staging directories whose staged rows the next transaction
        # deletes (their messages are durably in place).
        self._unstage: list[str] = []

    @property
    def busy(self) -> bool:
        """
        Whether messages are queued or being committed.
        """
        return bool(self._queue) or self._committing

    def add(self, commits: Iterable[Commit]) -> None:
        """
        Commit C{commits} (their files written) with the next group.
        """
        self._queue.extend(commits)
        self._next()

    def close(self) -> None:
        """
        End a prune under way with what it forgot so far.
        """
        pruning, self._pruning = self._pruning, None
        if pruning is not None:
            if pruning.pause is not None and pruning.pause.active():
                pruning.pause.cancel()
            for d in pruning.waiting:
                d.callback(pruning.forgotten)

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

    def _claimGroup(self, group: list[Commit], prune: PruneStep | None) -> None:
        """
        In a worker, the first step of a group commit, then the second, as
        a job of its own (so that a test's pool can stop between the two).
        """
        try:
            claimed: _Claimed | Failure = self._claim(group, prune)
        except BaseException:
            claimed = Failure()
        self._pool.callInThread(self._placeGroup, group, claimed)

    def _claim(self, group: list[Commit], prune: PruneStep | None) -> _Claimed:
        """
        In a worker: make the staging directories' entries durable, then
        mark the names seen in one transaction (with one chunk of a prune
        under way).
        """
        landed: list[tuple[str, str]] = []
        if self.stuck:
            placed = rollForward(self.root, self.stuck, self.sync)
            landed += placed.landed
            self._unstage += placed.settled
            self.stuck = placed.stuck
        claims = [
            Claim(c.name, str(c.staged.relative_to(self.root)), c.target, c.received)
            for c in group
        ]
        try:
            if group:
                # The names are about to be durably seen: their messages'
                # staging directories must be durable first.
                fsyncPath(self.root / TMP, self.sync)
            won, pruned = self._seen.claim(claims, self._unstage, prune)
        except (OSError, SeenIndexError) as e:
            for commit in group:
                removeTree(commit.staged)
            error = SpoolError(f"cannot write to the spool: {errorReason(e)}")
            failed = SeenIndexError(str(error)) if prune is not None else None
            return _Claimed(claims, set(), failed, landed, error)
        self._unstage = []
        return _Claimed(claims, won, pruned, landed)

    def _placeGroup(self, group: list[Commit], claimed: _Claimed | Failure) -> None:
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
        self, group: list[Commit], claims: list[Claim], won: set[str], errors: list[str]
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
                removeTree(commit.staged)
                outcomes.append(Accepted(commit.name, duplicate=True))
                continue
            destination = self.root / commit.target / commit.name
            try:
                moved = putInPlace(commit.staged, destination)
            except OSError as e:
                self.stuck.append(claim)
                errors.append(_stuckError(claim, e))
                outcomes.append(SpoolError(f"cannot write to the spool: {e.strerror}"))
                continue
            parents.add(destination.parent)
            if moved:
                renamed.append(claim)
                outcomes.append(Accepted(commit.name, duplicate=False))
            else:
                # Already there (put by hand?): answered as stored, so its
                # entry must be durable too.
                self._unstage.append(claim.dir)
                outcomes.append(Accepted(commit.name, duplicate=True))
        try:
            for parent in parents:
                fsyncPath(parent, self.sync)
        except OSError as e:
            # In place, but not durably: their rows stay until a later
            # fsync of their parents succeeds.
            error = SpoolError(f"cannot write to the spool: {e.strerror}")
            outcomes = [error if isinstance(o, Accepted) else o for o in outcomes]
            self.stuck += renamed
            errors += [_stuckError(claim, e) for claim in renamed]
        else:
            self._unstage += [claim.dir for claim in renamed]
        return outcomes

    def _committed(
        self, result: _GroupResult | Failure, group: list[Commit]
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
                        self._landed(commit.name)
                else:
                    commit.fail(outcome)
            for target, name in result.landed:
                log.info("Moved the staged message {name} to {target}/", name=name, target=target)
                if target == NEW:
                    self._landed(name)
            if isinstance(result.pruned, SeenIndexError):
                self._pruneFailed(Failure(result.pruned))
            elif result.pruned is not None:
                self._pruneProgress(result.pruned, alone=not group)
        self._next()
        # A group of prunes only settles no message: tell of it too.
        self._done()

    # Forgetting old ids

    def prune(self, cutoff: float) -> Deferred[int]:
        """
        Forget ids older than C{cutoff} (unix seconds), a chunk with each
        group commit (or, with no callbacks coming, a chunk at a time with
        short pauses between), until none is older.  A prune asked for while
        one is under way joins it.

        @return: fires with the number of ids forgotten.
        """
        d: Deferred[int] = Deferred()
        if self._pruning is not None:
            self._pruning.waiting.append(d)
            return d
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


def _stuckError(claim: Claim, e: OSError) -> str:
    return (
        f"cannot move {claim.dir} to {claim.target}/{claim.name} ({e.strerror}): its id is "
        "marked seen; it stays staged, to be moved with the next group"
    )


class Commit:
    """
    One message on its way through L{mxrecv.spool.store.Spool.accept}: its
    document, written into C{staging} (made for it if L{None}) before it
    joins a group, and the L{Deferred} of its outcome.
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

    @property
    def staged(self) -> Path:
        """
        Its staging directory, once its files are written (before it joins
        a group).
        """
        assert self.staging is not None
        return self.staging.path

    def fail(self, reason: Failure | Exception) -> None:
        self.result.errback(reason)
