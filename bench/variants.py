"""
Experimental variants of mxrecv, for measuring what a change to its hot path
would buy before anyone makes it in mxrecv/ (bench/run.py --variants).  Each
variant patches mxrecv in this process only, then runs twistd:

    python bench/variants.py VARIANT[,VARIANT...] -n --pidfile= mxrecv --config FILE

  compact-json  message.json without indentation: json.dumps then uses its C
                encoder (indent= forces the pure-Python one)
  no-log        no log event per callback
  syncfs        group commit by syncfs(2): prepare writes without fsync, and
                each group commit starts with one syncfs of the spool's
                filesystem (durable, but it also flushes whatever else is
                dirty on that filesystem)
  nosync        [spool] fsync = false: not durable; the ceiling without disk
  no-complete   an MMS stays in pending/ after its 200: no unpacking into
                new/ (which the peers do not do), to time S3 without it
                (until the sweep of pending/, at start-up and every 5
                minutes, which still unpacks: runs must be shorter)
  checkout      the mxrecv of another checkout, named by the environment
                variable MXRECV_BENCH_CHECKOUT (e.g. a git worktree of an
                earlier commit): before and after a change, in one run

These are measurements, not proposals to copy as they are.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys


def compactJSON() -> None:
    from mxrecv.message import model as message

    def encode(self) -> bytes:
        return json.dumps(self.toJSON(), ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n"

    message.Message.encode = encode


def noLog() -> None:
    from mxrecv.web import resource

    resource.CallbackResource._log = lambda self, *args, **kwargs: None


def syncfs() -> None:
    from mxrecv.spool import store as spool

    libc = ctypes.CDLL(None, use_errno=True)
    prepare = spool.Spool._prepare
    commitGroup = spool.Spool._commitGroup

    def _prepare(self, commit):
        sync, self.sync = self.sync, False
        try:
            return prepare(self, commit)
        finally:
            self.sync = sync

    def _commitGroup(self, group, prune):
        if self.sync:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if libc.syncfs(fd) != 0:
                    raise OSError(ctypes.get_errno(), "syncfs failed")
            finally:
                os.close(fd)
        return commitGroup(self, group, prune)

    spool.Spool._prepare = _prepare
    spool.Spool._commitGroup = _commitGroup


def noSync() -> None:
    from mxrecv import config

    original = config.parseConfig

    def parseConfig(document, base=config.Path(".")):
        document = {**document, "spool": {**document.get("spool", {}), "fsync": False}}
        return original(document, base)

    config.parseConfig = parseConfig


def noComplete() -> None:
    from mxrecv.web import resource

    init = resource.CallbackResource.__init__

    def __init__(self, **kwargs):
        init(self, **{**kwargs, "onPending": lambda name: None})

    resource.CallbackResource.__init__ = __init__


def checkout() -> None:
    root = os.environ.get("MXRECV_BENCH_CHECKOUT")
    if not root:
        raise SystemExit("variant checkout: set MXRECV_BENCH_CHECKOUT to a checkout of mxrecv")
    sys.path.insert(0, root)
    import mxrecv

    if not mxrecv.__file__.startswith(root):
        raise SystemExit(f"mxrecv came from {mxrecv.__file__}, not {root}")
    print(f"variant checkout: mxrecv from {mxrecv.__file__}", flush=True)


VARIANTS = {
    "compact-json": compactJSON,
    "no-log": noLog,
    "syncfs": syncfs,
    "nosync": noSync,
    "no-complete": noComplete,
    "checkout": checkout,
}


def main() -> None:
    for name in sys.argv[1].split(","):
        VARIANTS[name]()
    sys.argv = ["twistd", *sys.argv[2:]]
    from twisted.scripts.twistd import run

    run()


if __name__ == "__main__":
    main()
