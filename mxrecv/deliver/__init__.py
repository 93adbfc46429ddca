# -*- test-case-name: tests.test_deliver -*-
"""
Delivery of each message in C{new/} to the application (a command, a URL,
PostgreSQL).  L{buildDelivery} builds it; L{buildDeadLetters} builds what the
admin listener of a server of several processes offers of it;
L{checkDelivery} is what start-up checks of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mxrecv.deliver.service import buildDeadLetters, buildDelivery, checkDelivery

__all__ = ["buildDeadLetters", "buildDelivery", "checkDelivery"]


def __getattr__(name: str) -> Any:
    # The builders are loaded when first asked for, so that importing one
    # module of this package (a pure one, or the command line's) does not
    # load the whole subsystem.
    if name in __all__:
        from mxrecv.deliver import service

        return getattr(service, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
