# -*- test-case-name: tests.test_postgresql_connect -*-
"""
How mxrecv connects to PostgreSQL: the libpq connection string of
C{[deliver] postgresql}, the password, and the settings every connection
gets.

The password is never in the configuration: it comes from
C{[deliver] postgresql_password_file}, or else libpq finds it itself
(C{PGPASSFILE}, C{~/.pgpass}, C{PGPASSWORD}).  The connection string cannot
hold one (L{parseConninfo} refuses it), so what is logged of it never does.

Every connection is in autocommit mode (transactions are explicit), speaks
UTF-8, names itself C{mxrecv NODE} in C{pg_stat_activity}, gives up
connecting after C{connect_timeout} and has every statement limited to the
delivery C{timeout}, as is unacknowledged data on the network
(C{tcp_user_timeout}); TCP keepalives find a server that vanished.  Settings
given in the connection string win over these defaults.
"""

from __future__ import annotations

import math
from typing import Any

from attrs import field, frozen

from mxrecv.config import parseConninfo

__all__ = ["CONNECT_TIMEOUT", "KEEPALIVES", "Settings", "describe", "parseConninfo"]

#: Most seconds to wait for a connection, whatever C{[deliver] timeout}.
CONNECT_TIMEOUT = 10
#: libpq parameters set unless the connection string sets them: TCP
#: keepalives find a server that vanished while the connection was idle.
KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}


def describe(conninfo: str) -> str:
    """
    Where a connection string leads, for the log: C{user@host:port/dbname}
    (libpq's defaults left out).
    """
    try:
        p = parseConninfo(conninfo)
    except ValueError:
        return "(an invalid connection string)"
    where = p.get("host") or p.get("hostaddr") or "(local socket)"
    if "port" in p:
        where += f":{p['port']}"
    user = f"{p['user']}@" if "user" in p else ""
    return f"{user}{where}/{p.get('dbname', '')}"


@frozen
class Settings:
    """
    Everything needed to open a connection.

    @ivar password: C{""} leaves the password to libpq.
    @ivar timeout: seconds a statement may take (C{statement_timeout}); also
        bounds C{connect_timeout}.
    @ivar node: this mxrecv's name, in the rows it stores and in
        C{application_name}.
    """

    conninfo: str
    password: str = field(default="", repr=False)
    timeout: float = 60.0
    node: str = "mxrecv"

    def parameters(self) -> dict[str, str]:
        """
        The libpq parameters of each connection, the password excepted.
        """
        given = parseConninfo(self.conninfo)
        defaults = {
            "connect_timeout": str(max(2, math.ceil(min(self.timeout, CONNECT_TIMEOUT)))),
            "application_name": f"mxrecv {self.node}"[:63],
            # A network gone while data is being sent (a part streaming)
            # fails the attempt after the timeout, not TCP's many minutes.
            "tcp_user_timeout": str(math.ceil(self.timeout * 1000)),
            **KEEPALIVES,
        }
        return {**defaults, **given, "client_encoding": "UTF8"}

    def connect(self) -> Any:
        """
        A new connection (blocking).

        @raise psycopg.OperationalError: if it cannot be made.
        """
        import psycopg

        extra = {"password": self.password} if self.password else {}
        connection = psycopg.connect(**self.parameters(), **extra, autocommit=True)
        try:
            connection.execute(
                "SELECT set_config('statement_timeout', %s, false)",
                (f"{math.ceil(self.timeout * 1000)}ms",),
            )
        except BaseException:
            connection.close()
            raise
        return connection
