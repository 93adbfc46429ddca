# -*- test-case-name: tests.test_workers -*-
"""
The names the leader must hear of (an MMS accepted into C{pending/} by
another worker, a message committed into C{new/}, a C{POST /pending/NAME}),
passed on by the parent; kept while no worker leads, and given to the next
leader as soon as it says it leads.
"""

from __future__ import annotations

from collections import deque

from twisted.logger import Logger

from mxrecv.workers.control import message
from mxrecv.workers.slot import Slot

log = Logger()

# Names kept for the leader while no worker leads; more are dropped (the
# next leader takes up all of pending/ and new/ when it starts anyway).
MAX_WAITING = 10_000


class Relay:
    """
    @ivar leader: the slot of the worker that leads, if one does.
    """

    def __init__(self, limit: int = MAX_WAITING) -> None:
        self.leader: Slot | None = None
        self._limit = limit
        self._waiting: deque[bytes] = deque()
        self._dropped = 0

    def tell(self, verb: str, name: str) -> None:
        """
        Pass a name on to the leader, or keep it until one leads.
        """
        data = message(verb, name)
        if self.leader is not None and self.leader.process is not None:
            self.leader.send(data)
        elif len(self._waiting) < self._limit:
            self._waiting.append(data)
        else:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % self._limit == 0:
                log.warn(
                    "No worker leads and {count} names wait for one: dropped {dropped} "
                    "(the next leader takes up all of pending/ and new/ when it starts)",
                    count=len(self._waiting),
                    dropped=self._dropped,
                )

    def leads(self, slot: Slot) -> None:
        """
        C{slot}'s worker says it leads: it gets what waited.
        """
        if self.leader is not slot:
            log.info("Worker {worker} (pid {pid}) leads", worker=slot.number, pid=slot.pid)
        self.leader = slot
        waiting, self._waiting = self._waiting, deque()
        if waiting:
            slot.send(b"".join(waiting))

    def ended(self, slot: Slot) -> None:
        """
        C{slot}'s process ended: if it led, no worker leads until another
        says so.
        """
        if self.leader is slot:
            self.leader = None
