# -*- test-case-name: tests.test_retrieve -*-
"""
GET-mode MMS: download each zip that MX Telecom notified us of from
RetrieveMMS, before its expiry, and hand it to the L{Completer}.

L{mxrecv.mms.fetch.Fetcher} makes each attempt (streamed to disk by the
server's L{mxrecv.spool.writer.FileWriters}, written and hashed in their worker
threads, with a deadline and a byte cap).  L{Retriever} runs the attempts as
L{mxrecv.mms.schedule.Schedule} decides, keeps
each message's attempts in C{pending/NAME/retrieve.json} so that a restart
resumes with its history, and moves the message on: to C{new/} once
C{mms.zip} is in place, or to C{failed/} when its expiry passes.

The RetrieveMMS password travels in the query string, so no URL derived
from the request is ever logged or recorded: log lines name the configured
base URL and the message id, and outcome sentences are made of what happened
(see L{mxrecv.mms.fetch}), never of an error's message.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from datetime import datetime, timedelta, tzinfo
from typing import Any, Protocol

from attrs import evolve, frozen
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, DeferredLock
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime

# Not re-exported by twisted.internet.ssl, but the documented way to extend trust.
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from mxrecv.config import RetrieveConfig
from mxrecv.interfaces import IServerReactor
from mxrecv.message.dates import parseDate
from mxrecv.message.model import Message
from mxrecv.message.text import decodeText
from mxrecv.mms.complete import Completer
from mxrecv.mms.fetch import Download, Fetcher, RetrieveError
from mxrecv.mms.schedule import Completed, GaveUp, Policy, Schedule, Start
from mxrecv.spool.durable import fsyncPath, removeTree
from mxrecv.spool.layout import PARTIAL_ZIP, PENDING, RETRIEVE_JSON, Attempts, RetrieveState
from mxrecv.spool.store import Spool
from mxrecv.spool.writer import FileWriters
from mxrecv.tls.client import tlsPolicy

log = Logger()

# A notification without an expiry: MX Telecom promises at least this long.
DEFAULT_LIFETIME = timedelta(hours=24)
# A requeued MMS (mxrecv requeue) is tried for this long, whatever its expiry:
# it reached failed/ because its expiry passed, and RetrieveMMS may still
# have it.
REQUEUE_WINDOW = timedelta(hours=1)
# The ends of a retrieval window, as the sentence of a message given up
# names them.
EXPIRY = "its expiry"
WINDOW_END = "the end of its retrieval window"
REQUEUE_END = "the end of its requeue window"


def whereRaised(failure: Failure) -> str:
    """
    A failure's type and the frames it was raised through, without its
    message (which could quote the request's URL, and so the password).
    """
    lines = [f"{failure.type.__module__}.{failure.type.__qualname__} raised at:"]
    for function, path, line, *_ in failure.frames:
        lines.append(f'  File "{path}", line {line}, in {function}')
    return "\n".join(lines)


def _fromISO(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class RetrievalMetrics(Protocol):
    """
    Where retrieval reports (L{mxrecv.ops.metrics.Metrics}).
    """

    def retrievalAttempt(self, outcome: str) -> None:
        """
        Count one attempt, by outcome (C{ok} or a L{RetrieveError}'s kind).
        """

    def expired(self) -> None:
        """
        Count one MMS given up because its expiry passed.
        """


class _NoMetrics:
    def retrievalAttempt(self, outcome: str) -> None:
        pass

    def expired(self) -> None:
        pass


# The queue of pending downloads


@frozen
class _Job:
    # The id as MX Telecom sent it: RetrieveMMS is asked for these bytes.
    messageId: bytes
    expiry: float
    window: str
    attempts: Attempts


def expiryOf(message: Message, zone: tzinfo) -> float:
    """
    When C{message} stops being available from RetrieveMMS, in POSIX seconds:
    its C{expiry} (in C{zone} unless it has an offset), or 24 hours after we
    received it if it has none.
    """
    if message.expiry is not None:
        try:
            return parseDate(message.expiry, zone).timestamp()
        except ValueError:
            pass
    return (_fromISO(message.received) + DEFAULT_LIFETIME).timestamp()


def retrievalWindow(
    message: Message, zone: tzinfo, maxWindow: timedelta, requeued: str | None = None
) -> tuple[float, str]:
    """
    Until when C{message} is tried, in POSIX seconds, and what that time is
    (L{EXPIRY}, L{WINDOW_END} or L{REQUEUE_END}): its expiry (L{expiryOf}),
    but never more than C{maxWindow} after it was received, whatever the
    expiry says (a far-off one would have it retried for years); and, if
    it was requeued at C{requeued}, at least L{REQUEUE_WINDOW} from then.
    """
    end, what = expiryOf(message, zone), EXPIRY
    cap = (_fromISO(message.received) + maxWindow).timestamp()
    if cap < end:
        end, what = cap, WINDOW_END
    if requeued:
        requeueEnd = (_fromISO(requeued) + REQUEUE_WINDOW).timestamp()
        if requeueEnd > end:
            end, what = requeueEnd, REQUEUE_END
    return end, what


class Retriever:
    """
    Downloads every pending MMS it is given, as the schedule says, and
    completes or fails it.  Call it with a name in C{pending/} (this is
    L{mxrecv.mms.pending.PendingWork}'s C{retrieve} hook).

    @param pool: the thread pool that does the blocking file work.
    """

    def __init__(
        self,
        *,
        spool: Spool,
        completer: Completer,
        fetcher: Fetcher,
        schedule: Schedule,
        clock: IReactorTime,
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        zone: tzinfo,
        maxWindow: timedelta = timedelta(days=3),
        metrics: RetrievalMetrics | None = None,
    ) -> None:
        self._metrics = _NoMetrics() if metrics is None else metrics
        self._maxWindow = maxWindow
        self._spool = spool
        self._completer = completer
        self._fetcher = fetcher
        self.schedule = schedule
        self._clock = clock
        self._reactor = reactor
        self._pool = pool
        self._zone = zone
        self._ids: dict[str, bytes] = {}
        self._attempts: dict[str, Deferred[Any]] = {}
        self._waiters: dict[str, list[Deferred[Completed | GaveUp]]] = {}
        self._busy: set[Deferred[Any]] = set()
        self._locks: dict[str, DeferredLock] = {}
        self._timer: IDelayedCall | None = None
        self._stopped = False
        self.peakInFlight = 0

    def __call__(self, name: str) -> None:
        if self._stopped or name in self._ids:
            return
        self._ids[name] = b""
        self._serially(name, self._inThread, self._load, name).addCallbacks(
            self._loaded,
            lambda f: self._lost(name, f, "Reading pending/{name} for retrieval failed"),
            (name,),
        )

    def handles(self, name: str) -> bool:
        """
        Whether C{name} is in our hands: loading, waiting, downloading,
        installing its zip or being completed.
        """
        return name in self._ids

    def whenDone(self, name: str) -> Deferred[Completed | GaveUp]:
        """
        Fire once C{name} is in C{new/} or C{failed/}, with its outcome.
        """
        d: Deferred[Completed | GaveUp] = Deferred()
        self._waiters.setdefault(name, []).append(d)
        return d

    def stop(self) -> Deferred[None]:
        """
        Abandon the attempts in flight (their messages stay in C{pending/},
        with their history, for the next run) and close the connections.
        """
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        for d in list(self._attempts.values()):
            d.cancel()
        busy = DeferredList(list(self._busy), consumeErrors=True)
        return busy.addBoth(lambda _: self._fetcher.close())

    # Steps

    def _load(self, name: str) -> _Job:
        """
        In a worker: the message, its attempts so far; a half-written
        download is discarded.
        """
        pending = self._spool.message(PENDING, name)
        message = pending.readMessage()
        removeTree(pending.partialZip)
        try:
            state = pending.readRetrieveState() or RetrieveState()
        except ValueError as e:
            log.warn(
                "Ignoring unreadable {path}: {error}",
                path=str(pending.path / RETRIEVE_JSON),
                error=e,
            )
            state = RetrieveState()
        end, window = retrievalWindow(message, self._zone, self._maxWindow, state.requeued)
        return _Job(message.rawId, end, window, state.attempts)

    def _loaded(self, job: _Job, name: str) -> None:
        if self._stopped:
            return
        self._ids[name] = job.messageId
        self.schedule.add(name, job.expiry, job.attempts, job.window)
        self._pump()

    def _pump(self) -> None:
        if self._stopped:
            return
        now = self._clock.seconds()
        for decision in self.schedule.poll(now):
            if isinstance(decision, Start):
                self._start(decision)
            else:
                self._giveUp(decision)
        self.peakInFlight = max(self.peakInFlight, self.schedule.inFlight)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        wake = self.schedule.wakeAt()
        if wake is not None:
            self._timer = self._clock.callLater(max(0.0, wake - now), self._pump)

    def _start(self, start: Start) -> None:
        name = start.name
        messageId = self._ids[name]
        log.debug(
            "Retrieving MMS {id} from {url}",
            id=decodeText(messageId)[0],
            url=self._fetcher.url,
            name=name,
        )
        part = self._spool.message(PENDING, name).partialZip
        fetched = self._fetcher.fetch(messageId, part, start.deadline)
        self._attempts[name] = fetched

        def install(download: Download) -> Deferred[None]:
            # Downloaded: from here a stop waits for the install (a step in
            # _busy) instead of cancelling it and losing the zip.
            del self._attempts[name]
            return self._serially(name, self._inThread, self._install, name, download)

        fetched.addCallback(install).addBoth(self._ended, name)

    def _install(self, name: str, download: Download) -> None:
        """
        In a worker: make the downloaded zip durable as C{mms.zip}, its size
        and hash recorded in C{message.json}.  The rename is the commit point:
        after it the message is never downloaded again.
        """
        pending = self._spool.message(PENDING, name)
        part = pending.partialZip
        if not zipfile.is_zipfile(part):
            raise RetrieveError(f"HTTP 200 but the body ({download.size} bytes) is not a zip", "invalid")
        fsyncPath(part, pending.sync)
        message = pending.readMessage()
        pending.writeMessage(message.replace(mms_size=download.size, mms_sha256=download.sha256))
        pending.removeRetrieveState()
        os.rename(part, pending.zip)
        fsyncPath(pending.path, pending.sync)

    def _ended(self, result: None | Failure, name: str) -> None:
        self._attempts.pop(name, None)
        if isinstance(result, Failure):
            # Here, not in a worker, so that it cannot race the next attempt.
            try:
                self._spool.message(PENDING, name).partialZip.unlink(missing_ok=True)
            except OSError as e:
                log.warn("Cannot remove {part}: {error}", part=PARTIAL_ZIP, error=e.strerror)
        if self._stopped:
            if isinstance(result, Failure) and not result.check(CancelledError):
                log.info("MMS pending/{name}: attempt abandoned at shutdown", name=name)
            return
        now = self._clock.seconds()
        messageId = self._ids[name]
        if not isinstance(result, Failure):
            self._metrics.retrievalAttempt("ok")
            completed = self.schedule.succeeded(name, now)
            self._serially(name, self._completer.complete, name).addCallbacks(
                self._completed,
                lambda f: self._lost(name, f, "Completing pending/{name} failed"),
                (completed,),
            )
        else:
            if result.check(RetrieveError):
                error = result.value
            elif result.check(OSError):
                error = RetrieveError(f"cannot store the zip: {result.value.strerror}")
            else:
                # Not log.failure: the exception's message could quote the
                # request's URL.
                log.error(
                    "Retrieving pending/{name}: unexpected error\n{traceback}",
                    name=name,
                    traceback=whereRaised(result),
                )
                error = RetrieveError("internal error (see the log)")
            self._failed(name, messageId, error, now)
        self._pump()

    def _failed(self, name: str, messageId: bytes, error: RetrieveError, now: float) -> None:
        self._metrics.retrievalAttempt(error.kind)
        outcome = str(error)
        gaveUp = self.schedule.failed(name, now, outcome)
        if gaveUp is None:
            attempts = self.schedule.attempts(name)
            self._serially(name, self._inThread, self._record, name, attempts).addErrback(
                lambda f: log.failure("Recording attempts of pending/{name}", f, name=name)
            )
        if error.refused:
            log.critical(
                "RetrieveMMS at {url} refused our credentials for MMS {id} ({outcome}): "
                "check [retrieve] user and password",
                url=self._fetcher.url,
                id=decodeText(messageId)[0],
                outcome=outcome,
            )
        else:
            log.warn(
                "Retrieving MMS {id} from {url} failed: {outcome}",
                id=decodeText(messageId)[0],
                url=self._fetcher.url,
                outcome=outcome,
            )
        if gaveUp is not None:
            self._giveUp(gaveUp)

    def _record(self, name: str, attempts: Attempts) -> None:
        """
        In a worker: journal the attempts so far.
        """
        pending = self._spool.message(PENDING, name)
        try:
            state = pending.readRetrieveState() or RetrieveState()
        except (OSError, ValueError):
            state = RetrieveState()
        # Keep what else is there (when it was requeued).
        pending.writeRetrieveState(evolve(state, attempts=attempts))

    def _giveUp(self, gaveUp: GaveUp) -> None:
        self._metrics.expired()
        name = gaveUp.name
        log.error(
            "MMS {id} moved to failed/{name}: {error}",
            id=decodeText(self._ids.get(name, b""))[0],
            name=name,
            error=gaveUp.error,
        )
        self._serially(
            name, self._completer.fail, name, gaveUp.error, gaveUp.attempts
        ).addCallbacks(
            lambda _: self._done(gaveUp),
            lambda f: self._lost(name, f, "Moving pending/{name} to failed/ failed"),
        )

    def _completed(self, message: Message, completed: Completed) -> None:
        log.info(
            "MMS {id} retrieved ({size} bytes, {count} attempt{s}) and completed in "
            "new/{name}{error}",
            id=message.id,
            size=message.mms_size,
            count=completed.attempts.count,
            s="" if completed.attempts.count == 1 else "s",
            name=completed.name,
            error=f" ({message.parts_error})" if message.parts_error else "",
        )
        self._done(completed)

    def _done(self, outcome: Completed | GaveUp) -> None:
        self._ids.pop(outcome.name, None)
        self._locks.pop(outcome.name, None)
        for d in self._waiters.pop(outcome.name, []):
            d.callback(outcome)

    def _lost(self, name: str, reason: Failure, format: str) -> None:
        """
        A step failed that should not (the disk, most likely): the message
        stays in C{pending/}, to be taken up again by the periodic sweep of
        C{pending/}, MX Telecom's retry of its callback, the admin listener's
        C{POST /pending/NAME} or the next start.
        """
        log.failure(format, reason, name=name)
        self._ids.pop(name, None)
        self._locks.pop(name, None)
        for d in self._waiters.pop(name, []):
            d.errback(reason)

    def _inThread(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def _serially(self, name: str, f: Callable[..., Deferred[Any]], *args: Any) -> Deferred[Any]:
        """
        Run C{f}, the next file step for message C{name}, once the previous
        one has finished; the steps in flight are waited for at shutdown.
        """
        lock = self._locks.setdefault(name, DeferredLock())
        d = lock.run(f, *args)
        self._busy.add(d)

        def untrack(result: Any) -> Any:
            self._busy.discard(d)
            return result

        return d.addBoth(untrack)


class RetrieveService(Service):
    """
    Stops the retriever at shutdown: attempts in flight are abandoned (their
    messages stay journaled in C{pending/}) and the connections closed.
    """

    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.retriever.stop()


def makeRetriever(
    retrieve: RetrieveConfig,
    *,
    spool: Spool,
    completer: Completer,
    reactor: IServerReactor,
    pool: ThreadPool,
    writers: FileWriters,
    zone: tzinfo,
    maxBody: int,
    clock: IReactorTime | None = None,
    random: Callable[[], float] | None = None,
    metrics: RetrievalMetrics | None = None,
) -> Retriever:
    """
    A retriever configured from C{[retrieve]} (a L{RetrieveConfig}).

    @param pool: the thread pool of the file steps (install, journal).
    @param writers: write and hash the downloads (the server's, shared with
        the uploads).
    """
    if random is None:
        import random as _random

        random = _random.SystemRandom().random
    clock = reactor if clock is None else clock
    fetcher = Fetcher(
        reactor=reactor,
        clock=clock,
        url=retrieve.url,
        user=retrieve.user,
        password=retrieve.password,
        maxBody=maxBody,
        connectTimeout=retrieve.timeout,
        policy=tlsPolicy(retrieve.ca_file),
        writers=writers,
        concurrency=retrieve.concurrency,
    )
    policy = Policy(
        concurrency=retrieve.concurrency,
        timeout=retrieve.timeout,
        backoffInitial=retrieve.backoff_initial,
        backoffMax=retrieve.backoff_max,
    )
    return Retriever(
        spool=spool,
        completer=completer,
        fetcher=fetcher,
        schedule=Schedule(policy, random),
        clock=clock,
        reactor=reactor,
        pool=pool,
        zone=zone,
        maxWindow=timedelta(days=retrieve.max_window_days),
        metrics=metrics,
    )
