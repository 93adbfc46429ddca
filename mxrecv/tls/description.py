# -*- test-case-name: tests.test_tls -*-
"""
C{ssl:} listen descriptions, parsed without reading any file: pure, so
that the configuration can be checked without loading TLS.

They keep Twisted's syntax (C{ssl:PORT:privateKey=KEY:certKey=CERT...}), but
mxrecv builds their listeners itself (L{mxrecv.tls.certificate}).
"""

from __future__ import annotations

from pathlib import Path

from attrs import frozen

__all__ = ["TLSFiles", "TLSListen", "isTLS", "parseTLS"]

_SUPPORTED = ("port", "privateKey", "certKey", "extraCertChain", "interface", "backlog")


@frozen
class TLSFiles:
    """
    Where a listener's key and certificates are read from, each time they are
    (re)loaded.

    @ivar certKey: the certificate, optionally followed by its chain (a
        C{fullchain.pem}).
    @ivar extraCertChain: intermediate certificates, when they are in a file
        of their own.
    """

    privateKey: Path
    certKey: Path
    extraCertChain: Path | None = None

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.privateKey, self.certKey) + (
            (self.extraCertChain,) if self.extraCertChain else ()
        )


@frozen
class TLSListen:
    """
    An C{ssl:} description, parsed.
    """

    port: int
    files: TLSFiles
    interface: str = ""
    backlog: int = 50


def isTLS(description: str) -> bool:
    return description.split(":", 1)[0] == "ssl"


def endpointFields(description: str) -> list[list[str]]:
    """
    Split an endpoint description like Twisted does: fields at C{:}, a key
    from its value at the first C{=}, a backslash escapes either.
    """
    fields: list[list[str]] = [[""]]
    chars = iter(description)
    for c in chars:
        if c == "\\":
            fields[-1][-1] += next(chars, "")
        elif c == ":":
            fields.append([""])
        elif c == "=" and len(fields[-1]) == 1:
            fields[-1].append("")
        else:
            fields[-1][-1] += c
    return fields


def parseTLS(description: str) -> TLSListen:
    """
    Parse C{ssl:PORT:privateKey=KEY[:certKey=CERT][:extraCertChain=CHAIN]
    [:interface=ADDR][:backlog=N]}; C{certKey} defaults to C{privateKey} (one
    file holding both), as in Twisted.  Files are not read here.

    @raise ValueError: naming what is wrong.
    """
    fields = endpointFields(description)
    if fields[0] != ["ssl"]:
        raise ValueError("not an ssl: description")
    options: dict[str, str] = {}
    for field in fields[1:]:
        if len(field) == 1:
            if options:
                raise ValueError(f"unexpected {field[0]!r}: give options as name=value")
            field = ["port", field[0]]
        name, value = field
        if name not in _SUPPORTED:
            raise ValueError(
                f"unsupported option {name!r} (mxrecv sets its own TLS policy); "
                f"supported: {', '.join(_SUPPORTED)}"
            )
        if name in options:
            raise ValueError(f"{name} given twice")
        if not value:
            raise ValueError(f"{name} is empty")
        options[name] = value
    for name in ("port", "privateKey"):
        if name not in options:
            raise ValueError(f"{name} is required")
    port = _number("port", options["port"], 0, 65535)
    backlog = _number("backlog", options.get("backlog", "50"), 1, 65535)
    chain = options.get("extraCertChain")
    return TLSListen(
        port=port,
        files=TLSFiles(
            privateKey=Path(options["privateKey"]),
            certKey=Path(options.get("certKey", options["privateKey"])),
            extraCertChain=Path(chain) if chain else None,
        ),
        interface=options.get("interface", ""),
        backlog=backlog,
    )


def _number(name: str, value: str, low: int, high: int) -> int:
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(value)
