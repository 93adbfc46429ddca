# -*- test-case-name: tests.test_inbox_pages -*-
"""
The inbox's HTML, with twisted.web.template: the templates are XHTML files
shipped in the package (C{templates/}); the renderers here fill them with
tags.  The template engine escapes every text and attribute value, so what
a message holds is only ever text on the page.  No script anywhere: the
pages work with links and forms alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from importlib.resources import files
from typing import Any
from urllib.parse import quote, urlencode

from twisted.python.filepath import FilePath
from twisted.web.template import Element, Tag, XMLFile, renderer, tags

from mxrecv.ops.inbox.catalog import Page
from mxrecv.ops.inbox.files import Shown
from mxrecv.ops.inbox.media import AUDIO, IMAGE, TEXT, VIDEO, PartView
from mxrecv.ops.inbox.query import FOLDERS, TYPES, Query
from mxrecv.ops.inbox.summary import Row
from mxrecv.spool.layout import FAILED, MMS_ZIP, PARTS, PENDING

#: Where the inbox is mounted on the admin site.
BASE = "/inbox"
TEMPLATES = files("mxrecv.ops.inbox") / "templates"


def _template(name: str) -> XMLFile:
    return XMLFile(FilePath(str(TEMPLATES / name)))


def messageURL(folder: str, name: str) -> str:
    return f"{BASE}/{folder}/{name}"


def partURL(folder: str, name: str, file: str) -> str:
    return f"{messageURL(folder, name)}/{PARTS}/{quote(file, safe='')}"


def zipURL(folder: str, name: str) -> str:
    return f"{messageURL(folder, name)}/{MMS_ZIP}"


def requeueURL(name: str) -> str:
    return f"{messageURL(FAILED, name)}/requeue"


def listURL(filters: dict[str, str], **page: str) -> str:
    query = urlencode({**filters, **page})
    return f"{BASE}?{query}" if query else BASE


def when(received: str) -> str:
    """
    C{received} (ISO 8601 UTC) as the pages show it: C{2026-11-25 10:30:01}.
    """
    return received.replace("T", " ").split(".")[0].removesuffix("Z") or "?"


def size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} KiB"
    return f"{count / (1024 * 1024):.1f} MiB"


class InboxPage(Element):
    """
    C{/inbox}: one page of messages, newest first, with the filters.
    """

    loader = _template("inbox.xml")

    def __init__(self, query: Query, page: Page | None, error: str | None = None) -> None:
        super().__init__()
        self._query = query
        self._page = page
        self._error = error

    @renderer
    def folders(self, request: Any, tag: Tag) -> Tag:
        counts = self._page.counts if self._page else {}
        links = [
            tags.a(
                "all",
                href=listURL({k: v for k, v in self._query.filters().items() if k != "folder"}),
                class_="current" if self._query.folder is None else "",
            )
        ]
        for folder in FOLDERS:
            filters = {**self._query.filters(), "folder": folder}
            links.append(
                tags.a(
                    f"{folder} ({counts.get(folder, 0):,})",
                    href=listURL(filters),
                    class_="current" if self._query.folder == folder else "",
                )
            )
        return tag(*links)

    @renderer
    def filters(self, request: Any, tag: Tag) -> Tag:
        q = self._query
        return tag(
            tags.label("Folder", _select("folder", q.folder, [("", "all"), *zip(FOLDERS, FOLDERS)])),
            tags.label("Type", _select("type", q.type, [("", "all"), *zip(TYPES, ("SMS", "MMS"))])),
            tags.label("From", tags.input(name="from", value=q.sender or "", size="16")),
            tags.label("Id", tags.input(name="id", value=q.ident or "", size="16")),
            tags.label(
                "Received from (UTC)",
                tags.input(type="datetime-local", name="since", value=q.since or ""),
            ),
            tags.label(
                "until (UTC)", tags.input(type="datetime-local", name="until", value=q.until or "")
            ),
            tags.button("Filter", type="submit"),
            tags.a("Clear", href=BASE),
        )

    @renderer
    def error(self, request: Any, tag: Tag) -> Tag | str:
        return tag(self._error) if self._error else ""

    @renderer
    def total(self, request: Any, tag: Tag) -> Tag | str:
        if self._page is None:
            return ""
        shown = len(self._page.rows)
        noun = "message" if self._page.total == 1 else "messages"
        return tag(f"{self._page.total:,} {noun}" + (f"; {shown} on this page" if shown else ""))

    @renderer
    def rows(self, request: Any, tag: Tag) -> Tag:
        if self._page is None or not self._page.rows:
            return tag(tags.tr(tags.td("No messages.", colspan="8")))
        return tag(*(_row(row) for row in self._page.rows))

    @renderer
    def paging(self, request: Any, tag: Tag) -> Tag | str:
        if self._page is None:
            return ""
        filters = self._query.filters()
        links = []
        if self._page.newer is not None:
            links.append(tags.a("\u00ab Newest", href=listURL(filters)))
            links.append(
                tags.a("\u2039 Newer", href=listURL(filters, after=self._page.newer.encode()),
                       rel="prev")
            )
        if self._page.older is not None:
            links.append(
                tags.a("Older \u203a", href=listURL(filters, before=self._page.older.encode()),
                       rel="next")
            )
        return tag(*links)


def _select(name: str, current: str | None, options: Sequence[tuple[str, str]]) -> Tag:
    choices = []
    for value, label in options:
        option = tags.option(label, value=value)
        if (current or "") == value:
            option(selected="selected")
        choices.append(option)
    return tags.select(*choices, name=name)


def _row(row: Row) -> Tag:
    return tags.tr(
        tags.td(tags.a(when(row.received), href=messageURL(row.folder, row.name))),
        tags.td(tags.span(row.folder, class_=f"folder folder-{row.folder}")),
        tags.td(row.type.upper() or "?"),
        tags.td(row.sender),
        tags.td(", ".join(row.recipients)),
        tags.td(row.summary, class_="summary"),
        tags.td(str(row.parts) if row.parts else "", class_="numeric"),
        tags.td(row.problem or "", class_="problem"),
        class_=f"in-{row.folder}",
    )


class MessagePage(Element):
    """
    A message: what it says and holds, and for C{failed/} why, with a
    requeue button.

    @param csrf: the requeue form's token (C{failed/} only).
    @param notice: a line at the top (after a requeue).
    @param askToken: whether the requeue form asks for the admin token.
    """

    loader = _template("message.xml")

    def __init__(
        self,
        shown: Shown,
        csrf: str | None = None,
        notice: str | None = None,
        askToken: bool = False,
    ) -> None:
        super().__init__()
        self._shown = shown
        self._document = shown.document or {}
        self._csrf = csrf
        self._notice = notice
        self._askToken = askToken

    def _text(self, key: str) -> str:
        value = self._document.get(key)
        return value if isinstance(value, str) else ""

    @renderer
    def title(self, request: Any, tag: Tag) -> Tag:
        return tag(self._text("subject") or self._text("id") or self._shown.name)

    @renderer
    def location(self, request: Any, tag: Tag) -> Tag:
        shown = self._shown
        return tag(
            tags.a(shown.folder, href=listURL({"folder": shown.folder})), f" / {shown.name}"
        )

    @renderer
    def notice(self, request: Any, tag: Tag) -> Tag | str:
        return tag(self._notice) if self._notice else ""

    @renderer
    def summary(self, request: Any, tag: Tag) -> Tag | str:
        """
        Who sent it to whom, and when: the lines a phone shows first.
        """
        if self._shown.document is None:
            return ""
        document = self._document
        lines = [
            ("Type", self._text("type").upper() or "?"),
            ("From", self._text("from")),
            ("To", _value(document.get("to"))),
        ]
        if document.get("cc"):
            lines.append(("Cc", _value(document.get("cc"))))
        lines.append(("Received (UTC)", when(self._text("received"))))
        if self._text("subject"):
            lines.append(("Subject", self._text("subject")))
        items = [item for label, value in lines for item in (tags.dt(label), tags.dd(value))]
        return tags.section(tags.dl(*items), class_="summary")

    @renderer
    def failure(self, request: Any, tag: Tag) -> Tag | str:
        shown = self._shown
        if shown.folder != FAILED:
            return ""
        attempts = self._document.get("attempts")
        section = tags.section(
            tags.h2("Failed"),
            tags.p(self._text("error") or "No reason recorded."),
            class_="failure",
        )
        if isinstance(attempts, list) and attempts:
            section(_attempts(attempts))
        if self._csrf is not None:
            token = (
                tags.label(
                    "Admin token",
                    tags.input(
                        type="password", name="token", required="required",
                        autocomplete="current-password",
                    ),
                )
                if self._askToken
                else ""
            )
            section(
                tags.form(
                    tags.input(type="hidden", name="csrf", value=self._csrf),
                    token,
                    tags.button("Requeue", type="submit", name="requeue", value="1"),
                    tags.span(
                        "Moves it back to pending/ with a new retrieval window "
                        "(as mxrecv requeue does)."
                    ),
                    method="post",
                    action=requeueURL(shown.name),
                    class_="requeue",
                )
            )
        return section

    @renderer
    def content(self, request: Any, tag: Tag) -> Tag | str:
        shown = self._shown
        if shown.problem is not None:
            return tags.section(tags.h2("Unreadable"), tags.p(shown.problem), class_="error")
        kind = self._text("type")
        if kind == "sms":
            return tags.section(tags.h2("Text"), tags.pre(self._text("message"), class_="text"))
        section = tags.section(tags.h2("Content"), class_="content")
        partsError = self._text("parts_error")
        if partsError:
            section(tags.p("The zip was not unpacked: ", partsError, class_="error"))
        if not shown.order:
            if shown.folder == PENDING:
                section(tags.p("Not complete yet: its zip is awaited or being unpacked."))
            elif not partsError:
                section(tags.p("No parts."))
            return section
        if not shown.smil and len(shown.order) > 1:
            section(tags.p("No SMIL part: in the zip's order.", class_="caption"))
        for part in shown.order:
            section(self._slide(part))
        return section

    def _slide(self, part: PartView) -> Tag:
        shown = self._shown
        url = partURL(shown.folder, shown.name, part.file)
        caption = tags.div(
            tags.a(part.name, href=url), f" \u00b7 {part.contentType} \u00b7 {size(part.size)}",
            class_="caption",
        )
        if part.kind == IMAGE:
            body: Tag | str = tags.img(src=url, alt=part.name)
        elif part.kind == AUDIO:
            body = tags.audio(src=url, controls="controls", preload="metadata")
        elif part.kind == VIDEO:
            body = tags.video(src=url, controls="controls", preload="metadata")
        elif part.kind == TEXT and part.file in shown.texts:
            text, cut = shown.texts[part.file]
            body = tags.pre(text + ("\n\u2026 (cut: download it for the rest)" if cut else ""),
                            class_="text")
        else:
            body = tags.p("Not shown here: download it.")
        return tags.figure(body, caption, class_=f"slide slide-{part.kind}")

    @renderer
    def files(self, request: Any, tag: Tag) -> Tag | str:
        shown = self._shown
        if not shown.hasZip and not shown.parts:
            return ""
        items = []
        if shown.hasZip:
            zipSize = self._document.get("mms_size")
            items.append(
                tags.li(
                    tags.a(MMS_ZIP, href=zipURL(shown.folder, shown.name)),
                    " \u00b7 the zip as received"
                    + (f" \u00b7 {size(zipSize)}" if isinstance(zipSize, int) else ""),
                )
            )
        for part in shown.parts:
            items.append(
                tags.li(
                    tags.a(part.name, href=partURL(shown.folder, shown.name, part.file)),
                    f" \u00b7 {part.contentType} \u00b7 {size(part.size)}",
                )
            )
        return tags.section(tags.h2("Files"), tags.ul(*items), class_="files")

    @renderer
    def fields(self, request: Any, tag: Tag) -> Tag | str:
        if self._shown.document is None:
            return tags.p(self._shown.problem or "")
        return tags.dl(*_fields(self._document))


def _fields(document: dict[str, Any]) -> Iterator[Tag]:
    for key, value in document.items():
        yield tags.dt(str(key))
        if key == "parts" and isinstance(value, list) and value:
            yield tags.dd(_table(value, ("name", "path", "size", "content_type")))
        elif key == "attempts" and isinstance(value, list) and value:
            yield tags.dd(_attempts(value))
        else:
            yield tags.dd(_value(value))


def _value(value: Any) -> Tag | str:
    if value is None:
        return tags.span("null", class_="caption")
    if isinstance(value, str):
        return tags.span(value, class_="text") if "\n" in value else value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ", ".join(value) if value else tags.span("[]", class_="caption")
    return json.dumps(value, ensure_ascii=False)


def _attempts(attempts: list[Any]) -> Tag:
    return _table(attempts, ("at", "outcome"))


def _table(items: list[Any], columns: Sequence[str]) -> Tag:
    rows = []
    for item in items:
        if isinstance(item, dict):
            rows.append(tags.tr(*(tags.td(_value(item.get(c))) for c in columns)))
        else:
            rows.append(tags.tr(tags.td(_value(item), colspan=str(len(columns)))))
    return tags.table(tags.thead(tags.tr(*(tags.th(c) for c in columns))), tags.tbody(*rows))


class ErrorPage(Element):
    """
    A page that says what went wrong (not found, a bad filter, ...).
    """

    loader = _template("error.xml")

    def __init__(self, title: str, detail: str) -> None:
        super().__init__()
        self._title = title
        self._detail = detail

    @renderer
    def title(self, request: Any, tag: Tag) -> Tag:
        return tag(self._title)

    @renderer
    def detail(self, request: Any, tag: Tag) -> Tag:
        return tag(self._detail)

