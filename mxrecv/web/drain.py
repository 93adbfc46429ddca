# -*- test-case-name: tests.test_shutdown -*-
"""
Stopping without losing anything.

On SIGTERM twistd stops the service tree.  The order matters: stop listening,
let the requests in flight be answered (bounded by C{[server]
shutdown_timeout}), then let the spool finish its commits, then close it and
stop the threads.  L{mxrecv.ops.service.MxrecvService} stops its layers in that
order, one after the other; L{InFlight} knows which requests are being
answered, and L{DrainService} waits for them.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import INonQueuedRequestFactory
from zope.interface import directlyProvides

log = Logger()


class InFlight:
    """
    The connections of a site that have carried a request, and the requests
    they carry.

    L{track} wraps the site's request factory, so that each connection is
    known from its first request to its loss.  A stop waits for connections,
    not just requests: an answer is only delivered once it has left the
    write buffer, which the reactor does not flush when it stops.  (A
    connection that never sent a request has nothing to flush.)
    """

    def __init__(self) -> None:
        self._channels: set[Any] = set()
        self._idle: list[Deferred[None]] = []
        self._closing = False

    def __len__(self) -> int:
        """
        How many requests are in flight.
        """
        return sum(len(channel.requests) for channel in self._channels)

    def track(self, site: Any) -> None:
        factory = site.requestFactory

        def request(channel: Any) -> Any:
            r = factory(channel)
            self._began(r)
            return r

        directlyProvides(request, INonQueuedRequestFactory)
        site.requestFactory = request

    def _began(self, request: Any) -> None:
        channel = request.channel
        if channel not in self._channels:
            self._channels.add(channel)
            lost = channel.connectionLost

            def connectionLost(reason: Failure) -> None:
                try:
                    lost(reason)
                finally:
                    self._closed(channel)

            channel.connectionLost = connectionLost
        if self._closing:
            _closeAfter(request)

    def _closed(self, channel: Any) -> None:
        self._channels.discard(channel)
        if not self._channels:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def whenIdle(self) -> Deferred[None]:
        """
        Fire once every connection has closed.
        """
        if not self._channels:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    def close(self) -> None:
        """
        Close idle connections now, and the others once their requests are
        answered, rather than keep them open for more.
        """
        self._closing = True
        for channel in list(self._channels):
            if channel.requests:
                for request in channel.requests:
                    _closeAfter(request)
            else:
                channel.loseConnection()

    def abort(self) -> int:
        """
        Drop every connection left.

        @return: how many requests were still in flight.
        """
        count = len(self)
        for channel in list(self._channels):
            channel.transport.abortConnection()
        return count


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
    At shutdown (after the listeners have stopped), close idle connections,
    and wait for the requests in flight to be answered and their connections
    closed, for at most C{timeout} seconds; then drop what is left (those
    clients get no answer, so MX Telecom retries them).
    """

    def __init__(self, inFlight: InFlight, timeout: float, clock: IReactorTime) -> None:
        self.inFlight = inFlight
        self.timeout = timeout
        self.clock = clock

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.inFlight.close()
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
