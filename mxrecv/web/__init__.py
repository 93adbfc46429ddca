# -*- test-case-name: tests.test_server -*-
"""
The HTTP edge: who may call (L{access}), the request streamed into a body
handler (L{request}, L{body}, L{multipart}), the callback answered once the
message is durable (L{resource}), the listeners (L{listen}) and the drain at
shutdown (L{drain}).  L{buildSite} and L{serveCallbacks} build it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mxrecv.web.service import Edge, buildSite, serveCallbacks

__all__ = ["Edge", "buildSite", "serveCallbacks"]


def __getattr__(name: str) -> Any:
    # The builders are loaded when first asked for, so that importing one
    # module of this package (a pure one, or the command line's) does not
    # load the whole subsystem.
    if name in __all__:
        from mxrecv.web import service

        return getattr(service, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
