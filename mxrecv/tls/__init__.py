# -*- test-case-name: tests.test_tls -*-
"""
HTTPS: C{ssl:} listeners' certificates, checked with our TLS policy
(L{certificate}), reloaded while running (L{reload}); self-signed ones for
trials (L{selfsigned}).  L{loadCertificates} and L{reloadCertificates} build
it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mxrecv.tls.service import loadCertificates, reloadCertificates

__all__ = ["loadCertificates", "reloadCertificates"]


def __getattr__(name: str) -> Any:
    # The builders are loaded when first asked for, so that importing one
    # module of this package (a pure one, or the command line's) does not
    # load the whole subsystem.
    if name in __all__:
        from mxrecv.tls import service

        return getattr(service, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
