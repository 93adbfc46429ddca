# -*- test-case-name: tests.test_connections -*-
"""
File descriptors: each connection holds one (two while its upload is being
written), and so do the spool's files, RetrieveMMS downloads and delivery.
The soft limit most systems start a process with, 1024, is filled by about a
thousand idle connections; the hard limit is usually far higher, and any
process may raise its soft limit up to it.
"""

from __future__ import annotations

import resource

from twisted.logger import Logger

log = Logger()

# Descriptors kept for what is not a callback connection: the spool, the
# seen index, logs, downloads, delivery, the admin listener.
RESERVED_FILES = 256
# Descriptors counted per connection: its socket and an upload's file.
FILES_PER_CONNECTION = 2


def raiseFileLimit() -> int:
    """
    Raise this process's soft limit on open files (RLIMIT_NOFILE) to its
    hard limit.

    @return: the soft limit now.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as e:
        log.warn(
            "Cannot raise the limit on open files from {soft} to {hard}: {error}",
            soft=soft,
            hard=hard,
            error=e,
        )
        return soft
    log.info("Open files limit raised from {soft} to {hard}", soft=soft, hard=hard)
    return hard


def connectionCap(configured: int, files: int) -> int:
    """
    The most connections to let in: C{configured}, unless C{files}
    descriptors cannot hold that many beside the ones reserved for the rest.
    """
    room = max(1, (files - RESERVED_FILES) // FILES_PER_CONNECTION)
    return min(configured, room)
