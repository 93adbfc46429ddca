# -*- test-case-name: tests.test_inbox_pages -*-
"""
C{/inbox} and below, on the admin listener:

    GET  /inbox                          the list (filters and paging in the query)
    GET  /inbox/FOLDER/NAME              a message
    GET  /inbox/FOLDER/NAME/mms.zip      its zip, as an attachment
    GET  /inbox/FOLDER/NAME/parts/FILE   one of its parts
    POST /inbox/failed/NAME/requeue      requeue it (with the form's CSRF token,
                                         and the admin token if there is one)
    GET  /inbox/static/inbox.css         the style sheet

Every answer forbids script, framing, sniffing and caching.  A part is
served for the browser to show only if the page embeds it (a raster image,
playable audio or video); any other, SVG, HTML and XML among them, is an
attachment of type C{application/octet-stream}, and parts carry a
C{sandbox} policy besides, so a part opened on its own runs nothing either.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import IO, Any
from urllib.parse import quote

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.template import Element, flattenString

from mxrecv.ops.bearer import BearerToken
from mxrecv.ops.cli import CommandError
from mxrecv.ops.inbox.csrf import CsrfTokens
from mxrecv.ops.inbox.files import FileSender, NotFound
from mxrecv.ops.inbox.inbox import Inbox, InboxUnavailable, OpenPart
from mxrecv.ops.inbox.media import servedInline
from mxrecv.ops.inbox.pages import TEMPLATES, ErrorPage, InboxPage, MessagePage, messageURL
from mxrecv.ops.inbox.query import FOLDERS, BadQuery, Query, parseQuery
from mxrecv.spool.layout import FAILED, MMS_ZIP, PARTS, PENDING

log = Logger()

#: The pages: nothing but our own style sheet, images and media; no script
#: at all, no framing, forms only to ourselves.
PAGE_POLICY = (
    b"default-src 'none'; img-src 'self'; media-src 'self'; style-src 'self'; "
    b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
#: Files from a message: nothing loads, nothing runs, even opened on their own.
FILE_POLICY = b"default-src 'none'; sandbox; frame-ancestors 'none'"

REQUEUE = "requeue"
STYLESHEET = "inbox.css"


def _secure(request: Request, policy: bytes) -> None:
    request.setHeader(b"Content-Security-Policy", policy)
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"X-Frame-Options", b"DENY")
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    request.setHeader(b"Cross-Origin-Resource-Policy", b"same-origin")
    request.setHeader(b"Cross-Origin-Opener-Policy", b"same-origin")
    request.setHeader(b"Cache-Control", b"no-store")


def contentDisposition(kind: str, name: str) -> bytes:
    """
    A C{Content-Disposition} value naming C{name} (RFC 6266): an ASCII
    fallback with anything doubtful replaced, and the name itself in
    C{filename*}.
    """
    fallback = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in name)
    fallback = fallback.lstrip(".") or "part"
    encoded = quote(name, safe="")
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}".encode("ascii")


class InboxResource(Resource):
    """
    Everything under C{/inbox}; routes on the path itself, so that only
    the shapes above are ever answered.
    """

    isLeaf = True

    def __init__(
        self, inbox: Inbox, csrf: CsrfTokens | None = None, token: BearerToken = BearerToken()
    ) -> None:
        super().__init__()
        self._inbox = inbox
        self._csrf = csrf if csrf is not None else CsrfTokens()
        self._token = token
        self._stylesheet = (TEMPLATES / STYLESHEET).read_bytes()

    def _path(self, request: Request) -> list[str] | None:
        path = list(request.postpath or ())
        if path and path[-1] == b"":
            path.pop()
        try:
            return [segment.decode("utf-8") for segment in path]
        except UnicodeDecodeError:
            return None

    def render_GET(self, request: Request) -> int | bytes:
        path = self._path(request)
        if path is None:
            return self._notFound(request)
        if not path:
            return self._list(request)
        if path == ["static", STYLESHEET]:
            _secure(request, PAGE_POLICY)
            request.setHeader(b"Content-Type", b"text/css; charset=utf-8")
            request.setHeader(b"Cache-Control", b"no-cache")
            return self._stylesheet
        if len(path) >= 2 and path[0] in FOLDERS:
            folder, name, rest = path[0], path[1], path[2:]
            if not rest:
                return self._message(request, folder, name)
            if rest == [MMS_ZIP]:
                return self._zip(request, folder, name)
            if len(rest) == 2 and rest[0] == PARTS:
                return self._part(request, folder, name, rest[1])
        return self._notFound(request)

    def render_POST(self, request: Request) -> int | bytes:
        path = self._path(request)
        if path is not None and len(path) == 3 and path[0] == FAILED and path[2] == REQUEUE:
            return self._requeue(request, path[1])
        return self._notFound(request)

    # The list

    def _list(self, request: Request) -> int:
        try:
            query = parseQuery(_args(request))
        except BadQuery as e:
            return self._render(request, HTTPStatus.BAD_REQUEST, InboxPage(Query(), None, str(e)))
        d = self._inbox.page(query)
        d.addCallback(lambda page: self._render(request, HTTPStatus.OK, InboxPage(query, page)))
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    # A message

    def _message(self, request: Request, folder: str, name: str) -> int:
        d = self._inbox.message(folder, name)

        def shown(shown: Any) -> None:
            notice = None
            if folder == PENDING and _args(request).get(b"requeued"):
                notice = "Requeued: moved from failed/ to pending/, to be retrieved again."
            token = self._csrf.token(REQUEUE, name) if folder == FAILED else None
            page = MessagePage(shown, token, notice, askToken=bool(self._token.value))
            self._render(request, HTTPStatus.OK, page)

        d.addCallback(shown)
        d.addErrback(self._moved, request, name)
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _moved(self, f: Failure, request: Request, name: str) -> None:
        """
        Not where the link said: if the message went to another folder
        (the application took it from C{new/}, a requeue), say where.
        """
        f.trap(NotFound)
        now = f.value.now
        if now is None:
            self._render(request, HTTPStatus.NOT_FOUND, _notFoundPage())
            return
        _secure(request, PAGE_POLICY)
        request.setResponseCode(HTTPStatus.FOUND)
        request.setHeader(b"Location", messageURL(now, name).encode("ascii"))
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        _finish(request, f"moved to {now}/\n".encode())

    # Its files

    def _part(self, request: Request, folder: str, name: str, file: str) -> int:
        d = self._inbox.part(folder, name, file)

        def send(opened: OpenPart) -> Deferred[None]:
            part = opened.part
            if servedInline(part.contentType):
                contentType = part.contentType.encode("ascii")
                disposition = contentDisposition("inline", part.file)
            else:
                contentType = b"application/octet-stream"
                disposition = contentDisposition("attachment", part.file)
            return self._send(request, opened.file, opened.size, contentType, disposition)

        d.addCallback(send)
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _zip(self, request: Request, folder: str, name: str) -> int:
        d = self._inbox.zip(folder, name)
        d.addCallback(
            lambda opened: self._send(
                request,
                opened[0],
                opened[1],
                b"application/zip",
                contentDisposition("attachment", f"{name}.zip"),
            )
        )
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _send(
        self, request: Request, file: IO[bytes], size: int, contentType: bytes, disposition: bytes
    ) -> Deferred[None]:
        if request.channel is None:
            file.close()
            return succeed(None)
        _secure(request, FILE_POLICY)
        request.setHeader(b"Content-Type", contentType)
        request.setHeader(b"Content-Disposition", disposition)
        request.setHeader(b"Content-Length", str(size).encode("ascii"))
        sender = FileSender(file, request, reactor=self._inbox.reactor, pool=self._inbox.pool)
        return sender.start().addErrback(
            lambda f: log.failure("Sending {path}", f, path=request.path)
        )

    # Requeue

    def _requeue(self, request: Request, name: str) -> int | bytes:
        """
        The admin token, when one is configured, comes in the form (a
        browser sends no C{Authorization} header without script) or, from
        a script, in that header; either is checked by L{BearerToken}.
        """
        presented = (_args(request).get(b"token") or [b""])[-1]
        if not (self._token.allows(request) or self._token.matches(presented)):
            log.warn(
                "Refused requeue of failed/{name} from {client}: no valid admin token",
                name=name,
                client=getattr(request.getClientAddress(), "host", None),
            )
            return self._render(
                request,
                HTTPStatus.UNAUTHORIZED,
                ErrorPage(
                    "Not requeued",
                    "The admin token ([admin] token) is required: go back and type it in.",
                ),
            )
        token = (_args(request).get(b"csrf") or [b""])[-1].decode("ascii", "replace")
        if not self._csrf.check(token, REQUEUE, name):
            return self._render(
                request,
                HTTPStatus.FORBIDDEN,
                ErrorPage(
                    "Not requeued",
                    "The form is out of date (mxrecv restarted since it was shown?): "
                    "reload the message's page and try again.",
                ),
            )
        d = self._inbox.requeue(name)

        def done(_: object) -> None:
            _secure(request, PAGE_POLICY)
            request.setResponseCode(HTTPStatus.SEE_OTHER)
            location = messageURL(PENDING, name) + "?requeued=1"
            request.setHeader(b"Location", location.encode("ascii"))
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            _finish(request, b"requeued\n")

        def refused(f: Failure) -> None:
            f.trap(CommandError)
            self._render(request, HTTPStatus.CONFLICT, ErrorPage("Not requeued", str(f.value)))

        d.addCallbacks(done, refused)
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    # Answers

    def _render(self, request: Request, status: int, element: Element) -> int:
        d = flattenString(None, element)
        d.addCallback(lambda body: _answer(request, status, body))
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _notFound(self, request: Request) -> int:
        return self._render(request, HTTPStatus.NOT_FOUND, _notFoundPage())

    def _failed(self, f: Failure, request: Request) -> None:
        if f.check(NotFound):
            self._render(request, HTTPStatus.NOT_FOUND, _notFoundPage())
            return
        if f.check(InboxUnavailable):
            page = ErrorPage("Inbox unavailable", str(f.value))
            self._render(request, HTTPStatus.SERVICE_UNAVAILABLE, page)
            return
        log.failure("Inbox request {path} failed", f, path=request.path)
        if request.startedWriting:
            transport = getattr(request, "transport", None)
            if transport is not None:
                transport.abortConnection()
            return
        page = ErrorPage("Internal error", "The request failed; the log says why.")
        flattenString(None, page).addCallback(
            lambda body: _answer(request, HTTPStatus.INTERNAL_SERVER_ERROR, body)
        )


def _args(request: Request) -> dict[bytes, list[bytes]]:
    """
    The query string's and the form's arguments (twisted.web sets them
    before rendering).
    """
    return request.args or {}


def _notFoundPage() -> ErrorPage:
    return ErrorPage("Not found", "No such message or file in new/, cur/, pending/ or failed/.")


def _answer(request: Request, status: int, body: bytes) -> None:
    if request.channel is None or request.finished:
        return
    _secure(request, PAGE_POLICY)
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    _finish(request, b"<!DOCTYPE html>\n" + body)


def _finish(request: Request, body: bytes) -> None:
    if request.channel is None or request.finished:
        return
    request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
    request.write(body)
    request.finish()

