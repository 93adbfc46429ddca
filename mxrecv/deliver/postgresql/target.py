# -*- test-case-name: tests.test_postgresql_target -*-
"""
The C{postgresql} delivery target: each message stored by
L{mxrecv.deliver.postgresql.store.storeMessage} in a thread of the
connection pool.  The queue (L{mxrecv.deliver.queue}) records a message as
delivered only once this target says so, which it does only after the
commit, or on finding the id already there.

What a failure means (L{outcomeOf}): a database that cannot be reached, is
shutting down, is out of space, or lacks mxrecv's tables (or the rights to
them) would fail the next message the same way, so the failure is temporary
and everything waits, in order, until it is fixed.  A message that
PostgreSQL refuses for what it holds (SQLSTATE classes 22, data exception,
and 23, integrity constraint violation) or whose files in the spool cannot
be read is a permanent failure: it does not hold up the messages behind it.
What PostgreSQL cannot hold in text is replaced before any statement is sent
(L{mxrecv.deliver.postgresql.sanitise}), so such a refusal is not expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attrs import evolve
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mxrecv.config import DeliverConfig
from mxrecv.deliver.interfaces import ITarget
from mxrecv.deliver.outcome import Delivered, Outcome, PermanentFailure, TemporaryFailure
from mxrecv.deliver.postgresql import schema
from mxrecv.deliver.postgresql.connect import Settings, describe
from mxrecv.deliver.postgresql.pool import ConnectionPool
from mxrecv.deliver.postgresql.schema import SchemaError
from mxrecv.deliver.postgresql.store import MessageUnreadable, Stored, storeMessage

log = Logger()

#: Seconds the check at start-up waits for the database: an unreachable
#: one must not hold up the callbacks for long.
STARTUP_TIMEOUT = 3.0
#: SQLSTATE classes that refuse a message for what it holds.
PERMANENT_CLASSES = ("22", "23")


@implementer(ITarget)
class PostgreSQLTarget(Service):
    """
    Store each message in the database of C{pool}'s connections.  As a
    service, it starts the pool and, once stopped, closes its connections.

    @param node: this node's name, stored in each row it inserts.
    """

    name = "postgresql"

    def __init__(self, pool: ConnectionPool, *, node: str) -> None:
        self._pool = pool
        self._node = node

    def startService(self) -> None:
        super().startService()
        self._pool.start()

    def stopService(self) -> None:
        super().stopService()
        self._pool.stop()

    def deliver(self, directory: Path) -> Deferred[Outcome]:
        d = self._pool.run(storeMessage, directory, self._node)
        return d.addCallbacks(self._stored, outcomeOf, (directory,))

    def _stored(self, stored: Stored, directory: Path) -> Outcome:
        if stored.changes:
            log.warn(
                "new/{name} stored in PostgreSQL with changes: {changes}",
                name=directory.name,
                changes="; ".join(stored.changes),
            )
        if not stored.inserted:
            log.info(
                "new/{name} was already in PostgreSQL (stored by another node, or before "
                "a restart); marked delivered",
                name=directory.name,
            )
        return Delivered()


def outcomeOf(reason: Failure) -> Outcome:
    """
    What an attempt that raised C{reason} means.
    """
    error = reason.value
    if isinstance(error, MessageUnreadable):
        return PermanentFailure(str(error))
    if isinstance(error, SchemaError):
        return TemporaryFailure(str(error))
    sqlstate = getattr(error, "sqlstate", None)
    why = _sentence(error)
    if sqlstate is not None and sqlstate[:2] in PERMANENT_CLASSES:
        return PermanentFailure(f"PostgreSQL refused it ({sqlstate}): {why}")
    if sqlstate is not None:
        return TemporaryFailure(f"PostgreSQL: {why} ({sqlstate})")
    if _isPsycopgError(error):
        return TemporaryFailure(f"PostgreSQL: {why}")
    log.failure("Storing a message in PostgreSQL", reason)
    return TemporaryFailure(f"internal error: {type(error).__name__}: {why}")


def _sentence(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(error).__name__


def _isPsycopgError(error: BaseException) -> bool:
    import psycopg

    return isinstance(error, psycopg.Error)


def checkDatabase(config: DeliverConfig) -> None:
    """
    The check of C{[deliver] postgresql} at start-up, before callbacks are
    taken (by a server of one process, or by the parent of several before
    it starts any worker): a schema missing or older than this mxrecv's
    stops start-up (L{SystemExit}, naming C{mxrecv db-init}).  A database
    that cannot be reached does not: callbacks are taken all the same, and
    the schema is checked on each connection made later (L{checked}).

    Blocking, for at most L{STARTUP_TIMEOUT} seconds.
    """
    assert config.postgresql is not None
    settings = settingsFor(config)
    where = describe(config.postgresql)
    try:
        with evolve(settings, timeout=STARTUP_TIMEOUT).connect() as connection:
            version = schema.check(connection)
    except SchemaError as e:
        raise SystemExit(f"mxrecv: deliver.postgresql ({where}): {e}") from None
    except Exception as e:
        if not _isPsycopgError(e):
            raise
        log.warn(
            "PostgreSQL ({where}) cannot be reached at start-up: {why}; messages wait in "
            "the spool until it can",
            where=where,
            why=_sentence(e),
        )
    else:
        log.info(
            "Delivering into PostgreSQL ({where}, schema version {version}) as node {node}",
            where=where,
            version=version,
            node=settings.node,
        )


def buildTarget(config: DeliverConfig, *, reactor: IReactorFromThreads) -> PostgreSQLTarget:
    """
    The target for C{[deliver] postgresql}.  It does not look at the
    database: that is L{checkDatabase}, at start-up; after it, each
    connection the target makes is checked (L{checked}), and a schema that
    is not usable fails each delivery, temporarily (L{outcomeOf}).  So a
    worker that comes to lead long after start-up, or after its
    predecessor died, never stops on the database.
    """
    assert config.postgresql is not None
    settings = settingsFor(config)
    pool = ConnectionPool(
        lambda: checked(settings.connect()), size=config.postgresql_pool_size, reactor=reactor
    )
    return PostgreSQLTarget(pool, node=settings.node)


def settingsFor(config: DeliverConfig) -> Settings:
    """
    The connection settings of C{[deliver]}.
    """
    assert config.postgresql is not None
    return Settings(
        conninfo=config.postgresql,
        password=config.postgresql_password,
        timeout=config.timeout,
        node=config.postgresql_node,
    )


def checked(connection: Any) -> Any:
    """
    C{connection}, once L{schema.check} found the schema usable; closed if not.
    """
    try:
        schema.check(connection)
    except BaseException:
        connection.close()
        raise
    return connection
