# -*- test-case-name: tests.test_retrieve -*-
"""
MMS completion and retrieval in a running mxrecv: every MMS accepted into
C{pending/} is completed into C{new/} off the request path, its zip first
downloaded from RetrieveMMS in GET mode (when C{[retrieve] user} is set).
"""

from __future__ import annotations

from typing import Protocol

from attrs import frozen
from twisted.application.service import IServiceCollection
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from mxrecv.config import Config
from mxrecv.interfaces import IServerReactor
from mxrecv.mms.complete import Completer
from mxrecv.mms.pending import PendingService, PendingWork
from mxrecv.mms.recover import RecoveryMetrics
from mxrecv.mms.retrieve import RetrievalMetrics, Retriever, RetrieveService, makeRetriever
from mxrecv.spool.store import Spool
from mxrecv.spool.writer import FileWriters

log = Logger()


class MMSMetrics(RetrievalMetrics, RecoveryMetrics, Protocol):
    """
    Where the MMS work reports (L{mxrecv.ops.metrics.Metrics}).
    """


@frozen
class MMSWork:
    """
    @ivar pending: takes up an MMS in C{pending/} by name.
    @ivar retriever: downloads GET-mode MMS; L{None} while retrieval is off.
    """

    pending: PendingWork
    retriever: Retriever | None


def buildMMS(
    config: Config,
    *,
    spool: Spool,
    reactor: IServerReactor,
    pool: ThreadPool,
    writers: FileWriters,
    metrics: MMSMetrics,
    parent: IServiceCollection,
) -> MMSWork:
    """
    Complete (and, in GET mode, retrieve) each MMS in C{pending/}: those a
    previous run left there once running, and each one that C{pending} is
    called with.

    The services are added to C{parent} in the order they start: the
    retriever (stopped after the rest: stopping abandons the downloads in
    flight, whose messages stay journaled in C{pending/}), then the sweep of
    C{pending/}.

    @param writers: write and hash the downloads (shared with the uploads).
    @raise SystemExit: when C{[retrieve] ca_file} cannot be used.
    """
    completer = Completer(spool, reactor=reactor, pool=pool)
    retriever = None
    if config.retrieve.user:
        try:
            retriever = makeRetriever(
                config.retrieve,
                spool=spool,
                completer=completer,
                reactor=reactor,
                pool=pool,
                writers=writers,
                zone=config.server.timezone,
                maxBody=config.server.max_body,
                metrics=metrics,
            )
        except (OSError, ValueError) as e:
            raise SystemExit(f"mxrecv: retrieve.ca_file: {e}") from None
        RetrieveService(retriever).setServiceParent(parent)
        log.info(
            "Retrieving GET-mode MMS from {url} as {user}, {concurrency} at a time",
            url=config.retrieve.url,
            user=config.retrieve.user,
            concurrency=config.retrieve.concurrency,
        )
    else:
        log.warn(
            "[retrieve] user is empty: GET-mode MMS notifications are kept in "
            "pending/ but not downloaded"
        )
    pending = PendingWork(spool, completer, retrieve=retriever, clock=reactor, metrics=metrics)
    PendingService(pending, reactor).setServiceParent(parent)
    return MMSWork(pending, retriever)
