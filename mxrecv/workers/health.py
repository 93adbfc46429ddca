# -*- test-case-name: tests.test_workers -*-
"""
The workers' health as the parent sees it: the C{/health} check
C{workers} and the metrics C{mxrecv_worker_*}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mxrecv.ops.admin import Check
from mxrecv.workers.slot import Slot


def workersCheck(
    slots: Sequence[Slot], leader: Slot | None, *, now: float, expected: int
) -> Check:
    """
    The check C{workers}: which are up (running, heard from lately,
    listening on all C{expected} sockets) and which leads, with each
    worker's state; it passes while one at least is up and one leads.
    """
    up = [slot for slot in slots if slot.isUp(now, expected)]
    parts = [f"{len(up)} of {len(slots)} up"]
    parts.append("no leader" if leader is None else f"worker {leader.number} leads")
    states = [
        {
            "worker": slot.number,
            "pid": slot.pid if slot.process is not None else None,
            "up": slot in up,
            "leader": slot is leader,
            "listening": slot.listening,
            "restarts": slot.restarts.total,
            "seconds_since_alive": None
            if slot.lastAlive is None
            else round(now - slot.lastAlive, 3),
        }
        for slot in slots
    ]
    return Check("workers", bool(up) and leader is not None, "; ".join(parts), {"workers": states})


class WorkersCollector(Collector):
    """
    The workers as the parent sees them (C{check}, L{workersCheck}): up or
    not, leading or not, and how many times each was started again.
    """

    def __init__(self, check: Callable[[], Check]) -> None:
        self._check = check

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily(
            "mxrecv_worker_up",
            "Whether the worker process is running, answering its parent and listening.",
            labels=["worker"],
        )
        leader = GaugeMetricFamily(
            "mxrecv_worker_leader",
            "Whether the worker process leads (MMS work, delivery, prune).",
            labels=["worker"],
        )
        restarts = CounterMetricFamily(
            "mxrecv_worker_restarts",
            "Times the worker process died and was started again.",
            labels=["worker"],
        )
        for state in self._check().more["workers"]:
            label = [str(state["worker"])]
            up.add_metric(label, 1 if state["up"] else 0)
            leader.add_metric(label, 1 if state["leader"] else 0)
            restarts.add_metric(label, state["restarts"])
        yield up
        yield leader
        yield restarts
