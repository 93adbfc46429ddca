# -*- test-case-name: tests.test_deliver -*-
"""
Delivery of each message in C{new/} to the application (C{[deliver]}), so
that it need not poll the spool.

How it learns that a message landed: the spool calls its C{new/} observers
(L{mxrecv.spool.store.Spool.observeNew}) after each group commit that renamed a
message into C{new/}, and the MMS completer does the same after its rename;
both happen after the 200 has gone out, and only append a name to a queue,
so delivery never delays an acknowledgement.  At start-up, C{new/} is
scanned for messages not yet delivered (arrived while mxrecv was stopped,
or whose delivery had not succeeded yet).

Each target (the command, the URL) has its own queue, taken in order of
arrival (C{received}, then name): a message is tried until it succeeds, with
exponential backoff, and only then is the next one tried.  Success is
recorded durably as C{state/delivered/TARGET/NAME}, never inside
C{new/NAME} (the application's).  Delivery is at least once: a crash
between a success and its record means one more delivery after restart.
A message the application has already moved out of C{new/} is skipped.
"""

from __future__ import annotations

import io
import json
import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from mxrecv.mms.unpack import OCTET_STREAM, mediaType
from mxrecv.spool.durable import fsyncPath, removeTree, writeNew
from mxrecv.spool.layout import DELIVERED, MESSAGE_JSON, NEW, STATE
from mxrecv.spool.naming import isName
from mxrecv.spool.store import Spool

log = Logger()

# Kept of a failing command's stderr, for the log.
STDERR_TAIL = 2048


class DeliveryFailed(Exception):
    """
    A target did not take a message; the sentence says why.
    """


class Target(Protocol):
    """
    Where messages are delivered: C{name} labels its queue, its records and
    its metrics; C{deliver} fires when the application has the message, or
    fails with L{DeliveryFailed}.
    """

    name: str

    def deliver(self, directory: Path) -> Deferred[None]: ...


def backoff(attempt: int, initial: float, maximum: float) -> float:
    """
    Seconds to wait after the C{attempt}th failure (1, 2, ...) in a row.
    """
    return min(maximum, initial * 2 ** min(attempt - 1, 64))


# The command


class _Command(ProcessProtocol):
    def __init__(self, done: Deferred[None]) -> None:
        self.done = done
        self.stderr = b""
        self.killed = False

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def errReceived(self, data: bytes) -> None:
        self.stderr = (self.stderr + data)[-STDERR_TAIL:]

    def processEnded(self, reason: Failure) -> None:
        if reason.check(ProcessDone):
            self.done.callback(None)
            return
        if self.killed:
            why = "killed: it took too long"
        else:
            why = f"failed: {reason.value}"
        tail = self.stderr.decode("utf-8", "replace").strip()
        self.done.errback(DeliveryFailed(f"{why}; stderr: {tail}" if tail else why))


class CommandTarget:
    """
    Run C{argv} plus the message directory; exit status 0 means delivered.
    A command that runs longer than C{timeout} seconds is killed.
    """

    name = "command"

    def __init__(
        self, argv: Sequence[str], *, reactor: Any, timeout: float, env: Mapping[str, str]
    ) -> None:
        self._argv = list(argv)
        self._reactor = reactor
        self._timeout = timeout
        self._env = dict(env)

    def deliver(self, directory: Path) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        protocol = _Command(done)
        try:
            transport = self._reactor.spawnProcess(
                protocol, self._argv[0], [*self._argv, str(directory)], env=self._env
            )
        except OSError as e:
            return fail(DeliveryFailed(f"cannot run {self._argv[0]}: {e}"))

        def kill() -> None:
            protocol.killed = True
            transport.signalProcess("KILL")

        timer = self._reactor.callLater(self._timeout, kill)

        def ended(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        return done.addBoth(ended)


# The URL


class UrlTarget:
    """
    POST the message to C{url} as multipart/form-data: C{message.json} in
    the field C{message}, each unpacked part of an MMS in a field C{part}
    (its file name the part's name, its Content-Type the part's
    C{content_type}, or C{application/octet-stream} if that is not a plain
    media type).  A 2xx answer means delivered.

    A request that cannot even be made (a part file gone, a message.json
    the application rewrote) is a failed attempt like any other.
    """

    name = "url"

    def __init__(self, url: str, *, client: Any, timeout: float) -> None:
        self._url = url
        self._client = client
        self._timeout = timeout

    def deliver(self, directory: Path) -> Deferred[None]:
        opened: list[Any] = []

        def close(result: object) -> object:
            for f in opened:
                f.close()
            return result

        try:
            document = (directory / MESSAGE_JSON).read_bytes()
            files = [("message", (MESSAGE_JSON, "application/json", io.BytesIO(document)))]
            for part in json.loads(document).get("parts") or []:
                f = (directory / part["path"]).open("rb")
                opened.append(f)
                kind = mediaType(part["content_type"]) or OCTET_STREAM
                files.append(("part", (part["name"], kind, f)))
            # treq encodes the body's headers here, synchronously.
            d = self._client.post(self._url, files=files, timeout=self._timeout)
        except Exception as e:
            close(None)
            return fail(DeliveryFailed(f"cannot make the request: {type(e).__name__}: {e}"))
        except BaseException:
            close(None)
            raise
        d.addCallback(self._answered)
        return d.addBoth(close)

    def _answered(self, response: Any) -> Deferred[None]:
        code = response.code

        def check(body: bytes) -> None:
            if not 200 <= code < 300:
                text = body[:200].decode("utf-8", "replace").strip()
                raise DeliveryFailed(f"HTTP {code}: {text}" if text else f"HTTP {code}")

        return response.content().addCallback(check)


# Records of delivery (blocking: called in worker threads)


class Records:
    """
    C{state/delivered/TARGET/NAME}: the durable record that C{new/NAME} was
    delivered to TARGET.
    """

    def __init__(self, spool: Spool) -> None:
        self._root = spool.dir(STATE) / DELIVERED
        self._new = spool.dir(NEW)
        self._sync = spool.sync

    def mark(self, target: str, name: str) -> None:
        directory = self._root / target
        directory.mkdir(parents=True, exist_ok=True)
        try:
            writeNew(directory / name, b"", self._sync)
        except FileExistsError:
            return
        fsyncPath(directory, self._sync)

    def undelivered(self, target: str) -> list[str]:
        """
        The messages in C{new/} not delivered to C{target}, in order of
        arrival; forget records of messages no longer in C{new/}.
        """
        directory = self._root / target
        directory.mkdir(parents=True, exist_ok=True)
        present = {e.name for e in self._new.iterdir() if isName(e.name)}
        done = {e.name for e in directory.iterdir()}
        for gone in done - present:
            removeTree(directory / gone)
        return sorted(present - done, key=lambda n: (_received(self._new / n), n))

    def isDelivered(self, target: str, name: str) -> bool:
        return (self._root / target / name).exists()


def _received(directory: Path) -> str:
    try:
        return json.loads((directory / MESSAGE_JSON).read_bytes())["received"] or ""
    except (OSError, ValueError, KeyError, TypeError):
        return ""


# The queue


class Deliverer:
    """
    The queue of one target: one message at a time, in order, each retried
    until it succeeds.

    @param onAttempt: called with the target's name and whether it worked,
        after each attempt (metrics).
    @param clock: times the retries (the reactor by default).
    """

    def __init__(
        self,
        target: Target,
        *,
        spool: Spool,
        records: Records,
        reactor: Any,
        pool: Any,
        backoffInitial: float,
        backoffMax: float,
        onAttempt: Callable[[str, bool], None] = lambda target, ok: None,
        clock: Any = None,
    ) -> None:
        self.target = target
        self._spool = spool
        self._records = records
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._pool = pool
        self._initial = backoffInitial
        self._max = backoffMax
        self._onAttempt = onAttempt
        self._queue: deque[str] = deque()
        self._known: set[str] = set()
        self._current: str | None = None
        self._attempt: Deferred[None] | None = None
        self._failures = 0
        self._retry: Any = None
        self._ready = False
        self._stopped = False

    def __len__(self) -> int:
        return len(self._queue) + (self._current is not None)

    def add(self, name: str) -> None:
        """
        Deliver C{new/NAME} after the messages already queued.
        """
        if name not in self._known:
            self._known.add(name)
            self._queue.append(name)
            self._next()

    def start(self, earlier: Sequence[str]) -> None:
        """
        Begin delivering: C{earlier} (found undelivered in C{new/} at
        start-up) go before anything added since.
        """
        for name in reversed(earlier):
            if name not in self._known:
                self._known.add(name)
                self._queue.appendleft(name)
        self._ready = True
        self._next()

    def stop(self) -> Deferred[None]:
        """
        Deliver nothing more; fires once the attempt under way has ended.
        """
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._attempt is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._attempt.addBoth(lambda _: None if done.called else done.callback(None))
        return done

    def _next(self) -> None:
        if not self._ready or self._stopped or self._current is not None or not self._queue:
            return
        self._current = self._queue.popleft()
        self._try()

    def _try(self) -> None:
        self._retry = None
        name = self._current
        directory = self._spool.dir(NEW) / name
        if not directory.is_dir():
            log.info(
                "new/{name} was taken by the application before its delivery to the {target}",
                name=name,
                target=self.target.name,
            )
            self._done(name)
            return
        if self._records.isDelivered(self.target.name, name):
            self._done(name)
            return
        d = self._attempt = maybeDeferred(self.target.deliver, directory)
        d.addCallbacks(self._delivered, self._failed, (name,), None, (name,))
        d.addErrback(lambda f: log.failure("Delivering new/{name}", f, name=name))

    def _delivered(self, _: object, name: str) -> Deferred[None]:
        self._onAttempt(self.target.name, True)
        log.info("Delivered new/{name} to the {target}", name=name, target=self.target.name)
        d = deferToThreadPool(
            self._reactor, self._pool, self._records.mark, self.target.name, name
        )

        def recorded(_: object) -> None:
            self._failures = 0
            self._done(name)

        def notRecorded(f: Failure) -> None:
            log.failure("Recording the delivery of new/{name}", f, name=name)
            self._failed(f, name, counted=False)

        return d.addCallbacks(recorded, notRecorded)

    def _failed(self, reason: Failure, name: str, counted: bool = True) -> None:
        self._failures += 1
        delay = backoff(self._failures, self._initial, self._max)
        why = reason.getErrorMessage() if reason.check(DeliveryFailed) else repr(reason.value)
        log.warn(
            "Delivery of new/{name} to the {target} failed ({failures} in a row): "
            "{why}; next try in {delay:g}s",
            name=name,
            target=self.target.name,
            failures=self._failures,
            why=why,
            delay=delay,
        )
        if not self._stopped:
            self._retry = self._clock.callLater(delay, self._try)
        if counted:
            self._onAttempt(self.target.name, False)

    def _done(self, name: str) -> None:
        self._known.discard(name)
        self._current = None
        self._next()


class BacklogCollector(Collector):
    """
    C{mxrecv_delivery_backlog}: messages waiting for delivery, per target.
    """

    def __init__(self, deliverers: Sequence[Deliverer]) -> None:
        self._deliverers = deliverers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "mxrecv_delivery_backlog",
            "Messages in new/ waiting to be delivered to the application, per target.",
            labels=["target"],
        )
        for d in self._deliverers:
            family.add_metric([d.target.name], len(d))
        yield family


class DeliveryService(Service):
    """
    Feeds each target's L{Deliverer}: from the spool's C{new/} observers as
    messages land, and from a scan of C{new/} at start-up.
    """

    def __init__(
        self,
        deliverers: Sequence[Deliverer],
        *,
        spool: Spool,
        records: Records,
        reactor: Any,
        pool: Any,
    ) -> None:
        self.deliverers = list(deliverers)
        self._records = records
        self._reactor = reactor
        self._pool = pool
        spool.observeNew(self._landed)

    def _landed(self, name: str) -> None:
        for deliverer in self.deliverers:
            deliverer.add(name)

    def startService(self) -> None:
        super().startService()
        for deliverer in self.deliverers:
            name = deliverer.target.name
            d = deferToThreadPool(self._reactor, self._pool, self._records.undelivered, name)
            d.addCallback(self._scanned, deliverer)
            d.addErrback(
                lambda f, name=name: log.failure("Scanning new/ for the {target}", f, target=name)
            )

    def _scanned(self, names: list[str], deliverer: Deliverer) -> None:
        if names:
            log.info(
                "{count} messages in new/ to deliver to the {target}",
                count=len(names),
                target=deliverer.target.name,
            )
        deliverer.start(names)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return DeferredList([d.stop() for d in self.deliverers])


def buildDelivery(
    config: Any, *, spool: Spool, reactor: Any, pool: Any, metrics: Any
) -> DeliveryService:
    """
    The delivery service for C{[deliver]} (a L{mxrecv.config.DeliverConfig}).
    """
    targets: list[Target] = []
    if config.command:
        targets.append(
            CommandTarget(config.command, reactor=reactor, timeout=config.timeout, env=os.environ)
        )
    if config.url is not None:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        targets.append(UrlTarget(config.url, client=HTTPClient(agent), timeout=config.timeout))
    records = Records(spool)
    deliverers = [
        Deliverer(
            target,
            spool=spool,
            records=records,
            reactor=reactor,
            pool=pool,
            backoffInitial=config.backoff_initial,
            backoffMax=config.backoff_max,
            onAttempt=metrics.delivery,
        )
        for target in targets
    ]
    metrics.watch(BacklogCollector(deliverers))
    return DeliveryService(deliverers, spool=spool, records=records, reactor=reactor, pool=pool)
