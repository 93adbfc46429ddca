# -*- test-case-name: tests.test_deliver -*-
"""
Where messages are delivered: the one interface that the command, the URL
and the PostgreSQL targets implement, and that the queue
(L{mxrecv.deliver.queue}) drives.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from mxrecv.deliver.outcome import Outcome


class ITarget(Interface):
    """
    One destination of every message that lands in C{new/}.

    A target makes attempts and says how each went; it keeps no queue, no
    retry timer and no record: the queue has those, one per target.
    """

    name = Attribute(
        """
        The target's name (C{str}): it labels its queue, its records under
        C{state/} and its metrics, so it must not change between runs and
        must be a valid file name.
        """
    )

    def deliver(directory: Path) -> Deferred[Outcome]:
        """
        Make one attempt to deliver the message in C{directory}
        (C{new/NAME}).

        @return: fires with the attempt's L{Outcome}; a failure is a bug,
            logged and taken as a temporary failure.
        """
