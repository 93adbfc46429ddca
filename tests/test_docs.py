"""
The documents that make promises about the code: the configuration
reference and the example configuration list every key of the schema, with
its true default; links between the documents lead somewhere.
"""

from __future__ import annotations

import re
import tomllib
from collections import Counter
from pathlib import Path

import attrs
from twisted.trial.unittest import SynchronousTestCase

from mxrecv.config import ConfigError, parseConfig, schemaKeys

ROOT = Path(__file__).parent.parent
REFERENCE = ROOT / "docs" / "configuration.md"
EXAMPLE = ROOT / "etc" / "mxrecv.toml"

_SECTION = re.compile(r"### `\[(\w+)\]`")
_ROW = re.compile(r"\| `([^`]+)` \| ([^|]*?) \|")
_LITERAL = re.compile(r"`([^`]+)`")


def referenceRows(text: str) -> dict[str, list[tuple[str, str]]]:
    """
    The rows of each C{### `[table]`} section of the reference: (key,
    default cell), in order; a key appears as often as it has rows.
    """
    sections: dict[str, list[tuple[str, str]]] = {}
    rows: list[tuple[str, str]] | None = None
    for line in text.splitlines():
        if line.startswith("#"):
            heading = _SECTION.fullmatch(line)
            rows = sections.setdefault(heading.group(1), []) if heading else None
        elif rows is not None and (row := _ROW.match(line)):
            rows.append((row.group(1), row.group(2)))
    return sections


def exampleKeys(text: str) -> dict[str, list[str]]:
    """
    The keys of each table of an example TOML file, those in comments
    (C{# key = value}, C{# [table]}) included.
    """
    tables: dict[str, list[str]] = {}
    keys: list[str] | None = None
    for line in text.splitlines():
        line = line.strip().removeprefix("#").strip()
        if table := re.fullmatch(r"\[(\w+)\](\s*#.*)?", line):
            keys = tables.setdefault(table.group(1), [])
        elif keys is not None and (key := re.match(r"(\w+)\s*=", line)):
            keys.append(key.group(1))
    return tables


def keyMismatch(table: str, listed: list[str]) -> str | None:
    """
    What is wrong with the keys C{listed} for C{table}, against the schema:
    keys missing, unknown or listed twice; L{None} when each is there once.
    """
    expected = Counter(schemaKeys()[table])
    found = Counter(listed)
    problems = []
    if missing := sorted(expected - found):
        problems.append(f"missing {missing}")
    if unknown := sorted(set(found) - set(expected)):
        problems.append(f"unknown {unknown}")
    if twice := sorted(key for key, n in found.items() if n > 1):
        problems.append(f"more than once {twice}")
    return f"[{table}]: " + "; ".join(problems) if problems else None


def defaultMismatch(table: str, key: str, cell: str) -> str | None:
    """
    Whether the default column C{cell} of C{table.key} says what the code
    does: a TOML literal in code must parse, as that key's value, to the
    default; words (C{none}, C{the host name}) are for a default that has
    no literal: nothing, or computed at start-up.
    """
    default = getattr(parseConfig({}), table)
    name = f"{table}.{key}"
    field = attrs.fields_dict(type(default)).get(key)
    literal = _LITERAL.fullmatch(cell)
    if literal is None:
        if field is None or not getattr(default, key):
            return None
        if isinstance(field.default, attrs.Factory):
            return None
        return f"{name}: default {cell!r} is not a TOML literal, yet it is {getattr(default, key)!r}"
    if field is None:
        return f"{name}: names a file, so has no default, not {cell}"
    try:
        value = tomllib.loads(f"value = {literal.group(1)}")["value"]
    except tomllib.TOMLDecodeError:
        return f"{name}: default {cell} is not a TOML literal"
    try:
        parsed = getattr(parseConfig({table: {key: value}}), table)
    except ConfigError as e:
        return f"{name}: default {cell} is refused: {e}"
    if getattr(parsed, key) != getattr(default, key):
        return f"{name}: default {cell} gives {getattr(parsed, key)!r}, not {getattr(default, key)!r}"
    return None


class ReferenceTests(SynchronousTestCase):
    """
    C{docs/configuration.md}, the one configuration reference, against the
    schema of L{mxrecv.config}.
    """

    def setUp(self) -> None:
        self.sections = referenceRows(REFERENCE.read_text(encoding="utf-8"))

    def test_everyTable(self) -> None:
        """
        The reference has a section for each table of the schema and for no
        other.
        """
        self.assertEqual(sorted(self.sections), sorted(schemaKeys()))

    def test_everyKeyOnce(self) -> None:
        """
        Each section has exactly one row for each key of its table, and no
        row for a key the schema does not know.
        """
        problems = [
            keyMismatch(table, [key for key, _ in self.sections.get(table, [])])
            for table in schemaKeys()
        ]
        self.assertEqual([p for p in problems if p], [])

    def test_defaults(self) -> None:
        """
        Each default the reference gives is the one the code applies.
        """
        problems = [
            defaultMismatch(table, key, cell)
            for table, rows in self.sections.items()
            if table in schemaKeys()
            for key, cell in rows
            if key in schemaKeys()[table]
        ]
        self.assertEqual([p for p in problems if p], [])


class CheckTests(SynchronousTestCase):
    """
    The checks of L{ReferenceTests} find what they look for.
    """

    def test_missingAndUnknownRows(self) -> None:
        rows = referenceRows(
            "### `[log]`\n\n| key | default | meaning |\n|---|---|---|\n"
            '| `formats` | `"text"` | x |\n\n### `[tls]`\n\n| `watch` | `0` | x |\n'
        )
        self.assertEqual(rows, {"log": [("formats", '`"text"`')], "tls": [("watch", "`0`")]})
        self.assertEqual(
            keyMismatch("log", [key for key, _ in rows["log"]]),
            "[log]: missing ['format']; unknown ['formats']",
        )
        self.assertEqual(
            keyMismatch("tls", ["watch", "watch"]),
            "[tls]: missing ['expiry_warning_days']; more than once ['watch']",
        )

    def test_wrongDefaults(self) -> None:
        self.assertIsNone(defaultMismatch("server", "request_timeout", "`300.0`"))
        self.assertIsNone(defaultMismatch("deliver", "postgresql_node", "the host name"))
        self.assertIsNone(defaultMismatch("retrieve", "password_file", "none"))
        for table, key, cell in [
            ("server", "request_timeout", "`30.0`"),
            ("server", "request_timeout", "`30 s`"),
            ("server", "request_timeout", "`0`"),
            ("server", "request_timeout", "five minutes"),
            ("retrieve", "password_file", '`""`'),
        ]:
            self.assertIsNotNone(defaultMismatch(table, key, cell), (table, key, cell))

    def test_exampleKeys(self) -> None:
        self.assertEqual(
            exampleKeys('[log]\nformat = "text"  # or json\n# [tls]\n# watch = 0\n# a note = no\n'),
            {"log": ["format"], "tls": ["watch"]},
        )


class ExampleTests(SynchronousTestCase):
    """
    C{etc/mxrecv.toml} shows every key, as its header says.
    """

    def test_everyKey(self) -> None:
        """
        Each table of the schema is in the example, with each of its keys
        once (set, or shown in a comment), and nothing else.
        """
        tables = exampleKeys(EXAMPLE.read_text(encoding="utf-8"))
        self.assertEqual(sorted(tables), sorted(schemaKeys()))
        problems = [keyMismatch(table, tables[table]) for table in schemaKeys()]
        self.assertEqual([p for p in problems if p], [])


_LINK = re.compile(r"\]\(([^)\s]+)\)")


class LinkTests(SynchronousTestCase):
    """
    The README and C{docs/} link only to files that exist.
    """

    def test_relativeLinks(self) -> None:
        broken = []
        for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
            for target in _LINK.findall(page.read_text(encoding="utf-8")):
                if re.match(r"[a-z]+:", target) or target.startswith("#"):
                    continue
                if not (page.parent / target.split("#", 1)[0]).exists():
                    broken.append(f"{page.relative_to(ROOT)}: {target}")
        self.assertEqual(broken, [])

    def test_noDatedFiles(self) -> None:
        """
        C{docs/} describes what is: no dated result files (history is in
        git; C{bench/} writes its reports elsewhere).
        """
        dated = [
            path.name
            for path in (ROOT / "docs").iterdir()
            if re.search(r"\d{4}-\d{2}-\d{2}", path.name) or path.name.startswith("benchmark-")
        ]
        self.assertEqual(dated, [])
