"""
The inbox in a real browser: Debian's Chromium, driven by selenium through
Debian's chromedriver, against a whole mxrecv on 127.0.0.1 (its admin
listener on a fresh port).  The spool holds an SMS, an MMS (a SMIL, a PNG,
a text part), a failed MMS, and an MMS whose SVG and HTML parts carry
script.  No page has any script of its own: everything here works without
JavaScript.

Selenium blocks (it talks HTTP to chromedriver), so each browser step runs
in a thread while the reactor serves the pages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from mxrecv.config import AdminConfig
from mxrecv.testing.examples import inboxExamples, mms, put, smil
from mxrecv.testing.zips import zipOf

from .browser import Browser
from .running import ANY_PORT, run, runningConfig

# Seconds a page may take to load after a click: a bound on a hang, never
# a pause (the wait ends as soon as the page is there).
LOAD_TIMEOUT = 30


class Canary(Resource):
    """
    A loopback web server that hostile parts would call if their script
    ran; it records the paths asked for.  C{/control} serves a page running
    the same kind of script, without the inbox's protections, to show that
    script does run in this browser and that this canary hears it.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.heard: list[str] = []
        self._waiting: dict[str, Deferred[None]] = {}

    def render_GET(self, request: Any) -> bytes:
        path = request.path.decode()
        self.heard.append(path)
        if path in self._waiting:
            self._waiting.pop(path).callback(None)
        if path == "/control":
            request.setHeader(b"Content-Type", b"text/html")
            return (
                b"<title>control</title><script>document.title='control ran';"
                b"fetch('/control-ran')</script>"
            )
        return b"heard"

    def hears(self, path: str) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if path in self.heard:
            d.callback(None)
        else:
            self._waiting[path] = d
        return d


def payload(canary: str, what: str) -> str:
    """
    Script that leaves a trace of C{what} everywhere it could: the title,
    a cookie, local storage, and a request to the canary.
    """
    return (
        f"document.title='{what} ran';document.cookie='{what}=1;path=/';"
        f"localStorage.setItem('{what}','1');fetch('{canary}/{what}-ran');"
        f"new Image().src='{canary}/{what}-img';"
    )


def fillSpool(root: Path, canary: str) -> None:
    """
    L{inboxExamples}, and an MMS whose SVG and HTML parts, text part and
    subject carry script that would call C{canary}.
    """
    inboxExamples(root)
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10" '
        f"onload=\"{payload(canary, 'svgload')}\"><script>{payload(canary, 'svg')}</script>"
        '<rect width="10" height="10"/></svg>'
    )
    html = (
        f"<html><body><script>{payload(canary, 'html')}</script>"
        f"<img src=x onerror=\"{payload(canary, 'htmlimg')}\"></body></html>"
    )
    put(
        root,
        "new",
        mms("evil", "2026-11-25T10:33:00.000Z", f"<script>{payload(canary, 'subject')}</script>"),
        zipOf(
            [
                ("show.smil", smil(("img", "x.svg"), ("ref", "page.html"))),
                ("x.svg", svg.encode()),
                ("page.html", html.encode()),
                ("t.txt", f"<script>{payload(canary, 'text')}</script>".encode()),
            ]
        ),
    )


class BrowserCase(TestCase):
    """
    A browser (its own Chromium, closed after the test), a canary, and a
    running mxrecv whose spool L{fillSpool} filled.
    """

    #: Names that the browser resolves to 127.0.0.1.
    RESOLVE: tuple[str, ...] = ()

    def setUp(self) -> None:
        self.browser = Browser(resolve=self.RESOLVE)
        self.addCleanup(self.browser.close)
        self.canary = Canary()
        port = reactor.listenTCP(0, Site(self.canary), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.canaryURL = f"http://127.0.0.1:{port.getHost().port}"
        self.running = run(self, runningConfig(self, admin=self.adminConfig()))
        fillSpool(self.running.spool, self.canaryURL)
        self.driver = self.browser.driver

    def adminConfig(self) -> AdminConfig:
        return AdminConfig(listen=ANY_PORT)

    def browse(self, f: Any, *args: Any) -> Deferred[Any]:
        return deferToThread(f, *args)

    def css(self, selector: str) -> Deferred[list[Any]]:
        return self.browse(self.driver.find_elements, "css selector", selector)

    def texts(self, selector: str) -> Deferred[list[str]]:
        return self.attributes(selector, "text")

    def attributes(self, selector: str, name: str) -> Deferred[list[Any]]:
        """
        C{name} (C{text}, or an attribute) of each element that C{selector}
        matches.
        """

        def read() -> list[Any]:
            elements = self.driver.find_elements("css selector", selector)
            if name == "text":
                return [e.text for e in elements]
            return [e.get_attribute(name) for e in elements]

        return self.browse(read)

    def go(self, path: str) -> Deferred[None]:
        return self.browse(self.driver.get, self.running.admin + path)

    def follow(self, selector: str, by: str = "css selector") -> Deferred[None]:
        """
        Click what C{selector} finds (a link, a submit button), and return
        once the page it leads to has loaded.
        """

        def click() -> None:
            from selenium.common.exceptions import WebDriverException
            from selenium.webdriver.support.ui import WebDriverWait

            # A mark on this page's window: the next page's is a new one.
            self.driver.execute_script("window.mxrecvBefore = true")
            self.driver.find_element(by, selector).click()
            # While the page changes, chromedriver may answer with errors
            # of any kind about the old one: ask again.
            WebDriverWait(
                self.driver, LOAD_TIMEOUT, ignored_exceptions=(WebDriverException,)
            ).until(
                lambda d: d.execute_script(
                    "return window.mxrecvBefore === undefined"
                    " && document.readyState === 'complete'"
                )
            )

        return self.browse(click)

    @inlineCallbacks
    def requeue(self) -> Any:
        """
        The failed MMS's page says why; its button moves it back to
        pending/ (retrieval is off here, so it stays there).
        """
        spool = self.running.spool
        yield self.go("/inbox/failed/mms-2")
        reason = yield self.texts("section.failure p")
        self.assertIn("no zip from RetrieveMMS", reason[0])
        yield self.fillToken()
        yield self.follow("form.requeue button")
        self.assertTrue(self.driver.current_url.endswith("/inbox/pending/mms-2?requeued=1"))
        notice = yield self.texts("p.notice")
        self.assertEqual(notice, ["Requeued: moved from failed/ to pending/, to be retrieved again."])
        self.assertTrue((spool / "pending" / "mms-2").is_dir())
        self.assertFalse((spool / "failed" / "mms-2").exists())

    def fillToken(self) -> Deferred[None]:
        return succeed(None)


class InboxBrowserTests(BrowserCase):

    @inlineCallbacks
    def test_inboxListsAll(self):
        yield self.go("/inbox")
        rows = yield self.texts("table.messages tbody tr td:nth-child(2)")
        self.assertEqual(rows, ["new", "failed", "new", "new"])
        summaries = yield self.texts("table.messages td.summary")
        self.assertEqual(summaries[1:], ["Lost in transit", "Holiday", "Hello <b>there</b>"])
        self.assertIn("<script>", summaries[0])
        problems = yield self.texts("table.messages td.problem")
        self.assertIn("no zip from RetrieveMMS", problems[1])

    @inlineCallbacks
    def test_imageRendered(self):
        """
        The MMS's PNG is decoded and drawn (its natural width is the
        image's), its text part shown, in the SMIL's order.
        """
        yield self.go("/inbox")
        yield self.follow("2026-11-25 10:31:00", "link text")
        self.assertTrue(self.driver.current_url.endswith("/inbox/new/mms-1"))
        images = yield self.css("section.content img")
        self.assertEqual(len(images), 1)
        width = yield self.browse(images[0].get_property, "naturalWidth")
        complete = yield self.browse(images[0].get_property, "complete")
        self.assertEqual((width, complete), (160, True))
        kinds = yield self.attributes("section.content figure", "class")
        self.assertEqual(kinds, ["slide slide-image", "slide slide-text", "slide slide-audio"])
        texts = yield self.texts("section.content pre")
        self.assertEqual(texts, ["Greetings <i>from</i> the beach"])

    @inlineCallbacks
    def test_audioPlayable(self):
        """
        The WAV part is in an audio element with the browser's controls, and
        the browser reads it: its duration is known (0.3 s).
        """
        yield self.go("/inbox/new/mms-1")

        def duration() -> float:
            from selenium.webdriver.support.ui import WebDriverWait

            audio = self.driver.find_element("css selector", "section.content audio")
            WebDriverWait(self.driver, LOAD_TIMEOUT).until(
                lambda d: audio.get_property("readyState") >= 1
            )
            self.assertTrue(audio.get_property("controls"))
            return audio.get_property("duration")

        seconds = yield self.browse(duration)
        self.assertAlmostEqual(seconds, 0.3, places=2)

    @inlineCallbacks
    def test_filters(self):
        """
        The filter form (a GET form: no script) and the folder links.
        """
        yield self.go("/inbox")
        select = yield self.browse(self.driver.find_element, "css selector", "select[name=type]")
        option = yield self.browse(select.find_element, "css selector", "option[value=sms]")
        yield self.browse(option.click)
        yield self.follow("form.filters button")
        self.assertIn("type=sms", self.driver.current_url)
        summaries = yield self.texts("table.messages td.summary")
        self.assertEqual(summaries, ["Hello <b>there</b>"])

        yield self.follow("failed (1)", "partial link text")
        summaries = yield self.texts("table.messages td.summary")
        self.assertEqual(summaries, [])
        self.assertIn("type=sms", self.driver.current_url)

        yield self.go("/inbox?folder=failed")
        summaries = yield self.texts("table.messages td.summary")
        self.assertEqual(summaries, ["Lost in transit"])

        yield self.go("/inbox")
        ident = yield self.browse(self.driver.find_element, "css selector", "input[name=id]")
        yield self.browse(ident.send_keys, "mms-1")
        yield self.follow("form.filters button")
        summaries = yield self.texts("table.messages td.summary")
        self.assertEqual(summaries, ["Holiday"])

        yield self.go("/inbox?since=2026-11-25T10:31&until=2026-11-25T10:32")
        summaries = yield self.texts("table.messages td.summary")
        self.assertEqual(summaries, ["Lost in transit", "Holiday"])

    def test_requeue(self):
        return self.requeue()

    @inlineCallbacks
    def test_scriptInPartsInert(self):
        """
        Neither the message page nor the SVG and HTML parts opened on their
        own run any of their script: no title, cookie, storage or request
        to the canary; while the same script on a page without the inbox's
        protections does run, and is heard.
        """
        yield self.go("/inbox/new/evil")
        title = yield self.browse(lambda: self.driver.title)
        self.assertEqual(title, "<script>" + payload(self.canaryURL, "subject") + "</script> · mxrecv")
        hrefs = yield self.attributes("section.files a", "href")
        parts = [h for h in hrefs if "/parts/" in h]
        self.assertEqual(len(parts), 4)
        for url in parts:
            yield self.browse(self.driver.get, url)
        yield self.go("/inbox")
        cookie = yield self.browse(self.driver.execute_script, "return document.cookie")
        stored = yield self.browse(self.driver.execute_script, "return localStorage.length")
        title = yield self.browse(lambda: self.driver.title)
        self.assertEqual((cookie, stored, title), ("", 0, "Inbox · mxrecv"))

        yield self.browse(self.driver.get, self.canaryURL + "/control")
        yield self.canary.hears("/control-ran")
        title = yield self.browse(lambda: self.driver.title)
        self.assertEqual(title, "control ran")
        heard = [path for path in self.canary.heard if path != "/favicon.ico"]
        self.assertEqual(heard, ["/control", "/control-ran"])


class InboxBrowserTokenTests(BrowserCase):
    """
    With C{[admin] token} set, the requeue form asks for it.
    """

    TOKEN = "browser-test-admin-token"

    def adminConfig(self) -> AdminConfig:
        return AdminConfig(listen=ANY_PORT, token=self.TOKEN)

    @inlineCallbacks
    def fillToken(self) -> Any:
        field = yield self.browse(self.driver.find_element, "css selector", "input[name=token]")
        yield self.browse(field.send_keys, self.TOKEN)

    def test_requeue(self):
        return self.requeue()


class InboxBrowserRebindingTests(BrowserCase):
    """
    DNS rebinding: a name that is not the admin listener's own, resolving
    to 127.0.0.1 (as an attacker's would once rebound), gets none of the
    inbox; a reverse proxy's name in C{[admin] hosts} gets it all.
    """

    RESOLVE = ("rebind.attacker.test", "mxrecv.proxy.test")

    def adminConfig(self) -> AdminConfig:
        return AdminConfig(listen=ANY_PORT, hosts=("mxrecv.proxy.test",))

    def under(self, name: str, path: str) -> Deferred[None]:
        port = self.running.admin.rsplit(":", 1)[1]
        return self.browse(self.driver.get, f"http://{name}:{port}{path}")

    @inlineCallbacks
    def test_rebound(self):
        for path in ("/inbox", "/inbox/new/mms-1", "/inbox/new/mms-1/parts/photo.png"):
            yield self.under("rebind.attacker.test", path)
            text = yield self.browse(lambda: self.driver.page_source)
            self.assertIn("[admin] hosts", text)
            self.assertNotIn("Holiday", text)
            rows = yield self.css("table.messages")
            self.assertEqual(rows, [])
        yield self.under("mxrecv.proxy.test", "/inbox")
        summaries = yield self.texts("table.messages td.summary")
        self.assertIn("Holiday", summaries)
