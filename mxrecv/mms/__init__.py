# -*- test-case-name: tests.test_complete -*-
"""
MMS completed off the request path: each one in C{pending/} (L{pending})
retrieved from RetrieveMMS in GET mode (L{retrieve} as L{schedule} decides,
L{fetch} making each attempt), unpacked safely (L{unpack}) and moved to
C{new/} (L{complete}).  L{buildMMS} builds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mxrecv.mms.service import MMSWork, buildMMS

__all__ = ["MMSWork", "buildMMS"]


def __getattr__(name: str) -> Any:
    # The builders are loaded when first asked for, so that importing one
    # module of this package (a pure one, or the command line's) does not
    # load the whole subsystem.
    if name in __all__:
        from mxrecv.mms import service

        return getattr(service, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
