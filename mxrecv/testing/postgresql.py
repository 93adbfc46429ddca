"""
A throwaway PostgreSQL cluster for tests and benchmarks: C{initdb} into a
temporary directory, the server on a free port of 127.0.0.1 (and a socket
in that directory), stopped and removed at the end.

    cluster = TemporaryCluster()
    cluster.start()
    conninfo = cluster.createDatabase("app")   # owned by the role "mxrecv"
    ...
    cluster.destroy()

It needs PostgreSQL's server programs (Debian: the C{postgresql} package;
C{initdb} and C{pg_ctl} are looked for in C{/usr/lib/postgresql/*/bin},
the newest first, then on C{PATH}).  C{initdb} refuses to run as root: as
root, every server program runs as the C{postgres} user (C{runuser}).

Connections over TCP need a password (SCRAM), those on the socket are
trusted: C{admin()} connects as the superuser on the socket, and
C{createDatabase} returns a C{postgresql://} string for the role C{mxrecv},
whose password is C{password}, as an mxrecv would be configured.

A watchdog process (L{WATCHDOG}) outlives the one that made the cluster:
if that process dies without destroying it (a test run killed, or timed
out), the watchdog stops the server and removes the directory within a few
seconds, so no server is left behind.
"""

from __future__ import annotations

import glob
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROLE = "mxrecv"


#: Run with the owner's pid, the cluster's directory and the command that
#: stops its server: waits for the owner to die, then stops the server and
#: removes the directory; ends by itself once the directory is gone.
WATCHDOG = """
import os, shutil, subprocess, sys, time
owner, root, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
while os.path.isdir(root):
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        subprocess.run(stop, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
        break
    time.sleep(2)
"""


class ClusterError(Exception):
    """
    The cluster could not be made or started; the message holds the output.
    """


def serverPrograms() -> Path:
    """
    The directory of C{initdb}, C{pg_ctl} and C{postgres}.

    @raise ClusterError: if PostgreSQL's server programs are not installed.
    """
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    if versions:
        return Path(versions[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise ClusterError(
        "PostgreSQL's server programs (initdb, pg_ctl) are not installed: "
        "apt-get install postgresql"
    )


class TemporaryCluster:
    """
    A PostgreSQL cluster of its own, in a temporary directory.

    @ivar port: its TCP port on 127.0.0.1 (once started).
    @ivar password: the password of the role C{mxrecv}.
    """

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mxrecv-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.password = secrets.token_hex(16)
        self.port = 0
        self._settings = dict(settings or {})
        self._bin = serverPrograms()
        self._asPostgres = os.geteuid() == 0
        self._made = False
        self._roleMade = False
        if self._asPostgres:
            shutil.chown(self.root, "postgres", "postgres")

    # Running the server programs

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(self._bin / program), *args]
        if self._asPostgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return command

    def _run(self, program: str, *args: str) -> str:
        command = self._command(program, *args)
        done = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
        )
        if done.returncode:
            raise ClusterError(f"{program} failed ({done.returncode}): {done.stdout}{done.stderr}")
        return done.stdout

    def _initdb(self) -> None:
        superuser = self.root / "superuser-password"
        superuser.write_text(secrets.token_hex(16))
        if self._asPostgres:
            shutil.chown(superuser, "postgres", "postgres")
        self._run(
            "initdb",
            "-D", str(self.data),
            "-U", "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={superuser}",
            "-E", "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )
        superuser.unlink()
        self._made = True
        stop = self._command("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        subprocess.Popen(
            [sys.executable, "-c", WATCHDOG, str(os.getpid()), str(self.root), *stop],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def start(self, attempts: int = 10) -> None:
        """
        Start the server (making the cluster first, the first time), on the
        port it had if it had one, else on a free one.
        """
        if not self._made:
            self._initdb()
        ports = [self.port] if self.port else [_freePort() for _ in range(attempts)]
        error = None
        for port in ports:
            try:
                self._start(port)
            except ClusterError as e:
                if "Address already in use" not in self.log.read_text(errors="replace"):
                    raise
                error = e
                continue
            self.port = port
            if not self._roleMade:
                self._createRole()
                self._roleMade = True
            return
        raise ClusterError(f"no free port found: {error}")

    def _start(self, port: int) -> None:
        options = [
            f"-p {port}",
            f"-k {self.root}",
            "-c listen_addresses=127.0.0.1",
            *(f"-c {key}={value}" for key, value in self._settings.items()),
        ]
        if self.log.exists():
            self.log.unlink()
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", " ".join(options), "start")

    def stop(self, mode: str = "fast") -> None:
        """
        Stop the server: C{"fast"} (sessions ended, a clean shut-down) or
        C{"immediate"} (as a crash: recovered at the next start).
        """
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        """
        Stop the server if it runs, and remove everything.
        """
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # Databases and connections

    def admin(self, dbname: str = "postgres") -> Any:
        """
        A psycopg connection as the superuser (autocommit), on the socket.
        """
        import psycopg

        return psycopg.connect(
            host=str(self.root), port=self.port, user="postgres", dbname=dbname, autocommit=True
        )

    def _createRole(self) -> None:
        from psycopg import sql

        with self.admin() as connection:
            connection.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(ROLE), sql.Literal(self.password)
                )
            )

    def createDatabase(self, name: str) -> str:
        """
        A new database owned by the role C{mxrecv}.

        @return: its connection string, for the role C{mxrecv} over TCP
            (without the password).
        """
        from psycopg import sql

        with self.admin() as connection:
            connection.execute(
                sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8'").format(
                    sql.Identifier(name), sql.Identifier(ROLE)
                )
            )
        return self.conninfo(name)

    def dropDatabase(self, name: str) -> None:
        from psycopg import sql

        with self.admin() as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def conninfo(self, dbname: str) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{dbname}"


def _freePort() -> int:
    """
    A port of 127.0.0.1 free now, below the range the kernel picks
    clients' ports from, so that no outgoing connection takes it while the
    server is stopped (a test that restarts it needs the same port).
    """
    low = _ephemeralStart()
    for _ in range(100):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise ClusterError("no free port below the ephemeral range")


def _ephemeralStart() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
