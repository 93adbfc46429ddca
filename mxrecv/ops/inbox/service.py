# -*- test-case-name: tests.test_inbox_pages -*-
"""
The inbox put together: L{buildInbox} makes its service (a thread pool of
its own; the catalog opened and brought up to date at start-up) and the
resource to mount at C{/inbox} on the admin site.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import IResource

from mxrecv.ops.bearer import BearerToken
from mxrecv.ops.inbox.inbox import Inbox
from mxrecv.ops.inbox.resource import InboxResource
from mxrecv.spool.mode import SpoolMode

log = Logger()

#: Threads for the inbox: one for the catalog at a time (it holds a lock),
#: the other for message pages and downloads meanwhile.
THREADS = 2


class InboxService(Service):
    """
    Runs the inbox's thread pool and opens its catalog; stopped after the
    admin listeners (add it to the parent before them).

    @ivar resource: what to mount at C{/inbox} on the admin site.
    """

    def __init__(self, inbox: Inbox, resource: IResource) -> None:
        self.inbox = inbox
        self.resource = resource

    def startService(self) -> None:
        super().startService()
        self.inbox.pool.start()
        self.inbox.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        d = self.inbox.stop()
        d.addErrback(lambda f: log.failure("Closing the inbox's catalog", f))
        return d.addBoth(lambda _: self.inbox.pool.stop())


def buildInbox(
    root: Path,
    *,
    reactor: IReactorFromThreads,
    sync: bool = True,
    takeUp: Callable[[str], object] = lambda name: None,
    token: BearerToken = BearerToken(),
    mode: SpoolMode = SpoolMode(),
) -> InboxService:
    """
    The inbox of the spool at C{root}: a service to add to mxrecv's (before
    the admin listeners) and, as its C{resource}, the C{/inbox} resource.

    @param token: the admin listener's (C{[admin] token}), which the
        requeue form then asks for.
    """
    pool = ThreadPool(minthreads=0, maxthreads=THREADS, name="mxrecv-inbox")
    inbox = Inbox(root, reactor=reactor, pool=pool, sync=sync, takeUp=takeUp, mode=mode)
    return InboxService(inbox, InboxResource(inbox, token=token))

