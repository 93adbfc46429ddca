# -*- test-case-name: tests.test_spool -*-
"""
The spool: the Maildir-like directory the application reads (its names in
L{layout}, message names in L{naming}), durable writes (L{durable},
L{writer}), accepting messages (L{store}), the group commit (L{commit}),
the seen-id index (L{seen}, L{seenjournal}), start-up recovery
(L{recovery}) and the lock that keeps it to one server (L{lock}).
L{openSpool} opens it, L{SpoolService} keeps it while running and
L{PruneService} prunes its seen-id index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mxrecv.spool.service import (
        IO_THREADS,
        UPLOAD_THREADS,
        PruneService,
        SpoolService,
        openSpool,
    )

__all__ = ["IO_THREADS", "UPLOAD_THREADS", "PruneService", "SpoolService", "openSpool"]


def __getattr__(name: str) -> Any:
    # The builders are loaded when first asked for, so that importing one
    # module of this package (a pure one, or the command line's) does not
    # load the whole subsystem.
    if name in __all__:
        from mxrecv.spool import service

        return getattr(service, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
