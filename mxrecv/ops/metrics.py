# -*- test-case-name: tests.test_metrics -*-
"""
Prometheus metrics, one L{CollectorRegistry} per service.

Counters move on the reactor as things happen (L{Metrics.callback} for each
answered callback, L{Metrics.retrievalAttempt} and L{Metrics.expired} for the
RetrieveMMS code, L{Metrics.delivery} for delivery).  What is a matter of the
spool's state (messages waiting in C{new/}, MMS awaiting download) is counted
from the directories when scraped, so that it cannot drift from the truth
across restarts or when the application moves messages away.  Scrapes run in
a worker thread (L{mxrecv.ops.admin}), because they list directories.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mxrecv.spool.layout import FAILED, NEW, PENDING
from mxrecv.spool.naming import isName
from mxrecv.web.outcome import CallbackOutcome

if TYPE_CHECKING:
    from mxrecv.deliver.queue import DeliveryState

# Outcomes of one RetrieveMMS attempt; anything else is counted as "other",
# so that the label's values stay few.
RETRIEVAL_OUTCOMES = frozenset(
    {"ok", "timeout", "connection", "http_4xx", "http_5xx", "invalid", "other"}
)

# The gauge of MMS held up by a local error (mxrecv.mms.recover), which
# /health reports too.
LOCAL_ERROR_WAITING = "mxrecv_mms_local_error_waiting"

# Seconds: a callback is acknowledged after local fsyncs, so mostly
# milliseconds; the upper buckets catch a struggling disk.
ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """
    The counters of one running mxrecv.

    The RetrieveMMS code reports each attempt with L{retrievalAttempt} and
    each MMS given up because its expiry passed with L{expired}.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.watched: list[Collector] = []
        r = self.registry
        self._callbacks = Counter(
            "mxrecv_callbacks",
            "Callbacks answered, by message type (unknown if refused before "
            "parsing), delivery mode (get, post, or other for another method or a "
            "request cut off before its method was known) and HTTP status.",
            ["type", "mode", "status"],
            registry=r,
        )
        self._bytes = Counter(
            "mxrecv_received_bytes", "Request body bytes received in callbacks.", registry=r
        )
        self._ack = Histogram(
            "mxrecv_ack_seconds",
            "Time from a callback's headers to its 200, in seconds.",
            buckets=ACK_BUCKETS,
            registry=r,
        )
        self._duplicates = Counter(
            "mxrecv_duplicates",
            "Callbacks for an id already accepted: answered 200, not stored again.",
            registry=r,
        )
        self._retrievals = Counter(
            "mxrecv_retrieval_attempts",
            "RetrieveMMS download attempts, by outcome.",
            ["outcome"],
            registry=r,
        )
        self._expired = Counter(
            "mxrecv_expired",
            "MMS given up because their expiry passed before they could be retrieved.",
            registry=r,
        )
        # Set by the leader only (in a server of several processes): summed
        # over the processes alive, which is the leader's.
        self._backlog = Gauge(
            "mxrecv_delivery_backlog",
            "Messages in new/ waiting to be delivered to the application, per target.",
            ["target"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self._oldest = Gauge(
            "mxrecv_delivery_oldest_timestamp_seconds",
            "Since when the message waiting longest for delivery has waited, per target "
            "(POSIX seconds; 0 when none waits): time() minus this is the backlog's age.",
            ["target"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self._undeliverable = Gauge(
            "mxrecv_delivery_undeliverable",
            "Messages the target refused max_attempts times (dead letters), until "
            "`mxrecv redeliver` puts them back.",
            ["target"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self._connections = Gauge(
            "mxrecv_connections",
            "Callback connections open (let through at accept), TLS handshakes "
            "and idle keep-alive connections included.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._dropped = Counter(
            "mxrecv_connections_dropped",
            "Callback connections closed at accept, before anything was read, by "
            "reason: not_allowed (client outside [server] allow), client_limit "
            "(max_connections_per_client), total_limit (max_connections).",
            ["reason"],
            registry=r,
        )
        self._deliveries = Counter(
            "mxrecv_deliveries",
            "Attempts to deliver a message to the application, by target "
            "(command, url...) and outcome (ok, temporary or permanent failure).",
            ["target", "outcome"],
            registry=r,
        )
        # Set by the process that does the MMS work (the leader, with
        # several workers): summed over the live processes.
        self._localErrorWaiting = Gauge(
            LOCAL_ERROR_WAITING,
            "MMS whose completion or download set-up stopped on a local error "
            "(a full or failing disk), waiting to be taken up again.",
            registry=r,
            multiprocess_mode="livesum",
        )

    def connectionOpened(self) -> None:
        self._connections.inc()

    def connectionClosed(self) -> None:
        self._connections.dec()

    def connectionDropped(self, reason: str) -> None:
        """
        Count a connection dropped at accept, for C{reason}: C{not_allowed},
        C{client_limit} or C{total_limit} (L{mxrecv.web.access.Gate}).
        """
        self._dropped.labels(reason=reason).inc()

    def callback(self, outcome: CallbackOutcome) -> None:
        """
        Count one answered callback.
        """
        self._callbacks.labels(
            type=outcome.type or "unknown", mode=outcome.mode, status=str(outcome.status)
        ).inc()
        self._bytes.inc(outcome.bytes)
        if outcome.duplicate:
            self._duplicates.inc()
        if outcome.status == 200:
            self._ack.observe(outcome.ack_seconds)

    def retrievalAttempt(self, outcome: str) -> None:
        """
        Count one RetrieveMMS attempt.

        @param outcome: one of L{RETRIEVAL_OUTCOMES}: C{ok} (zip downloaded),
            C{timeout}, C{connection} (refused, reset, DNS, TLS), C{http_4xx},
            C{http_5xx}, C{invalid} (not a zip, too large), C{other}.
        """
        if outcome not in RETRIEVAL_OUTCOMES:
            outcome = "other"
        self._retrievals.labels(outcome=outcome).inc()

    def expired(self) -> None:
        """
        Count one MMS moved to C{failed/} because its expiry passed.
        """
        self._expired.inc()

    def waitingAfterLocalError(self, count: int) -> None:
        """
        C{count} MMS now wait to be taken up again after a local error.
        """
        self._localErrorWaiting.set(count)

    def delivery(self, target: str, outcome: str) -> None:
        """
        Count one delivery attempt.

        @param outcome: C{ok}, C{temporary} or C{permanent}.
        """
        self._deliveries.labels(target=target, outcome=outcome).inc()

    def deliveryState(self, state: DeliveryState) -> None:
        """
        Show one target's queue: its backlog, since when its oldest message
        has waited, its dead letters.
        """
        self._backlog.labels(target=state.target).set(state.backlog)
        self._oldest.labels(target=state.target).set(state.oldest or 0.0)
        self._undeliverable.labels(target=state.target).set(state.undeliverable)

    def watch(self, collector: Collector) -> None:
        """
        Add a collector that reads state at scrape time (in a worker
        process, whose registry is not scraped, L{watched} are sampled into
        gauges instead: L{mxrecv.workers.worker}).
        """
        self.watched.append(collector)
        self.registry.register(collector)


def sampleValue(registry: CollectorRegistry, name: str) -> float:
    """
    The value of the unlabelled metric C{name} in C{registry}, 0 if it has
    none.  Blocking (in multiprocess mode, it reads the workers' files):
    called in a worker thread.

    The collectors that describe C{name} are asked first, which spares the
    spool's listings; all of them only if none does (the workers' metrics,
    summed by prometheus-client's multiprocess collector, are described by
    none).
    """
    for source in (registry.restricted_registry([name]), registry):
        for family in source.collect():
            for sample in family.samples:
                if sample.name == name:
                    return sample.value
    return 0.0


class SpoolCollector(Collector):
    """
    Messages in the spool's directories, counted at scrape time (blocking:
    scrapes run in a worker thread).
    """

    def __init__(self, spool: Any) -> None:
        self._spool = spool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "mxrecv_spool_messages",
            "Messages in the spool: new (waiting for the application), pending "
            "(MMS not complete yet), failed.",
            labels=["dir"],
        )
        downloads = 0
        for which in (NEW, PENDING, FAILED):
            names = _names(self._spool.dir(which))
            family.add_metric([which], len(names))
            if which == PENDING:
                downloads = sum(1 for n in names if not self._spool.message(PENDING, n).hasZip())
        yield family
        yield GaugeMetricFamily(
            "mxrecv_pending_downloads",
            "MMS in pending/ whose zip has yet to be downloaded from RetrieveMMS.",
            value=downloads,
        )


def _names(directory: Any) -> list[str]:
    try:
        return [e.name for e in directory.iterdir() if isName(e.name)]
    except OSError:
        return []
