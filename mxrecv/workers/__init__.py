# -*- test-case-name: tests.test_workers -*-
"""
A server of several worker processes (C{[server] workers}): the parent
(L{supervisor}) makes the listening sockets and claims the spool, starts
the workers and starts them again when they die (L{restart}, L{slot}),
forwards signals, passes names on to the leader (L{relay}) and serves the
admin listener for them all (L{health}); each worker (L{worker}) accepts
callbacks on the shared sockets (L{sockets}) into the shared spool, logs
through the parent (L{logs}), shows it what its metrics read (L{gauges}),
and one of them leads (L{leader}).  They talk over pipes (L{control}).
L{buildSupervisor} builds the parent; L{Worker} is a worker's part in
C{mxrecv.tap}.  How and why: docs/workers.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mxrecv.workers.supervisor import buildSupervisor
    from mxrecv.workers.worker import Worker

__all__ = ["Worker", "buildSupervisor"]


def __getattr__(name: str) -> Any:
    # Loaded when first asked for: a server of one process needs neither.
    if name == "buildSupervisor":
        from mxrecv.workers import supervisor

        return supervisor.buildSupervisor
    if name == "Worker":
        from mxrecv.workers import worker

        return worker.Worker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
