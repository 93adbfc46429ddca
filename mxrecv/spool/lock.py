# -*- test-case-name: tests.test_sharedspool,tests.test_spool -*-
"""
Who may use the spool: one server at a time, which holds an exclusive
C{flock} on C{state/lock} (released by the kernel however its holder
dies).  A server of several worker processes takes it once, in the parent
(L{lockSpool}), and each worker adopts the descriptor it inherits
(L{adoptLock}).

Blocking: called before the reactor runs.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from mxrecv.spool.durable import createFile, makeDirectory
from mxrecv.spool.layout import CUR, DIRECTORIES, LOCK, STATE
from mxrecv.spool.mode import SpoolMode


class SpoolLocked(Exception):
    """
    Another process holds the spool.
    """


def lockSpool(root: Path, mode: SpoolMode = SpoolMode()) -> int:
    """
    Create the spool's layout (its directories of C{mode}; those of mxrecv
    given C{mode} again if it changed, C{cur/} left to the application once
    made) and take its lock, exclusively.

    @return: the file descriptor holding the lock.
    @raise SpoolLocked: if another server uses this spool.
    @raise OSError: if the spool cannot be created.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    for directory in (root, *(root / which for which in DIRECTORIES)):
        try:
            makeDirectory(directory, mode.directory)
        except FileExistsError:
            # The spool's own directory (made by the operator, or systemd's
            # StateDirectory=) and cur/ (the application's) are left as
            # they are.
            if directory == root or directory.name == CUR:
                continue
        if mode.group is not None:
            os.chown(directory, -1, mode.group)
        os.chmod(directory, mode.directory)
    lock = createFile(root / STATE / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode.file)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        raise SpoolLocked(f"another process is using the spool {root}") from None
    return lock


def adoptLock(root: Path, fd: int) -> int:
    """
    Check that the inherited C{fd} is this spool's lock file, holding its
    lock (taking it again through the same open file is a no-op); it is
    then closed on exec, so that no process this one runs holds it.

    @return: C{fd}.
    @raise SpoolLocked: if it is not, or another server holds the lock.
    """
    try:
        held, path = os.fstat(fd), os.stat(root / STATE / LOCK)
    except OSError as e:
        raise SpoolLocked(f"the inherited lock of {root} is not usable: {e.strerror}") from None
    if (held.st_dev, held.st_ino) != (path.st_dev, path.st_ino):
        raise SpoolLocked(f"the inherited lock is not the lock of the spool {root}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SpoolLocked(f"another process is using the spool {root}") from None
    os.set_inheritable(fd, False)
    return fd
