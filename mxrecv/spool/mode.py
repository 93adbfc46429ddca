# -*- test-case-name: tests.test_durable -*-
"""
The permissions of what mxrecv writes in the spool: one mode for every
file (C{[spool] mode}), from which the directories' follows (each class
that may read may enter), and optionally one group (C{[spool] group}) that
owns all of it.

With a group, the spool's directories carry the set-group-ID bit, so that
everything made in them (staging directories, messages, their parts) takes
their group, through renames too, without a C{chown} per file.  Applied
exactly, whatever the process's umask.
"""

from __future__ import annotations

import grp
import stat

from attrs import frozen

#: Owner read and write, group read: an application in mxrecv's group (or
#: C{[spool] group}) reads the messages.
DEFAULT_MODE = 0o640


@frozen
class SpoolMode:
    """
    @ivar file: the mode of every file (no execute bits).
    @ivar group: the group ID that owns the spool, or L{None} for the
        process's own group.
    """

    file: int = DEFAULT_MODE
    group: int | None = None

    @property
    def directory(self) -> int:
        """
        The mode of every directory: the files' mode, with execute (enter)
        for each class that may read, and set-group-ID with a group.
        """
        mode = self.file | ((self.file & 0o444) >> 2)
        return mode | stat.S_ISGID if self.group is not None else mode

    @classmethod
    def named(cls, file: int = DEFAULT_MODE, group: str | None = None) -> SpoolMode:
        """
        The mode C{file} and the group called C{group}.

        @raise KeyError: if there is no such group.
        """
        return cls(file, None if group is None else grp.getgrnam(group).gr_gid)
