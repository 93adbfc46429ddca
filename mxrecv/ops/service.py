# -*- test-case-name: tests.test_tap -*-
"""
The running service's skeleton: layers that stop one after the other, and
the thread pools' lifetime.

On SIGTERM twistd stops the service tree, and the order matters: the edge
stops taking callbacks and lets those in flight be answered; then the MMS
and delivery work stops; then the spool finishes its commits and closes;
only then do the threads that those commits need stop.  L{MxrecvService}
holds one L{OrderedService} per layer, so that the order is written down
once, here, rather than follow from the order in which parts were added.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import IServiceCollection, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import ILogObserver, Logger
from twisted.python.threadpool import ThreadPool

from mxrecv.ops.admin import deliveryChecks
from mxrecv.ops.logs import installObserver
from mxrecv.ops.metrics import Metrics

if TYPE_CHECKING:
    from mxrecv.deliver.service import DeliveryService
    from mxrecv.mms.retrieve import Retriever
    from mxrecv.spool.store import Spool
    from mxrecv.web.drain import InFlight
    from mxrecv.web.listen import Listener
    from mxrecv.web.request import CallbackSite

log = Logger()


class OrderedService(MultiService):
    """
    A MultiService that stops its children one at a time, last started
    first, each once the one before it has finished stopping.

    MultiService stops them all at once; here the order matters (see the
    module's docstring).
    """

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        children = list(self)
        children.reverse()

        async def stopAll() -> None:
            # One child that fails to stop must not leave the spool open.
            for child in children:
                try:
                    await maybeDeferred(child.stopService)
                except Exception:
                    log.failure("Stopping {service}", service=repr(child))

        return Deferred.fromCoroutine(stopAll())


class ThreadPoolService(Service):
    """
    Runs a thread pool for as long as the service runs.
    """

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()


class MxrecvService(OrderedService):
    """
    The whole of a running mxrecv, in four layers, started from the bottom
    and stopped from the top, each layer once the one above it has stopped:

        - C{edge}: the callback listeners, the drain of the callbacks in
          flight, the admin listeners (stopped in that order);
        - C{work}: delivery, then MMS completion and retrieval;
        - C{store}: the spool;
        - C{threads}: the thread pools.

    Within a layer, services stop last added first, each once the one before
    it has stopped.

    @ivar metrics: the L{Metrics} of this run.
    @ivar spool: the spool (L{mxrecv.spool.store.Spool}), open from the
        service's making.
    @ivar site: the callback site.
    @ivar listeners: the services that listen for callbacks (L{Listener}s).
    @ivar adminListeners: the services that listen for the admin site.
    @ivar inFlight: the callbacks being answered
        (L{mxrecv.web.drain.InFlight}).
    @ivar retriever: the GET-mode MMS retriever, or L{None} when retrieval
        is off.
    @ivar delivery: the delivery service, or L{None} when nothing is
        delivered.
    """

    def __init__(self, logObserver: Callable[[], ILogObserver | None] | None = None) -> None:
        """
        @param logObserver: makes twistd's log observer
            (L{mxrecv.ops.logs}), used when twistd attaches this service to
            its application.
        """
        super().__init__()
        self.logObserver = logObserver
        self.metrics = Metrics()
        self.threads = self._layer("threads")
        self.store = self._layer("store")
        self.work = self._layer("work")
        self.edge = self._layer("edge")
        self.spool: Spool | None = None
        self.site: CallbackSite | None = None
        self.listeners: list[Listener] = []
        self.adminListeners: list[Listener] = []
        self.inFlight: InFlight | None = None
        self.retriever: Retriever | None = None
        self.delivery: DeliveryService | None = None

    def deliveryAdmin(self) -> dict[str, Any]:
        """
        What the admin listener needs of delivery (L{buildAdmin}'s C{more}
        and C{redeliver}), if anything is delivered.
        """
        if self.delivery is None:
            return {}
        return {
            "more": deliveryChecks(self.delivery.checks()),
            "redeliver": self.delivery.redeliver,
        }

    def _layer(self, name: str) -> OrderedService:
        layer = OrderedService()
        layer.setName(name)
        layer.setServiceParent(self)
        return layer

    def threadPool(self, name: str, maxthreads: int) -> ThreadPool:
        """
        A thread pool that runs for as long as this service, stopped last.
        """
        pool = ThreadPool(minthreads=1, maxthreads=maxthreads, name=name)
        ThreadPoolService(pool).setServiceParent(self.threads)
        return pool

    def setServiceParent(self, parent: IServiceCollection) -> None:
        if self.logObserver is not None:
            installObserver(parent, self.logObserver)
        super().setServiceParent(parent)
