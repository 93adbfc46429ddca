"""
The schema in a real PostgreSQL: made and upgraded by C{mxrecv db-init}
(idempotent, safe from two nodes at once), checked before delivery with an
error that says what to do.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mxrecv.deliver.postgresql import schema
from mxrecv.deliver.postgresql.schema import VERSION, SchemaError, check, upgrade
from mxrecv.ops.cli import main

from .postgresql import cluster, database


class SchemaTests(SynchronousTestCase):
    def test_upgradeIdempotent(self) -> None:
        """
        The first upgrade makes the tables and records the version; the next
        does nothing.
        """
        db = database(self, initialise=False)
        with db.connect() as connection:
            self.assertEqual(schema.currentVersion(connection), 0)
            self.assertEqual(upgrade(connection), (0, VERSION))
            self.assertEqual(upgrade(connection), (VERSION, VERSION))
            self.assertEqual(check(connection), VERSION)
        self.assertEqual(db.query("SELECT version FROM mxrecv_schema"), [(VERSION,)])
        tables = db.query(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_name LIKE 'mxrecv%%' ORDER BY 1"
        )
        self.assertEqual(tables, [("mxrecv_message",), ("mxrecv_part",), ("mxrecv_schema",)])

    def test_twoAtOnce(self) -> None:
        """
        Two nodes running db-init at the same moment: each migration is
        applied once, and neither fails.
        """
        db = database(self, initialise=False)
        results: list[object] = []
        holder = db.connect()
        self.addCleanup(holder.close)
        # Hold the lock, so that both upgrades wait for it and then race.
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (schema.LOCK_KEY,))

        def run() -> None:
            try:
                with db.connect() as connection:
                    results.append(upgrade(connection))
            except Exception as e:
                results.append(e)

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        with db.connect() as watcher:
            while watcher.execute(waiting).fetchone() != (2,):
                pass
        holder.execute("COMMIT")
        for t in threads:
            t.join()
        self.assertEqual(sorted(results), [(0, VERSION), (VERSION, VERSION)])

    def test_missing(self) -> None:
        """
        No tables: the check says to run db-init.
        """
        db = database(self, initialise=False)
        with db.connect() as connection:
            e = self.assertRaises(SchemaError, check, connection)
        self.assertEqual(
            str(e),
            "the database has no mxrecv tables: create them with mxrecv db-init -c CONFIG",
        )

    def test_older(self) -> None:
        """
        Tables older than this mxrecv's: the check says to run db-init.
        """
        db = database(self)
        with db.connect() as connection:
            e = self.assertRaises(SchemaError, check, connection, VERSION + 1)
        self.assertIn(f"at version {VERSION}, older than this mxrecv's {VERSION + 1}", str(e))
        self.assertIn("mxrecv db-init -c CONFIG", str(e))

    def test_newerAccepted(self) -> None:
        """
        Tables a newer mxrecv upgraded (during a rolling upgrade of the
        nodes) are accepted: migrations only add.
        """
        db = database(self)
        db.query("INSERT INTO mxrecv_schema (version) VALUES (%s) RETURNING version", VERSION + 1)
        with db.connect() as connection:
            self.assertEqual(check(connection), VERSION + 1)
            self.assertEqual(upgrade(connection), (VERSION + 1, VERSION + 1))

    def test_notUTF8(self) -> None:
        """
        A database in another encoding than UTF8 is refused by both.
        """
        db = database(self, initialise=False)
        name = db.name + "_latin1"
        with cluster().admin() as admin:
            admin.execute(
                f"CREATE DATABASE {name} OWNER mxrecv ENCODING 'LATIN1' "
                "LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
            )
        self.addCleanup(cluster().dropDatabase, name)
        import psycopg

        with psycopg.connect(cluster().conninfo(name), password=db.password) as connection:
            for f in (check, upgrade):
                e = self.assertRaises(SchemaError, f, connection)
                self.assertIn("encoding is LATIN1", str(e))


class DbInitTests(SynchronousTestCase):
    def dbInit(self, deliver: str = "", password: str | None = None) -> tuple[int, str, str]:
        """
        Run C{mxrecv db-init -c FILE} on a configuration file whose
        C{[deliver]} table has C{deliver}, and a password file if given.
        """
        base = Path(self.mktemp())
        base.mkdir()
        if password is not None:
            (base / "pg-password").write_text(password + "\n")
            deliver += 'postgresql_password_file = "pg-password"\n'
        (base / "mxrecv.toml").write_text(f"[deliver]\n{deliver}")
        out, err = io.StringIO(), io.StringIO()
        status = main(["db-init", "-c", str(base / "mxrecv.toml")], out, err)
        return status, out.getvalue(), err.getvalue()

    def test_createsThenNothingToDo(self) -> None:
        """
        C{mxrecv db-init -c CONFIG} makes the tables, then says there is
        nothing to do.
        """
        db = database(self, initialise=False)
        where = f"mxrecv@127.0.0.1:{db.cluster.port}/{db.name}"
        deliver = f'postgresql = "{db.conninfo}"\n'
        self.assertEqual(
            self.dbInit(deliver, db.password),
            (0, f"{where}: created the mxrecv tables (version {VERSION})\n", ""),
        )
        self.assertEqual(
            self.dbInit(deliver, db.password),
            (0, f"{where}: the mxrecv tables are at version {VERSION}; nothing to do\n", ""),
        )

    def test_errors(self) -> None:
        """
        Without [deliver] postgresql, or with a database that refuses the
        password, it exits 1 saying why, and never shows the password.
        """
        self.assertEqual(
            self.dbInit(), (1, "", "mxrecv: the configuration has no [deliver] postgresql\n")
        )
        db = database(self, initialise=False)
        status, out, err = self.dbInit(f'postgresql = "{db.conninfo}"\n', "not-it-at-all")
        self.assertEqual((status, out), (1, ""))
        self.assertIn('password authentication failed for user "mxrecv"', err)
        self.assertNotIn("not-it-at-all", err)

    def test_checkConfig(self) -> None:
        """
        C{mxrecv check-config} names the database (never the password).
        """
        db = database(self, initialise=False)
        base = Path(self.mktemp())
        base.mkdir()
        (base / "mxrecv.toml").write_text(
            f'[deliver]\npostgresql = "{db.conninfo}"\n'
            f'postgresql_password_file = "{db.passwordFile}"\n'
        )
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(main(["check-config", str(base / "mxrecv.toml")], out, err), 0)
        self.assertIn(
            f"  deliver: postgresql mxrecv@127.0.0.1:{db.cluster.port}/{db.name}\n",
            out.getvalue(),
        )
        self.assertNotIn(db.password, out.getvalue())
