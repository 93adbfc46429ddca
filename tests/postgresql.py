"""
A real PostgreSQL for the tests: one throwaway cluster per test process
(L{mxrecv.testing.postgresql.TemporaryCluster}), started by the first test
that needs it and removed when the process exits, and a fresh database per
test.
"""

from __future__ import annotations

import atexit
import itertools
import os
from pathlib import Path
from typing import Any

from attrs import frozen
from twisted.trial.unittest import TestCase

from mxrecv.config import DeliverConfig
from mxrecv.testing.postgresql import TemporaryCluster

_cluster: TemporaryCluster | None = None
_names = itertools.count(1)


def cluster() -> TemporaryCluster:
    """
    This process's cluster, started.
    """
    global _cluster
    if _cluster is None:
        _cluster = TemporaryCluster()
        atexit.register(_cluster.destroy)
        _cluster.start()
    elif not _cluster.running:
        _cluster.start()
    return _cluster


@frozen
class Database:
    """
    A database of the test's own, owned by the role C{mxrecv}.

    @ivar conninfo: its connection string for mxrecv (no password in it).
    @ivar password: the role's password.
    @ivar passwordFile: a file holding it (mode 0600).
    """

    cluster: TemporaryCluster
    name: str
    conninfo: str
    password: str
    passwordFile: Path

    def connect(self, **kwargs: Any) -> Any:
        """
        A psycopg connection as C{mxrecv} (autocommit).
        """
        import psycopg

        return psycopg.connect(self.conninfo, password=self.password, autocommit=True, **kwargs)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """
        The rows of one query, on a connection of its own.
        """
        with self.connect() as connection:
            return connection.execute(sql, params or None).fetchall()

    def deliverConfig(self, **keys: Any) -> DeliverConfig:
        """
        A C{[deliver]} table for this database, with short backoffs.
        """
        keys.setdefault("backoff_initial", 0.05)
        keys.setdefault("backoff_max", 0.2)
        keys.setdefault("timeout", 20.0)
        return DeliverConfig(
            postgresql=self.conninfo, postgresql_password=self.password, **keys
        )


def database(case: TestCase, initialise: bool = True) -> Database:
    """
    A new database for C{case}, dropped at its end; with mxrecv's tables
    unless C{initialise} is false.
    """
    running = cluster()
    name = f"test_{os.getpid()}_{next(_names)}"
    conninfo = running.createDatabase(name)
    case.addCleanup(lambda: cluster().dropDatabase(name))
    passwordFile = Path(case.mktemp()).absolute()
    passwordFile.write_text(running.password + "\n")
    passwordFile.chmod(0o600)
    db = Database(running, name, conninfo, running.password, passwordFile)
    if initialise:
        from mxrecv.deliver.postgresql.schema import upgrade

        with db.connect() as connection:
            upgrade(connection)
    return db
