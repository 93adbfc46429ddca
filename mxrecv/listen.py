# -*- test-case-name: tests.test_config -*-
"""
Listening endpoints from the C{[server] listen} strings.

The strings are ordinary Twisted endpoint descriptions, so HTTP and HTTPS (and
UNIX sockets behind a proxy) share one code path, as in C{twisted.web.tap}.
"""

from __future__ import annotations

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint


def parseListen(description: str) -> str:
    """
    Check that C{description} is an endpoint string Twisted can build.

    @raise ValueError: naming what is wrong with it.
    """
    try:
        # Building an endpoint does not listen, so no reactor is needed yet.
        serverFromString(None, description)
    except ValueError as e:
        raise ValueError(f"bad endpoint {description!r}: {e}") from None
    except Exception as e:
        raise ValueError(f"bad endpoint {description!r}: {e}") from None
    return description


def endpointFor(reactor, description: str) -> IStreamServerEndpoint:
    return serverFromString(reactor, description)
