# -*- test-case-name: tests.test_shutdown -*-
"""
Stopping without losing anything.

On SIGTERM twistd stops the service tree.  The order matters: stop listening,
let the requests in flight be answered (bounded by C{[server]
shutdown_timeout}), then let the spool finish its commits, then close it and
stop the threads.  L{mxrecv.tap.OrderedService} stops its children in that
order, one after the other; L{InFlight} knows which requests are being
answered, and L{DrainService} waits for them.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.defer import TimeoutError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import INonQueuedRequestFactory
from zope.interface import directlyProvides

log = Logger()


class InFlight:
    """
    The requests of a site that have begun and are not answered yet.

    L{track} wraps the site's request factory, so that each request is known
    from its request line to its answer (or its connection's loss).
    """

    def __init__(self) -> None:
        self._requests: set[Any] = set()
        self._idle: list[Deferred[None]] = []
        self._closing = False

    def __len__(self) -> int:
        return len(self._requests)

    def track(self, site: Any) -> None:
        factory = site.requestFactory

        def request(channel: Any) -> Any:
            r = factory(channel)
            self._began(r)
            return r

        directlyProvides(request, INonQueuedRequestFactory)
        site.requestFactory = request

    def _began(self, request: Any) -> None:
        self._requests.add(request)
        if self._closing:
            _closeAfter(request)
        request.notifyFinish().addBoth(self._ended, request)

    def _ended(self, result: object, request: Any) -> None:
        self._requests.discard(request)
        if not self._requests:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def whenIdle(self) -> Deferred[None]:
        """
        Fire once no request is in flight.
        """
        if not self._requests:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    def closeWhenAnswered(self) -> None:
        """
        From now on, close each connection once its request is answered,
        rather than keep it open for another.
        """
        self._closing = True
        for request in self._requests:
            _closeAfter(request)

    def abort(self) -> int:
        """
        Drop the connections of the requests still in flight.

        @return: how many there were.
        """
        requests = list(self._requests)
        for request in requests:
            if request.channel is not None:
                request.channel.transport.abortConnection()
        return len(requests)


def _closeAfter(request: Any) -> None:
    """
    Make C{request}'s connection close once it is answered.
    """
    channel = request.channel
    if channel is None:
        return
    # Read by HTTPChannel if the body is still coming; else too late for it.
    request.requestHeaders.setRawHeaders(b"Connection", [b"close"])
    if not request.startedWriting:
        request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
    channel.persistent = False


class DrainService(Service):
    """
    At shutdown (after the listeners have stopped), wait for the requests in
    flight to be answered, for at most C{timeout} seconds; then drop those
    that are left (their clients get no answer, so MX Telecom retries them).
    """

    def __init__(self, inFlight: InFlight, timeout: float, clock: Any) -> None:
        self.inFlight = inFlight
        self.timeout = timeout
        self.clock = clock

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.inFlight.closeWhenAnswered()
        if len(self.inFlight):
            log.info(
                "Stopping: waiting up to {timeout}s for {count} requests in flight",
                timeout=self.timeout,
                count=len(self.inFlight),
            )
        done = self.inFlight.whenIdle()
        done.addTimeout(self.timeout, self.clock)
        return done.addErrback(self._tooLong)

    def _tooLong(self, reason: Failure) -> None:
        reason.trap(TimeoutError)
        count = self.inFlight.abort()
        log.warn(
            "Stopping: dropped {count} requests still in flight after {timeout}s",
            count=count,
            timeout=self.timeout,
        )

