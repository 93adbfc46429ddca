# -*- test-case-name: tests.test_durable,tests.test_spool -*-
"""
Blocking filesystem steps that make a file or a rename survive a crash.

Each function is called in a worker thread, never on the reactor.  With
C{sync=False} (benchmarks only) the data is written the same way without
the fsyncs, so that the cost of durability can be measured.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection
from pathlib import Path

from mxrecv.spool.mode import DEFAULT_MODE


def fsyncPath(path: Path, sync: bool = True) -> None:
    """
    fsync a file or a directory by path.
    """
    if not sync:
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY if path.is_dir() else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def createFile(path: Path, flags: int, mode: int) -> int:
    """
    Open C{path} with C{flags} (C{O_CREAT} among them), a new file having
    exactly C{mode}, whatever the umask.

    @return: the file descriptor.
    """
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def makeDirectory(path: Path, mode: int) -> None:
    """
    Create the directory C{path} with exactly C{mode}, whatever the umask
    (a set-group-ID bit included).

    @raise FileExistsError: if it exists.
    """
    os.mkdir(path, mode)
    os.chmod(path, mode)


def writeNew(path: Path, data: bytes, sync: bool = True, mode: int = DEFAULT_MODE) -> None:
    """
    Create C{path} (which must not exist) holding C{data}, and fsync it.
    The caller fsyncs the directory.

    @param mode: the new file's permissions, exactly (L{createFile}).
    """
    fd = createFile(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        writeAll(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def writeAll(fd: int, data: bytes) -> None:
    """
    Write all of C{data} to the file descriptor C{fd}.
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def replaceFile(path: Path, data: bytes, sync: bool = True, mode: int = DEFAULT_MODE) -> None:
    """
    Replace C{path} with a file holding C{data}, atomically and durably.
    The new file has C{mode} from its creation, whatever the permissions
    of the file it replaces.
    """
    temporary = path.with_name(path.name + ".new")
    temporary.unlink(missing_ok=True)
    try:
        writeNew(temporary, data, sync, mode)
        os.replace(temporary, path)
    except BaseException:
        # Created but not written (a full disk): it must not stay beside
        # the file, to be moved on with the message.
        temporary.unlink(missing_ok=True)
        raise
    fsyncPath(path.parent, sync)


def moveDir(source: Path, destination: Path, sync: bool = True) -> None:
    """
    Rename the directory C{source} to C{destination} (which must not exist
    or be an empty directory) and fsync both parents.

    @raise OSError: C{EEXIST} or C{ENOTEMPTY} if C{destination} exists.
    """
    os.rename(source, destination)
    fsyncPath(destination.parent, sync)
    if source.parent != destination.parent:
        fsyncPath(source.parent, sync)


def keepOnly(directory: Path, names: Collection[str]) -> bool:
    """
    Remove everything in C{directory} but the entries named in C{names}:
    what a crash or a failed write may have left there.  The caller fsyncs
    the directory if anything was removed.

    @return: whether anything was removed.
    """
    removed = False
    for entry in directory.iterdir():
        if entry.name not in names:
            removeTree(entry)
            removed = True
    return removed


def removeTree(path: Path) -> None:
    """
    Remove a directory tree, or a file, if it exists.
    """
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
