# -*- test-case-name: tests.test_logs -*-
"""
Where the log goes and how it looks: classic text, or JSON lines for log
shippers (C{[log] format}), with secrets taken out either way, by the
structure of the events (L{Redactor}).

twistd chooses its log observer after C{makeService}, from the application's
L{ILogObserver} component if it has one (as a C{.tac} file would set it), so
the plugin's root service sets that component when twistd attaches it to the
application (L{installObserver}).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    eventAsJSON,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.components import Componentized
from twisted.python.logfile import LogFile

from mxrecv.message.text import printable, printableLines

REDACTED = "[redacted]"
# Of no use to a log shipper (an object, written as "unpersistable").
_DROPPED = frozenset({"log_logger"})

# Names of fields and of query-string parameters that hold a secret.
_SECRET_NAMES = frozenset({"pass", "password", "pwd", "secret", "token"})
# Credentials in query strings (RetrieveMMS takes its password in the query
# string) and in URLs' user information, whatever the configured secrets are.
_QUERY_SECRET = re.compile(r"(?i)(?<=[?&;])(pass(?:word)?|pwd|secret|token)=([^&;#\s\"'\\]*)")
_URL_CREDENTIALS = re.compile(r"(?i)\b(https?://[^:/@\s\"']+):([^@/\s\"']+)@")


class Redactor:
    """
    Takes secrets out of log events, by their structure, never by looking
    for the secret as a substring of free text (a short password would
    mangle every line that merely contains its characters, and show where
    it had been): a field that holds one of the configured C{secrets},
    a field named for a secret (C{password}, C{pass}, C{pwd}, C{secret},
    C{token}), a query-string parameter of those names and the password of
    a URL's user information.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = frozenset(s for s in secrets if s)

    def event(self, event: Mapping[str, Any]) -> Mapping[str, Any]:
        """
        C{event} with its secret fields redacted (a copy, if any was): the
        fields before they are formatted into the text.
        """
        keys = event.keys() & _SECRET_NAMES
        if self._secrets:
            secrets = self._secrets
            keys.update(k for k, v in event.items() if type(v) is str and v in secrets)
        if not keys:
            return event
        return {**event, **dict.fromkeys(keys, REDACTED)}

    def text(self, text: str) -> str:
        """
        C{text} (a formatted line, a traceback) with the credentials of the
        URLs and query strings in it redacted.
        """
        # Each callback logs a line: skip the patterns where they cannot
        # match, which most lines are, and which is most of their cost.
        if "=" in text:
            text = _QUERY_SECRET.sub(rf"\1={REDACTED}", text)
        if "@" in text:
            text = _URL_CREDENTIALS.sub(rf"\1:{REDACTED}@", text)
        return text


def textObserver(outFile: IO[str], secrets: Iterable[str] = ()) -> ILogObserver:
    """
    Classic twistd log lines, redacted, with control characters escaped
    (L{printableEvent}).
    """
    redact = Redactor(secrets)
    timeStamp = secondsCache(formatTime)

    def format(event: Mapping[str, Any]) -> str | None:
        event = printableEvent(redact.event(event))
        text = formatEventAsClassicLogText(event, formatTime=timeStamp)
        return None if text is None else printableLines(redact.text(text))

    return FileLogObserver(outFile, format)


def printableEvent(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """
    C{event} with the control characters of its fields escaped (a copy, if
    any had one), so that what a client sent (an id, a sender, a reason
    quoting them) cannot forge a line of the text log or drive a terminal
    reading it: line breaks and tabs too, which the lines of the event's
    own format and traceback keep (twisted indents the lines after the
    first).  Strings and exceptions (formatted by their text) are escaped;
    other values are formatted by their repr, which escapes.
    """
    changed = {}
    for key, value in event.items():
        if key.startswith("log_"):
            continue
        if type(value) is str:
            if not value.isprintable():
                changed[key] = printable(value)
        elif isinstance(value, BaseException):
            changed[key] = printable(str(value))
    return {**event, **changed} if changed else event


def jsonObserver(outFile: IO[str], secrets: Iterable[str] = ()) -> ILogObserver:
    """
    One JSON object per line: the event's fields (a callback's C{id},
    C{type}, C{mode}, C{status}, C{bytes}, C{ack_seconds}, C{client}...),
    Twisted's C{log_*} keys (C{log_level} as a name: C{info}, C{warn}...),
    and C{log_text}, the formatted message.
    """
    redact = Redactor(secrets)

    def format(event: Mapping[str, Any]) -> str:
        event = redact.event(event)
        text = formatEvent(event)
        event = {k: v for k, v in event.items() if k not in _DROPPED}
        event["log_text"] = text
        level = event.get("log_level")
        event["log_level"] = getattr(level, "name", level)
        return redact.text(eventAsJSON(event)) + "\n"

    return FileLogObserver(outFile, format)


def secondsCache(format: Callable[[float | None], str]) -> Callable[[float | None], str]:
    """
    C{format} (a time stamp to whole seconds, like twistd's) computed once
    per second: its conversion to local time and C{strftime} cost about as
    much as the rest of a log line.
    """
    last: tuple[int | None, str] = (None, "")

    def cached(when: float | None) -> str:
        nonlocal last
        if when is None:
            return format(when)
        second = math.floor(when)
        if when - second > 0.999999:
            # Rounded to microseconds, this may be the next second.
            return format(when)
        if last[0] != second:
            last = (second, format(second))
        return last[1]

    return cached


def observerFor(format: str, outFile: IO[str], secrets: Iterable[str] = ()) -> ILogObserver:
    factory = jsonObserver if format == "json" else textObserver
    return factory(outFile, secrets)


def logFileFor(twistd: Mapping[str, Any] | None) -> IO[str] | None:
    """
    The file twistd would log to, from its options (C{--logfile},
    C{--nodaemon}); L{None} when twistd logs to syslog, which we leave alone.
    """
    twistd = twistd or {}
    if twistd.get("syslog"):
        return None
    name = twistd.get("logfile")
    if name == "-" or (not name and twistd.get("nodaemon", True)):
        return sys.stdout
    return LogFile.fromFullPath(name or "twistd.log")


def installObserver(parent: object, makeObserver: Callable[[], ILogObserver | None]) -> None:
    """
    If C{parent} is twistd's application, make the observer (this opens the
    log file) and set it as the application's log observer.
    """
    if isinstance(parent, Componentized):
        observer = makeObserver()
        if observer is not None:
            parent.setComponent(ILogObserver, observer)
