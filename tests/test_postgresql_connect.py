"""
Connecting to PostgreSQL: the connection string (never with a password),
the password from a file or from libpq's own PGPASSFILE, and the settings
each connection gets; against a real server that asks for a password.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mxrecv.config import ConfigError, loadConfig
from mxrecv.deliver.postgresql.connect import Settings, describe, parseConninfo
from mxrecv.deliver.postgresql.target import settingsFor

from .postgresql import database


class ConninfoTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """
        Both forms of libpq connection strings are understood.
        """
        self.assertEqual(
            parseConninfo("postgresql://app@db.example:5433/mail"),
            {"user": "app", "host": "db.example", "port": "5433", "dbname": "mail"},
        )
        self.assertEqual(parseConninfo("host=/run/postgresql dbname=mail"),
                         {"host": "/run/postgresql", "dbname": "mail"})

    def test_noPassword(self) -> None:
        """
        A password in the string is refused, in either form, without
        repeating it.
        """
        for conninfo in ("postgresql://app:s3cret@db/mail", "host=db password=s3cret"):
            e = self.assertRaises(ValueError, parseConninfo, conninfo)
            self.assertIn("must not hold a password", str(e))
            self.assertNotIn("s3cret", str(e))

    def test_invalid(self) -> None:
        e = self.assertRaises(ValueError, parseConninfo, "host=db colour=blue")
        self.assertIn('invalid connection option "colour"', str(e))

    def test_describe(self) -> None:
        self.assertEqual(describe("postgresql://app@db:5433/mail"), "app@db:5433/mail")
        self.assertEqual(describe("dbname=mail"), "(local socket)/mail")

    def test_parameters(self) -> None:
        """
        Every connection has mxrecv's defaults, unless the string sets them;
        the client encoding is always UTF-8.
        """
        settings = Settings("host=db connect_timeout=3 client_encoding=LATIN1", timeout=60, node="n1")
        self.assertEqual(
            settings.parameters(),
            {
                "host": "db",
                "connect_timeout": "3",
                "application_name": "mxrecv n1",
                "tcp_user_timeout": "60000",
                "keepalives": "1",
                "keepalives_idle": "30",
                "keepalives_interval": "10",
                "keepalives_count": "3",
                "client_encoding": "UTF8",
            },
        )
        self.assertEqual(Settings("host=db", timeout=4).parameters()["connect_timeout"], "4")
        self.assertEqual(Settings("host=db", timeout=600).parameters()["connect_timeout"], "10")

    def test_configKeys(self) -> None:
        """
        The [deliver] keys, checked at start-up: the password file is read
        relative to the configuration file, and never shown.
        """
        base = Path(self.mktemp())
        base.mkdir()
        (base / "pw").write_text("s3cret\n")
        (base / "a.toml").write_text(
            '[deliver]\npostgresql = "postgresql://app@db/mail"\n'
            'postgresql_password_file = "pw"\npostgresql_pool_size = 2\n'
            'postgresql_node = "node-7"\n'
        )
        deliver = loadConfig(base / "a.toml").deliver
        self.assertEqual(
            (deliver.postgresql_password, deliver.postgresql_pool_size, deliver.postgresql_node),
            ("s3cret", 2, "node-7"),
        )
        self.assertNotIn("s3cret", repr(deliver))
        self.assertTrue(deliver.enabled)
        for text, error in [
            ('postgresql = "postgresql://a:b@db/x"', "deliver.postgresql: must not hold"),
            ('postgresql_password_file = "pw"', "given without postgresql"),
            ('postgresql = "x=y"', 'invalid connection option "x"'),
            ('postgresql = "host=db"\npostgresql_pool_size = 0', "postgresql_pool_size"),
        ]:
            (base / "b.toml").write_text(f"[deliver]\n{text}\n")
            e = self.assertRaises(ConfigError, loadConfig, base / "b.toml")
            self.assertIn(error, str(e))


class ConnectTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.db = database(self, initialise=False)

    def test_passwordFile(self) -> None:
        """
        With postgresql_password_file, the server's password check passes;
        the connection has the statement timeout and the node's name.
        """
        config = Path(self.mktemp())
        config.write_text(
            f'[deliver]\npostgresql = "{self.db.conninfo}"\n'
            f'postgresql_password_file = "{self.db.passwordFile}"\ntimeout = 12.5\n'
            'postgresql_node = "n1"\n'
        )
        with settingsFor(loadConfig(config).deliver).connect() as connection:
            self.assertEqual(
                connection.execute(
                    "SELECT current_user, current_setting('statement_timeout'), "
                    "current_setting('application_name'), current_setting('client_encoding')"
                ).fetchone(),
                ("mxrecv", "12500ms", "mxrecv n1", "UTF8"),
            )
            self.assertTrue(connection.autocommit)

    def test_pgpassfile(self) -> None:
        """
        Without a password file, libpq's own means work: PGPASSFILE.
        """
        import psycopg

        settings = Settings(self.db.conninfo, timeout=5)
        e = self.assertRaises(psycopg.OperationalError, settings.connect)
        self.assertIn("no password supplied", str(e))

        passfile = Path(self.mktemp())
        passfile.write_text(f"127.0.0.1:{self.db.cluster.port}:*:mxrecv:{self.db.password}\n")
        passfile.chmod(0o600)
        os.environ["PGPASSFILE"] = str(passfile)
        self.addCleanup(os.environ.pop, "PGPASSFILE")
        with settings.connect() as connection:
            self.assertEqual(connection.execute("SELECT current_user").fetchone(), ("mxrecv",))
