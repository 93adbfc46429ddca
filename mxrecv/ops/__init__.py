# -*- test-case-name: tests.test_tap -*-
"""
Running mxrecv: the service's layers and thread pools (L{service}), the
admin listener (L{admin}), metrics (L{metrics}), logs (L{logs}) and the
C{mxrecv} command (L{cli}).  L{MxrecvService} and L{buildAdmin} build it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mxrecv.ops.admin import buildAdmin
    from mxrecv.ops.service import MxrecvService, OrderedService, ThreadPoolService

__all__ = ["MxrecvService", "OrderedService", "ThreadPoolService", "buildAdmin"]


def __getattr__(name: str) -> Any:
    # The builders are loaded when first asked for, so that importing one
    # module of this package (a pure one, or the command line's) does not
    # load the whole subsystem.
    if name in ("MxrecvService", "OrderedService", "ThreadPoolService"):
        from mxrecv.ops import service

        return getattr(service, name)
    if name == "buildAdmin":
        from mxrecv.ops import admin

        return getattr(admin, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
