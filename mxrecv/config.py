# -*- test-case-name: tests.test_config -*-
"""
The configuration file: TOML, every key validated at start-up.

A mistake in the configuration of a server on a public port should stop it
from starting, with a message that names the key, rather than surface as odd
behaviour later.  So every table and key is known here, with its default and
its check, and anything unknown is an error.
"""

from __future__ import annotations

import base64
import binascii
import grp
import ipaddress
import os
import re
import socket
import stat
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from attrs import evolve, field, frozen
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
    serverFromString,
)

from mxrecv.spool.mode import DEFAULT_MODE, SpoolMode
from mxrecv.tls.description import TLSListen, isTLS, parseTLS


class ConfigError(ValueError):
    """
    The configuration is not usable; the message names the key.
    """


Network = ipaddress.IPv4Network | ipaddress.IPv6Network

LOOPBACK: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
# The shortest admin token accepted: a bearer token is guessed by trying.
MIN_TOKEN_LENGTH = 16


@frozen
class ServerConfig:
    listen: tuple[str, ...] = ("tcp:8080:interface=127.0.0.1",)
    path: str = "/"
    allow: tuple[Network, ...] = (ipaddress.ip_network("83.166.68.0/23"),)
    max_body: int = 100 * 1024 * 1024
    timezone: ZoneInfo = field(factory=lambda: ZoneInfo("Europe/London"))
    ack: str = "OK\n"
    request_timeout: float = 300.0
    header_timeout: float = 30.0
    shutdown_timeout: float = 30.0
    workers: int = 1
    max_connections: int = 4096
    max_connections_per_client: int = 256
    min_body_rate: float = 1024.0
    body_grace: float = 10.0


@frozen
class SpoolConfig:
    """
    @ivar mode: the mode of every file mxrecv writes in the spool; its
        directories get the same, with execute for each class that may read.
    @ivar group: the group that owns the spool (its directories are made
        set-group-ID, so that everything in them takes it), or L{None} for
        mxrecv's own group.
    """

    dir: Path = Path("var/spool")
    dedupe_days: float = 7.0
    fsync: bool = True
    mode: int = DEFAULT_MODE
    group: str | None = None

    @property
    def permissions(self) -> SpoolMode:
        """
        C{mode} and C{group}, for the spool.
        """
        return SpoolMode.named(self.mode, self.group)


@frozen
class RetrieveConfig:
    url: str = "https://mms.mxtelecom.com/RetrieveMMS"
    user: str = ""
    password: str = field(default="", repr=False)
    concurrency: int = 8
    timeout: float = 30.0
    backoff_initial: float = 5.0
    backoff_max: float = 600.0
    ca_file: Path | None = None
    max_window_days: float = 3.0


# Operations: the admin listener, the log format, delivery.


@frozen
class AdminConfig:
    """
    The admin listener (C{/metrics}, C{/health}); none unless configured.

    @ivar allow: client networks that may connect (others are dropped at
        accept).  A listener on another address than loopback is refused
        unless C{allow} is given in the file and C{token} is set.
    @ivar token: the bearer token that requests other than GET (such as
        C{POST /pending/NAME}) must carry; empty: none needed.
    @ivar hosts: names, lowercased, that the inbox answers to in a C{Host}
        header besides C{localhost}, address literals and the listen
        interfaces (L{mxrecv.ops.hosts}): a reverse proxy's.
    """

    listen: tuple[str, ...] = ()
    allow: tuple[Network, ...] = LOOPBACK
    token: str = field(default="", repr=False)
    hosts: tuple[str, ...] = ()


@frozen
class LogConfig:
    format: str = "text"


@frozen
class DeliverConfig:
    """
    Delivery of each message in C{new/} to the application: a command run
    with the message directory as its last argument, and/or a POST to a URL,
    and/or rows in PostgreSQL.

    @ivar max_attempts: refusals (permanent failures) after which a message
        is a dead letter of its target.
    @ivar concurrency: messages in flight at once, per target.
    @ivar secret: the key that signs the POSTs to C{url} (Standard
        Webhooks), from the C{whsec_} secret in C{secret_file}.
    @ivar ca_file: an extra trusted CA for an C{https://} C{url}.
    @ivar postgresql: a libpq connection string (never with a password).
    @ivar postgresql_password: read from C{postgresql_password_file}; empty
        leaves it to libpq (C{PGPASSFILE}, C{~/.pgpass}).
    @ivar postgresql_pool_size: most connections (and transactions) at once.
    @ivar postgresql_node: this node's name in the rows it stores.
    """

    command: tuple[str, ...] = ()
    url: str | None = None
    timeout: float = 60.0
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    max_attempts: int = 3
    concurrency: int = 1
    secret: bytes | None = field(default=None, repr=False)
    ca_file: Path | None = None
    postgresql: str | None = None
    postgresql_password: str = field(default="", repr=False)
    postgresql_pool_size: int = 4
    postgresql_node: str = field(factory=socket.gethostname)

    @property
    def enabled(self) -> bool:
        return bool(self.command) or self.url is not None or self.postgresql is not None


@frozen
class TLSConfig:
    """
    Settings of every C{ssl:} listener (their files are in the listen
    strings).

    @ivar watch: seconds between checks of the certificate files for changes,
        which reload them; 0 reloads only on SIGHUP.
    @ivar expiry_warning_days: warn when a certificate expires this soon.
    """

    watch: float = 0.0
    expiry_warning_days: float = 14.0


@frozen
class Config:
    """
    @ivar warnings: what is allowed but unwise in the file (a secret others
        can read, a password sent in clear), one sentence each, for
        C{mxrecv check-config} and the start-up's log.
    """

    server: ServerConfig = field(factory=ServerConfig)
    spool: SpoolConfig = field(factory=SpoolConfig)
    retrieve: RetrieveConfig = field(factory=RetrieveConfig)
    admin: AdminConfig = field(factory=AdminConfig)
    log: LogConfig = field(factory=LogConfig)
    deliver: DeliverConfig = field(factory=DeliverConfig)
    tls: TLSConfig = field(factory=TLSConfig)
    warnings: tuple[str, ...] = field(default=(), eq=False)


# Checks: each takes the raw TOML value (and the key's dotted name, for the
# message) and returns the value to store, or raises ConfigError.

Check = Callable[[str, Any], Any]


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _nonEmptyString(key: str, value: Any) -> str:
    if not _string(key, value):
        raise ConfigError(f"{key}: must not be empty")
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _positiveInt(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}: expected a whole number of at least 1, got {value!r}")
    return value


def _positiveNumber(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{key}: expected a number above 0, got {value!r}")
    return float(value)


def _stringList(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: expected a non-empty list of strings")
    return tuple(_nonEmptyString(f"{key}[{i}]", v) for i, v in enumerate(value))


def parseListen(description: str) -> str | TLSListen:
    """
    Check a C{listen} string without reading files or listening.

    @return: the L{TLSListen} for an C{ssl:} description, else the string.
    @raise ValueError: naming what is wrong with it.
    """
    try:
        if isTLS(description):
            return parseTLS(description)
        # Building an endpoint does not listen, so no reactor is needed yet.
        serverFromString(None, description)
    except Exception as e:
        raise ValueError(f"bad endpoint {description!r}: {e}") from None
    return description


def listenInterface(description: str) -> str | None:
    """
    The interface of a valid TCP or TLS C{listen} string (C{""} for all
    addresses), or L{None} for any other endpoint.
    """
    listen = parseListen(description)
    if isinstance(listen, TLSListen):
        return listen.interface
    endpoint = serverFromString(None, description)
    if isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint):
        # Twisted keeps the parsed address private.
        interface: str = endpoint._interface
        return interface
    return None


def isLoopbackListen(description: str) -> bool:
    """
    Whether a valid C{listen} string can only be reached from this machine:
    TCP on a loopback address, or a UNIX socket.  A wildcard interface (the
    default of C{tcp:PORT}) is not; nor is an endpoint whose address cannot
    be known before it listens (C{systemd:}, ...).
    """
    interface = listenInterface(description)
    if interface is None:
        return isinstance(serverFromString(None, description), UNIXServerEndpoint)
    try:
        return ipaddress.ip_address(interface.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _listen(key: str, value: Any) -> tuple[str, ...]:
    descriptions = _stringList(key, value)
    for i, description in enumerate(descriptions):
        try:
            parseListen(description)
        except ValueError as e:
            raise ConfigError(f"{key}[{i}]: {e}") from None
    return descriptions


def _listenOrNone(key: str, value: Any) -> tuple[str, ...]:
    if value == []:
        return ()
    return _listen(key, value)


_HOST_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?", re.IGNORECASE | re.ASCII)


def isHostName(name: str) -> bool:
    """
    Whether C{name} is a DNS host name (ASCII labels of letters, digits,
    C{-} and C{_}; a trailing dot allowed), or an IPv4 address written as
    one: no port, scheme or wildcard.
    """
    labels = name.removesuffix(".").split(".")
    return len(name) <= 254 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _hostNames(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of host names")
    names = []
    for i, name in enumerate(value):
        if not isinstance(name, str) or not isHostName(name):
            raise ConfigError(
                f"{key}[{i}]: {name!r} is not a host name (a name alone: no port, scheme "
                "or wildcard)"
            )
        names.append(name.lower().removesuffix("."))
    return tuple(names)


def _oneOf(*choices: str) -> Check:
    def check(key: str, value: Any) -> str:
        if value not in choices:
            known = ", ".join(map(repr, choices))
            raise ConfigError(f"{key}: expected one of {known}, got {value!r}")
        return value

    return check


def _nonNegativeNumber(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError(f"{key}: expected a number of at least 0, got {value!r}")
    return float(value)


def _workers(key: str, value: Any) -> int:
    """
    A number of processes, or C{"auto"}: as many as the cores this process
    may run on.
    """
    if value == "auto":
        return availableCores()
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}: expected \"auto\" or a whole number of at least 1, got {value!r}")
    return value


def availableCores() -> int:
    """
    The cores this process may run on (its CPU affinity, which taskset and
    cgroup cpusets narrow), else all of the machine's.
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parseConninfo(conninfo: str) -> dict[str, str]:
    """
    The parameters of a libpq connection string (C{key=value ...} or a
    C{postgresql://} URI).

    @raise ValueError: if it is not one, or if it holds a password.
    """
    try:
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        raise ValueError(
            "needs psycopg, which is not installed: pip install 'mxrecv[postgresql]'"
        ) from None
    try:
        parameters = conninfo_to_dict(conninfo)
    except ProgrammingError as e:
        raise ValueError(f"not a libpq connection string: {_firstLine(e)}") from None
    if "password" in parameters:
        raise ValueError(
            "must not hold a password: use postgresql_password_file, or PGPASSFILE"
        )
    return {k: str(v) for k, v in parameters.items()}


def _firstLine(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _conninfo(key: str, value: Any) -> str:
    _nonEmptyString(key, value)
    try:
        parseConninfo(value)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None
    return value


def _fileMode(key: str, value: Any) -> int:
    """
    A file mode, as a TOML octal integer (C{0o640}) or a string of octal
    digits (C{"0640"}): read and write for the owner (mxrecv), at most read
    and write for the others, never execute.
    """
    mode = value
    if isinstance(value, str):
        try:
            mode = int(value.removeprefix("0o"), 8)
        except ValueError:
            mode = None
    if isinstance(mode, bool) or not isinstance(mode, int) or mode & ~0o666 or mode & 0o600 != 0o600:
        raise ConfigError(
            f"{key}: expected a file mode such as 0o640 (owner read and write, "
            f"no execute), got {value!r}"
        )
    return mode


def _group(key: str, value: Any) -> str:
    name = _nonEmptyString(key, value)
    try:
        grp.getgrnam(name)
    except KeyError:
        raise ConfigError(f"{key}: no such group: {name!r}") from None
    return name


def _path(key: str, value: Any) -> str:
    if not _string(key, value).startswith("/"):
        raise ConfigError(f"{key}: must start with '/', got {value!r}")
    return value


def _networks(key: str, value: Any) -> tuple[Network, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of networks in CIDR notation")
    networks = []
    for i, v in enumerate(value):
        try:
            networks.append(ipaddress.ip_network(_string(f"{key}[{i}]", v)))
        except ValueError as e:
            raise ConfigError(f"{key}[{i}]: {e}") from None
    return tuple(networks)


def _timezone(key: str, value: Any) -> ZoneInfo:
    try:
        return ZoneInfo(_nonEmptyString(key, value))
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{key}: unknown time zone {value!r}") from None


def _directory(key: str, value: Any) -> Path:
    return Path(_nonEmptyString(key, value))


def _url(key: str, value: Any) -> str:
    parts = urlsplit(_nonEmptyString(key, value))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key}: expected an http:// or https:// URL, got {value!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{key}: must not carry a query, fragment or credentials")
    return value


_SCHEMA: Mapping[str, tuple[type, Mapping[str, Check]]] = {
    "server": (
        ServerConfig,
        {
            "listen": _listen,
            "path": _path,
            "allow": _networks,
            "max_body": _positiveInt,
            "timezone": _timezone,
            "ack": _nonEmptyString,
            "request_timeout": _positiveNumber,
            "header_timeout": _positiveNumber,
            "shutdown_timeout": _positiveNumber,
            "workers": _workers,
            "max_connections": _positiveInt,
            "max_connections_per_client": _positiveInt,
            "min_body_rate": _nonNegativeNumber,
            "body_grace": _positiveNumber,
        },
    ),
    "spool": (
        SpoolConfig,
        {
            "dir": _directory,
            "dedupe_days": _positiveNumber,
            "fsync": _bool,
            "mode": _fileMode,
            "group": _group,
        },
    ),
    "retrieve": (
        RetrieveConfig,
        {
            "url": _url,
            "user": _string,
            "password": _string,
            "password_file": _directory,
            "concurrency": _positiveInt,
            "timeout": _positiveNumber,
            "backoff_initial": _positiveNumber,
            "backoff_max": _positiveNumber,
            "ca_file": _directory,
            "max_window_days": _positiveNumber,
        },
    ),
    "admin": (
        AdminConfig,
        {
            "listen": _listenOrNone,
            "allow": _networks,
            "token": _string,
            "token_file": _directory,
            "hosts": _hostNames,
        },
    ),
    "log": (LogConfig, {"format": _oneOf("text", "json")}),
    "deliver": (
        DeliverConfig,
        {
            "command": _stringList,
            "url": _url,
            "timeout": _positiveNumber,
            "backoff_initial": _positiveNumber,
            "backoff_max": _positiveNumber,
            "max_attempts": _positiveInt,
            "concurrency": _positiveInt,
            "secret_file": _directory,
            "ca_file": _directory,
            "postgresql": _conninfo,
            "postgresql_password_file": _directory,
            "postgresql_pool_size": _positiveInt,
            "postgresql_node": _nonEmptyString,
        },
    ),
    "tls": (
        TLSConfig,
        {"watch": _nonNegativeNumber, "expiry_warning_days": _nonNegativeNumber},
    ),
}


def schemaKeys() -> Mapping[str, tuple[str, ...]]:
    """
    Every table of the configuration file and the keys it may hold, in the
    schema's order: what the one configuration reference
    (C{docs/configuration.md}) and C{etc/mxrecv.toml} must list, so that a
    check can hold them to the schema rather than to a copy of it.
    """
    return {table: tuple(checks) for table, (_, checks) in _SCHEMA.items()}


def parseConfig(document: Mapping[str, Any], base: Path = Path(".")) -> Config:
    """
    Validate a parsed TOML document and build the L{Config}.

    @param base: the directory that relative C{password_file}, C{token_file}
        and C{ca_file}
        paths are read from (the configuration file's own directory).
    """
    tables: dict[str, Any] = {}
    warnings: list[str] = []
    for table, contents in document.items():
        if table not in _SCHEMA:
            raise ConfigError(f"[{table}]: unknown table; known: {', '.join(_SCHEMA)}")
        if not isinstance(contents, dict):
            raise ConfigError(f"{table}: expected a table")
        cls, checks = _SCHEMA[table]
        values = {}
        for key, value in contents.items():
            if key not in checks:
                raise ConfigError(
                    f"{table}.{key}: unknown key; known: {', '.join(checks)}"
                )
            values[key] = checks[key](f"{table}.{key}", value)
        if table == "retrieve":
            values = _retrieveValues(values, base, warnings)
        if table == "admin":
            values = _adminValues(values, base, warnings)
        if table == "deliver":
            values = _deliverValues(values, base, warnings)
        tables[table] = cls(**values)
    config = Config(**tables)
    for name in ("retrieve", "deliver"):
        table = getattr(config, name)
        if table.backoff_max < table.backoff_initial:
            raise ConfigError(f"{name}.backoff_max: must not be less than backoff_initial")
    if config.retrieve.user and urlsplit(config.retrieve.url).scheme == "http":
        warnings.append(
            "retrieve.url: a plain http:// URL sends the RetrieveMMS password "
            "unencrypted (in its query string): use https://"
        )
    return evolve(config, warnings=tuple(warnings))


def _secretFromFile(
    values: dict[str, Any],
    base: Path,
    table: str,
    key: str,
    fileKey: str,
    warnings: list[str],
) -> None:
    """
    Read C{values[key]} from the file C{values[fileKey]} names (relative to
    C{base}; trailing whitespace stripped), if it is given; warn if users
    other than its owner and group can read it.
    """
    path = values.pop(fileKey, None)
    if path is None:
        return
    if key in values:
        raise ConfigError(f"{table}.{fileKey}: give {key} or {fileKey}, not both")
    try:
        with (base / path).open("rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            values[key] = f.read().decode("utf-8").rstrip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{table}.{fileKey}: cannot read it: {e}") from None
    if readableByOthers(mode):
        warnings.append(
            f"{table}.{fileKey}: {base / path} is readable by other users "
            f"(mode {stat.S_IMODE(mode):04o}): chmod o-rwx it"
        )


def readableByOthers(mode: int) -> bool:
    """
    Whether a file of C{mode} (an C{st_mode}) can be read by users other
    than its owner and its group's members.
    """
    return bool(mode & stat.S_IROTH)


def _adminValues(values: dict[str, Any], base: Path, warnings: list[str]) -> dict[str, Any]:
    """
    The admin listener is for operators: one on another address than
    loopback must be opened on purpose, with the networks that may reach it
    and a token for the requests that change something.
    """
    _secretFromFile(values, base, "admin", "token", "token_file", warnings)
    token = values.get("token", "")
    if token and len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"admin.token: shorter than {MIN_TOKEN_LENGTH} characters")
    for i, description in enumerate(values.get("listen", ())):
        if isLoopbackListen(description):
            continue
        if "allow" not in values or not token:
            raise ConfigError(
                f"admin.listen[{i}]: {description!r} is not only reachable from this "
                "machine (listen on 127.0.0.1 or ::1 with interface=..., or set both "
                "admin.allow, the networks that may connect, and admin.token, which "
                "requests other than GET must carry)"
            )
    return values


def _retrieveValues(values: dict[str, Any], base: Path, warnings: list[str]) -> dict[str, Any]:
    _secretFromFile(values, base, "retrieve", "password", "password_file", warnings)
    _caFile(values, base, "retrieve")
    return values


def _caFile(values: dict[str, Any], base: Path, table: str) -> None:
    if "ca_file" in values:
        caFile = base / values["ca_file"]
        if not caFile.is_file():
            raise ConfigError(f"{table}.ca_file: no such file: {caFile}")
        values["ca_file"] = caFile


def _deliverValues(values: dict[str, Any], base: Path, warnings: list[str]) -> dict[str, Any]:
    if "postgresql_password_file" in values and "postgresql" not in values:
        raise ConfigError("deliver.postgresql_password_file: given without postgresql")
    _secretFromFile(
        values, base, "deliver", "postgresql_password", "postgresql_password_file", warnings
    )
    for key in ("secret_file", "ca_file"):
        if key in values and "url" not in values:
            raise ConfigError(f"deliver.{key}: given without url")
    _caFile(values, base, "deliver")
    _secretFromFile(values, base, "deliver", "secret", "secret_file", warnings)
    if "secret" in values:
        try:
            values["secret"] = parseWebhookSecret(values["secret"])
        except ValueError as e:
            raise ConfigError(f"deliver.secret_file: {e}") from None
    return values


#: How a webhook secret starts (Standard Webhooks): C{whsec_}, then its key
#: in base64.
WEBHOOK_SECRET_PREFIX = "whsec_"
#: The sizes of key the specification allows, in bytes.
WEBHOOK_KEY_SIZES = range(24, 65)


def parseWebhookSecret(text: str) -> bytes:
    """
    The key of a C{whsec_} secret (C{[deliver] secret_file}).

    @raise ValueError: if C{text} is not one, saying why (without the
        secret).
    """
    text = text.strip()
    if not text.startswith(WEBHOOK_SECRET_PREFIX):
        raise ValueError(
            f"not a {WEBHOOK_SECRET_PREFIX} secret (make one with `mxrecv webhook-secret`)"
        )
    try:
        key = base64.b64decode(text[len(WEBHOOK_SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError(f"the part after {WEBHOOK_SECRET_PREFIX} is not base64") from None
    if len(key) not in WEBHOOK_KEY_SIZES:
        sizes = WEBHOOK_KEY_SIZES
        raise ValueError(f"its key is {len(key)} bytes; expected {sizes[0]} to {sizes[-1]}")
    return key


def loadConfig(path: str | Path | None) -> Config:
    """
    Read and validate a configuration file; L{None} gives every default.
    """
    if path is None:
        return Config()
    path = Path(path)
    try:
        with path.open("rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            document = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    try:
        config = parseConfig(document, path.parent)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if readableByOthers(mode):
        inline = [
            f"{table}.{key}"
            for table, key in _INLINE_SECRETS
            if isinstance(document.get(table), dict) and document[table].get(key)
        ]
        if inline:
            config = evolve(
                config,
                warnings=config.warnings
                + tuple(
                    f"{key}: given in {path}, which is readable by other users (mode "
                    f"{stat.S_IMODE(mode):04o}): give it in a file only mxrecv can read "
                    f"({key}_file), or chmod o-rwx {path}"
                    for key in inline
                ),
            )
    return config


# Secrets that may be written in the configuration file itself.
_INLINE_SECRETS = (("retrieve", "password"), ("admin", "token"))
