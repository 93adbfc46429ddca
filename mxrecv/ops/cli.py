# -*- test-case-name: tests.test_cli -*-
"""
C{mxrecv}: the operator's command, beside the server (C{twistd mxrecv}).

    mxrecv check-config FILE
    mxrecv [-c FILE] list [new|pending|failed|--undeliverable]
    mxrecv [-c FILE] show NAME
    mxrecv [-c FILE] requeue NAME [--admin URL]
    mxrecv [-c FILE] redeliver NAME [--target T] [--admin URL]
    mxrecv db-init -c FILE
    mxrecv webhook-secret [--out FILE]

It reads the spool directly and needs no running server.  C{db-init}
creates or upgrades the tables of C{[deliver] postgresql}.  C{requeue} moves
a failed MMS back to C{pending/}; a running server takes it up at its next
sweep of C{pending/}, or at once when C{--admin} names its admin listener
(C{POST /pending/NAME}).  C{redeliver} puts a dead letter back in its
delivery queue: the server does it at once with C{--admin} (C{POST
/deliver/NAME}); without it, the record is removed here and a running server
takes the message up at its next sweep of C{new/}.  C{webhook-secret} makes
a C{[deliver] secret_file}.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from mxrecv.config import Config, ConfigError, loadConfig
from mxrecv.deliver.records import Records
from mxrecv.deliver.signature import newSecret
from mxrecv.message.dates import isoFromTimestamp
from mxrecv.message.text import printable, printableJSON
from mxrecv.spool.directory import MessageDirectory
from mxrecv.spool.layout import FAILED, MESSAGE_JSON, NEW, PENDING, STATE, Attempts, Layout
from mxrecv.spool.mode import SpoolMode
from mxrecv.spool.naming import isName, nameForId

DIRECTORIES = (NEW, PENDING, FAILED)


class CommandError(Exception):
    """
    The command cannot do what was asked; the message says why.
    """


def checkConfig(path: str, out: TextIO, err: TextIO) -> None:
    """
    Validate the configuration at C{path}, say what it sets up on C{out},
    and what is unwise in it on C{err} (a warning does not make it fail).
    """
    config = loadConfig(path)
    out.write(f"{path}: ok\n")
    for warning in config.warnings:
        err.write(f"{path}: warning: {warning}\n")
    out.write(f"  listen: {', '.join(config.server.listen)}\n")
    out.write(f"  spool: {config.spool.dir}\n")
    admin = config.admin
    out.write(f"  admin: {', '.join(admin.listen) or 'none'}\n")
    if admin.listen:
        allow = ", ".join(str(n) for n in admin.allow)
        token = "required for POST" if admin.token else "none"
        out.write(f"    allow: {allow}; token: {token}\n")
    deliver = config.deliver
    url = deliver.url and deliver.url + (" (signed)" if deliver.secret else "")
    targets = [t for t in ("command" if deliver.command else "", url or "") if t]
    if deliver.postgresql is not None:
        from mxrecv.deliver.postgresql.connect import describe

        targets.append(f"postgresql {describe(deliver.postgresql)}")
    out.write(f"  deliver: {', '.join(targets) or 'none'}\n")


def listMessages(root: Path, which: Sequence[str], out: TextIO) -> None:
    """
    One line per message, oldest first: directory, name, type, received,
    sender, and for a failed one its error; tab-separated, each field with
    its control characters (tabs and line breaks included) escaped, so that
    what a sender wrote cannot make a column or a row of its own.
    """
    rows = []
    for directory in which:
        for entry in _entries(root / directory):
            document = MessageDirectory(entry).readDocument()
            rows.append(
                (
                    str(document.get("received") or ""),
                    directory,
                    entry.name,
                    str(document.get("type") or "?"),
                    str(document.get("from") or "?"),
                    str(document.get("error") or ""),
                )
            )
    for received, directory, name, kind, sender, error in sorted(rows):
        fields = [directory, name, kind, received or "?", sender] + ([error] if error else [])
        out.write("\t".join(map(printable, fields)) + "\n")


def show(root: Path, nameOrId: str, out: TextIO) -> None:
    """
    Where a message is, its files and deliveries, and its C{message.json}:
    file names with their control characters escaped, C{message.json} with
    those JSON leaves raw (DEL, C1 controls...) written as JSON escapes, so
    that it is the same document.
    """
    directory, path = _find(root, nameOrId)
    out.write(f"{directory}/{path.name}\n")
    for f in sorted(path.rglob("*")):
        if f.is_file():
            out.write(f"  {printable(str(f.relative_to(path)))}\t{f.stat().st_size} bytes\n")
    delivered = sorted(
        target.name
        for target in Layout(root).delivered().glob("*")
        if (target / path.name).exists()
    )
    if directory == NEW:
        out.write(f"delivered to: {printable(', '.join(delivered)) or 'nothing yet'}\n")
        for target, name, record in Records(root).undeliverable():
            if name != path.name:
                continue
            out.write(f"undeliverable to {target}: {printable(str(record.get('error')))}\n")
            for attempt in record.get("attempts") or []:
                at, outcome = attempt.get("at"), attempt.get("outcome")
                out.write(f"  {printable(str(at))}\t{printable(str(outcome))}\n")
    out.write(printableJSON((path / MESSAGE_JSON).read_text("utf-8", "surrogateescape")))


def listUndeliverable(root: Path, out: TextIO) -> None:
    """
    One line per dead letter, oldest message first: target, name, type,
    received, sender, attempts and error; escaped as L{listMessages}'s.
    """
    rows = []
    for target, name, record in Records(root).undeliverable():
        document = MessageDirectory.at(root, NEW, name).readDocument()
        rows.append(
            (
                str(document.get("received") or ""),
                target,
                name,
                str(document.get("type") or "?"),
                str(document.get("from") or "?"),
                f"{record.get('attempt_count', '?')} attempts",
                str(record.get("error") or "?"),
            )
        )
    for received, target, name, kind, sender, attempts, error in sorted(rows):
        fields = [target, name, kind, received or "?", sender, attempts, error]
        out.write("\t".join(map(printable, fields)) + "\n")


def redeliver(
    root: Path,
    nameOrId: str,
    out: TextIO,
    *,
    target: str | None = None,
    sync: bool = True,
    admin: str | None = None,
    token: str = "",
) -> None:
    """
    Put the dead letter C{new/NAME} back in the delivery queue of C{target}
    (or of every target that refused it).  With C{admin} (the running
    server's admin URL), the server does it and delivers it at once;
    without, the record is removed here, and a running server takes the
    message up at its next sweep of C{new/} (within 5 minutes) or start.
    """
    directory, path = _find(root, nameOrId)
    name = path.name
    records = Records(root, sync)
    targets = [t for t, n, _ in records.undeliverable(target) if n == name]
    if directory != NEW or not targets:
        which = f"the {target}" if target else "any target"
        raise CommandError(f"{directory}/{name} is not undeliverable to {which}")
    if admin is not None:
        query = "" if target is None else "?" + urllib.parse.urlencode({"target": target})
        _post(admin, f"/deliver/{name}{query}", token, "nothing was changed")
        out.write(f"new/{name} is being delivered again to {', '.join(targets)} by {admin}\n")
        return
    for t in targets:
        records.redeliver(t, name)
    out.write(
        f"new/{name} is no longer undeliverable to {', '.join(targets)}: a running mxrecv "
        "delivers it again within 5 minutes, at its next sweep of new/ (or at once with "
        "--admin URL)\n"
    )


def webhookSecret(out: TextIO, path: str | None = None) -> None:
    """
    Make a new secret for C{[deliver] secret_file}: written to C{path}
    (created with mode 0600; an existing file is not overwritten), or to
    C{out}.
    """
    text = newSecret() + "\n"
    if path is None:
        out.write(text)
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise CommandError(f"cannot create {path}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
    out.write(f"{path}: a new webhook secret; set [deliver] secret_file = {path!r}\n")


def _post(admin: str, path: str, token: str, otherwise: str) -> None:
    """
    C{POST} to the running server's admin listener.

    @raise CommandError: if it did not answer 2xx; C{otherwise} says what
        then happens.
    """
    url = f"{admin.rstrip('/')}{path}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        request = urllib.request.Request(url, method="POST", headers=headers)
        with urllib.request.urlopen(request, timeout=10):
            pass
    except (OSError, ValueError) as e:
        raise CommandError(f"{url} did not take it up ({e}); {otherwise}") from None


def requeue(
    root: Path,
    nameOrId: str,
    out: TextIO,
    sync: bool = True,
    admin: str | None = None,
    now: float | None = None,
    token: str = "",
    mode: SpoolMode = SpoolMode(),
) -> None:
    """
    Move C{failed/NAME} back to C{pending/NAME}, without its C{error},
    C{attempts} and C{attempt_count} (what they said is printed) and with a
    new retrieval window from C{now} (its expiry has passed), so that it is
    retrieved again: at the running server's next sweep
    of C{pending/} (within 5 minutes) or start, or now if
    C{admin} (the running server's admin URL) is given; C{token} is the
    admin listener's bearer token, if it has one.
    """
    directory, path = _find(root, nameOrId)
    if directory != FAILED:
        raise CommandError(f"{directory}/{path.name} is not in failed/")
    failed = MessageDirectory(path, sync, mode)
    before = _attemptsSummary(failed.readDocument())
    failed.requeue(isoFromTimestamp(time.time() if now is None else now))
    try:
        failed.moveTo(Layout(root).dir(PENDING))
    except OSError as e:
        raise CommandError(f"cannot move it to pending/: {e.strerror}") from None
    out.write(f"failed/{path.name} -> pending/{path.name}{before}\n")
    if admin is None:
        out.write(
            "a running mxrecv takes it up within 5 minutes, at its next sweep of pending/ "
            "(or at once with --admin URL)\n"
        )
        return
    _post(
        admin,
        f"/pending/{path.name}",
        token,
        "it was moved, and will be taken up at the next sweep of pending/ (within 5 "
        "minutes) or start",
    )
    out.write(f"taken up by the server at {admin}\n")


def _attemptsSummary(document: dict[str, Any]) -> str:
    """
    What a failed message's record says of its attempts, for the line of
    C{requeue} that moves it: how many, and the last one.
    """
    try:
        attempts = Attempts.fromJSON(document)
    except ValueError:
        return ""
    last = attempts.last
    if last is None:
        return " (no attempt was made)"
    s = "" if attempts.count == 1 else "s"
    return f" (after {attempts.count} attempt{s}; the last, at {last.at}: {last.outcome})"


def dbInit(config: Config, out: TextIO) -> None:
    """
    Create the tables of C{[deliver] postgresql}, or upgrade them to this
    mxrecv's version; idempotent.
    """
    if config.deliver.postgresql is None:
        raise CommandError("the configuration has no [deliver] postgresql")
    import psycopg

    from mxrecv.deliver.postgresql.connect import describe
    from mxrecv.deliver.postgresql.schema import VERSION, SchemaError, upgrade
    from mxrecv.deliver.postgresql.target import settingsFor

    where = describe(config.deliver.postgresql)
    try:
        with settingsFor(config.deliver).connect() as connection:
            before, after = upgrade(connection)
    except (SchemaError, psycopg.Error) as e:
        raise CommandError(f"PostgreSQL ({where}): {str(e).strip()}") from None
    if before == 0:
        out.write(f"{where}: created the mxrecv tables (version {after})\n")
    elif before < after:
        out.write(f"{where}: upgraded the mxrecv tables from version {before} to {after}\n")
    elif before > VERSION:
        out.write(
            f"{where}: the mxrecv tables are at version {before}, newer than this mxrecv's "
            f"{VERSION}; nothing to do\n"
        )
    else:
        out.write(f"{where}: the mxrecv tables are at version {after}; nothing to do\n")


def _entries(directory: Path) -> list[Path]:
    try:
        return sorted(e for e in directory.iterdir() if isName(e.name) and e.is_dir())
    except FileNotFoundError:
        return []


def _find(root: Path, nameOrId: str) -> tuple[str, Path]:
    """
    Where a message is, by its directory name or by its id.
    """
    candidates = [nameOrId] if isName(nameOrId) else []
    # The id's bytes as given on the command line, valid UTF-8 or not.
    candidates.append(nameForId(os.fsencode(nameOrId)))
    for name in candidates:
        for directory in DIRECTORIES:
            path = Layout(root).message(directory, name)
            if path.is_dir():
                return directory, path
    raise CommandError(f"no message {nameOrId!r} in new/, pending/ or failed/")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mxrecv", description="Operate an mxrecv spool.")
    p.add_argument("-c", "--config", help="the server's TOML configuration (for the spool)")
    commands = p.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file")
    listing = commands.add_parser("list", help="list messages in the spool")
    listing.add_argument("which", nargs="?", choices=DIRECTORIES, help="one directory only")
    listing.add_argument(
        "--undeliverable",
        action="store_true",
        help="the dead letters: messages a delivery target refused max_attempts times",
    )
    commands_ = [
        ("show", "show one message"),
        ("requeue", "retry a failed MMS"),
        ("redeliver", "deliver a dead letter again"),
    ]
    for name, text in commands_:
        command = commands.add_parser(name, help=text)
        command.add_argument("name", help="the message's directory name, or its id")
        if name != "show":
            command.add_argument(
                "--admin",
                metavar="URL",
                help="the running server's admin listener (http://127.0.0.1:9100): at once",
            )
    command.add_argument("--target", help="this delivery target only (command, url...)")
    secret = commands.add_parser(
        "webhook-secret", help="make a secret for [deliver] secret_file (whsec_...)"
    )
    secret.add_argument("--out", metavar="FILE", help="write it to FILE, mode 0600")
    init = commands.add_parser(
        "db-init", help="create or upgrade the tables of [deliver] postgresql"
    )
    init.add_argument(
        "-c", "--config", default=argparse.SUPPRESS, help="the server's TOML configuration"
    )
    return p


def main(
    argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "check-config":
            checkConfig(args.file, out, err)
            return 0
        if args.command == "webhook-secret":
            webhookSecret(out, args.out)
            return 0
        config: Config = loadConfig(args.config)
        if args.command == "db-init":
            dbInit(config, out)
            return 0
        root = config.spool.dir
        if not Layout(root).dir(STATE).is_dir():
            raise CommandError(f"{root}: not an mxrecv spool")
        if args.command == "list" and args.undeliverable:
            if args.which:
                raise CommandError("list: give a directory or --undeliverable, not both")
            listUndeliverable(root, out)
        elif args.command == "list":
            listMessages(root, [args.which] if args.which else DIRECTORIES, out)
        elif args.command == "show":
            show(root, args.name, out)
        elif args.command == "redeliver":
            redeliver(
                root,
                args.name,
                out,
                target=args.target,
                sync=config.spool.fsync,
                admin=args.admin,
                token=config.admin.token,
            )
        else:
            requeue(
                root,
                args.name,
                out,
                config.spool.fsync,
                args.admin,
                token=config.admin.token,
                mode=config.spool.permissions,
            )
    except (ConfigError, CommandError) as e:
        err.write(f"mxrecv: {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
