# -*- test-case-name: tests.test_cli -*-
"""
C{mxrecv}: the operator's command, beside the server (C{twistd mxrecv}).

    mxrecv check-config FILE
    mxrecv [-c FILE] list [new|pending|failed]
    mxrecv [-c FILE] show NAME
    mxrecv [-c FILE] requeue NAME [--admin URL]

It reads the spool directly and needs no running server.  C{requeue} moves
a failed MMS back to C{pending/}; a running server takes it up at its next
start (C{systemctl restart mxrecv} is a graceful restart), or at once when
C{--admin} names its admin listener (C{POST /pending/NAME}).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from mxrecv.config import Config, ConfigError, loadConfig
from mxrecv.mms.attempts import Attempts
from mxrecv.mms.retrieve import requeuedState
from mxrecv.spool.durable import moveDir, replaceFile
from mxrecv.spool.layout import (
    DELIVERED,
    FAILED,
    MESSAGE_JSON,
    NEW,
    PENDING,
    RETRIEVE_JSON,
    STATE,
)
from mxrecv.spool.naming import isName, nameForId

DIRECTORIES = (NEW, PENDING, FAILED)


class CommandError(Exception):
    """
    The command cannot do what was asked; the message says why.
    """


def checkConfig(path: str, out: TextIO) -> None:
    config = loadConfig(path)
    out.write(f"{path}: ok\n")
    out.write(f"  listen: {', '.join(config.server.listen)}\n")
    out.write(f"  spool: {config.spool.dir}\n")
    admin = config.admin
    out.write(f"  admin: {', '.join(admin.listen) or 'none'}\n")
    if admin.listen:
        allow = ", ".join(str(n) for n in admin.allow)
        token = "required for POST" if admin.token else "none"
        out.write(f"    allow: {allow}; token: {token}\n")
    deliver = config.deliver
    targets = [t for t in ("command" if deliver.command else "", deliver.url or "") if t]
    out.write(f"  deliver: {', '.join(targets) or 'none'}\n")


def listMessages(root: Path, which: Sequence[str], out: TextIO) -> None:
    """
    One line per message, oldest first: directory, name, type, received,
    sender, and for a failed one its error.
    """
    rows = []
    for directory in which:
        for entry in _entries(root / directory):
            document = _document(entry)
            rows.append(
                (
                    document.get("received") or "",
                    directory,
                    entry.name,
                    document.get("type") or "?",
                    document.get("from") or "?",
                    document.get("error") or "",
                )
            )
    for received, directory, name, kind, sender, error in sorted(rows):
        line = "\t".join([directory, name, kind, received or "?", sender])
        out.write(line + (f"\t{error}" if error else "") + "\n")


def show(root: Path, nameOrId: str, out: TextIO) -> None:
    directory, path = _find(root, nameOrId)
    out.write(f"{directory}/{path.name}\n")
    for f in sorted(path.rglob("*")):
        if f.is_file():
            out.write(f"  {f.relative_to(path)}\t{f.stat().st_size} bytes\n")
    delivered = sorted(
        target.name
        for target in (root / STATE / DELIVERED).glob("*")
        if (target / path.name).exists()
    )
    if directory == NEW:
        out.write(f"delivered to: {', '.join(delivered) or 'nothing yet'}\n")
    out.write((path / MESSAGE_JSON).read_text("utf-8", "surrogateescape"))


def requeue(
    root: Path,
    nameOrId: str,
    out: TextIO,
    sync: bool = True,
    admin: str | None = None,
    now: float | None = None,
    token: str = "",
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
    document = _document(path)
    before = _attemptsSummary(document)
    for key in ("error", "attempts", "attempt_count"):
        document.pop(key, None)
    data = json.dumps(document, ensure_ascii=False, indent=2).encode() + b"\n"
    replaceFile(path / MESSAGE_JSON, data, sync)
    replaceFile(path / RETRIEVE_JSON, requeuedState(time.time() if now is None else now), sync)
    try:
        moveDir(path, root / PENDING / path.name, sync)
    except OSError as e:
        raise CommandError(f"cannot move it to pending/: {e.strerror}") from None
    out.write(f"failed/{path.name} -> pending/{path.name}{before}\n")
    if admin is None:
        out.write(
            "a running mxrecv takes it up within 5 minutes, at its next sweep of pending/ "
            "(or at once with --admin URL)\n"
        )
        return
    url = f"{admin.rstrip('/')}/pending/{path.name}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        request = urllib.request.Request(url, method="POST", headers=headers)
        with urllib.request.urlopen(request, timeout=10):
            pass
    except (OSError, ValueError) as e:
        raise CommandError(
            f"moved, but {url} did not take it up ({e}); it will be at the next sweep "
            "of pending/ (within 5 minutes) or start"
        ) from None
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


def _entries(directory: Path) -> list[Path]:
    try:
        return sorted(e for e in directory.iterdir() if isName(e.name) and e.is_dir())
    except FileNotFoundError:
        return []


def _document(path: Path) -> dict[str, Any]:
    try:
        document = json.loads((path / MESSAGE_JSON).read_bytes())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def _find(root: Path, nameOrId: str) -> tuple[str, Path]:
    """
    Where a message is, by its directory name or by its id.
    """
    candidates = [nameOrId] if isName(nameOrId) else []
    candidates.append(nameForId(nameOrId))
    for name in candidates:
        for directory in DIRECTORIES:
            path = root / directory / name
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
    for name, text in (("show", "show one message"), ("requeue", "retry a failed MMS")):
        command = commands.add_parser(name, help=text)
        command.add_argument("name", help="the message's directory name, or its id")
    command.add_argument(
        "--admin",
        metavar="URL",
        help="the running server's admin listener (http://127.0.0.1:9100): take it up now",
    )
    return p


def main(
    argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "check-config":
            checkConfig(args.file, out)
            return 0
        config: Config = loadConfig(args.config)
        root = config.spool.dir
        if not (root / STATE).is_dir():
            raise CommandError(f"{root}: not an mxrecv spool")
        if args.command == "list":
            listMessages(root, [args.which] if args.which else DIRECTORIES, out)
        elif args.command == "show":
            show(root, args.name, out)
        else:
            requeue(
                root, args.name, out, config.spool.fsync, args.admin, token=config.admin.token
            )
    except (ConfigError, CommandError) as e:
        err.write(f"mxrecv: {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
