# -*- test-case-name: tests.test_workers -*-
"""
What a worker's metrics read at scrape time, made visible to the parent.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.metrics_core import Metric

from mxrecv.ops.metrics import Metrics

# Seconds between two samples of the collectors a worker watches.
SAMPLE_INTERVAL = 2.0


class GaugeBridge:
    """
    A worker's registry is not scraped (the parent's is, summing the
    workers' multiprocess files): what its metrics watch (state read at
    scrape time, such as delivery's backlog) is sampled into multiprocess
    gauges of the same names instead, summed over the workers alive.
    """

    def __init__(self, metrics: Metrics, registry: CollectorRegistry | None = None) -> None:
        self._metrics = metrics
        self._registry = registry
        self._gauges: dict[str, Gauge] = {}

    def sample(self) -> None:
        for collector in self._metrics.watched:
            for family in collector.collect():
                if family.type != "gauge":
                    continue
                for sample in family.samples:
                    gauge = self._gauge(family, sorted(sample.labels))
                    (gauge.labels(**sample.labels) if sample.labels else gauge).set(sample.value)

    def _gauge(self, family: Metric, labels: list[str]) -> Gauge:
        gauge = self._gauges.get(family.name)
        if gauge is None:
            gauge = self._gauges[family.name] = Gauge(
                family.name,
                family.documentation,
                labels,
                registry=self._registry,
                multiprocess_mode="livesum",
            )
        return gauge
