"""
The inbox's pages in memory: the resource under treq's StubTreq (a real
twisted.web Site and request parsing over an in-memory transport), its
disk work run at once by a pool the test drives, against a real spool
directory.  What a message holds stays text; parts are served inert; no
path leads out of a message's directory; requeue needs its CSRF token.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from mxrecv.ops.bearer import BearerToken
from mxrecv.ops.inbox.catalog import Catalog
from mxrecv.ops.inbox.csrf import CsrfTokens
from mxrecv.ops.inbox.files import CHUNK, TEXT_SHOWN, TEXTS_SHOWN, loadMessage
from mxrecv.ops.inbox.inbox import Inbox
from mxrecv.ops.inbox.resource import FILE_POLICY, PAGE_POLICY, InboxResource, contentDisposition
from mxrecv.spool.layout import MESSAGE_JSON, RETRIEVE_JSON
from mxrecv.testing.examples import inboxExamples, mms, png, put, sms
from mxrecv.testing.zips import zipOf

SCRIPT = "<script>document.title='pwned'</script>"
SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" onload="document.title=\'svg\'">'
    b"<script>document.cookie='svg=1'</script></svg>"
)
HTML = b"<html><script>localStorage.setItem('html', '1')</script></html>"


class ImmediatePool:
    """
    A thread pool the test drives: the work runs at once, in the test's
    thread, so every answer is complete when the request returns.
    """

    def __init__(self) -> None:
        self.calls = 0

    def callInThreadWithCallback(self, onResult: Any, f: Any, *args: Any, **kw: Any) -> None:
        self.calls += 1
        try:
            result = f(*args, **kw)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class ImmediateReactor:
    def callFromThread(self, f: Any, *args: Any, **kw: Any) -> None:
        f(*args, **kw)


def spoolWithMessages(root: Path) -> None:
    """
    L{inboxExamples}, and an MMS whose every field and part is hostile.
    """
    inboxExamples(root)
    put(
        root,
        "new",
        mms("evil", "2026-11-25T10:33:00.000Z", SCRIPT, sender=SCRIPT),
        zipOf(
            [
                ("x.svg", SVG),
                ("page.html", HTML),
                ("data.xml", b"<?xml version='1.0'?><x/>"),
                ("blob.bin", b"\x00\x01"),
                ("t.txt", SCRIPT.encode()),
                ('quo"te\u00e9.png', png(2, 2)),
            ]
        ),
    )


class InboxPagesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        spoolWithMessages(self.root)
        self.taken: list[str] = []
        self.pool = ImmediatePool()
        self.csrf = CsrfTokens(b"k" * 32)
        self.inbox = Inbox(
            self.root,
            reactor=ImmediateReactor(),
            pool=self.pool,
            takeUp=self.taken.append,
        )
        self.inbox.start()
        self.addCleanup(self.inbox.stop)
        root = Resource()
        root.putChild(b"inbox", InboxResource(self.inbox, self.csrf))
        self.stub = StubTreq(root)

    def request(self, method: str, path: str, **kw: Any) -> tuple[Any, bytes]:
        d = getattr(self.stub, method)("http://127.0.0.1:9100" + path, **kw)
        self.stub.flush()
        response = self.successResultOf(d)
        body = self.stub.content(response)
        self.stub.flush()
        return response, self.successResultOf(body)

    def get(self, path: str) -> tuple[Any, bytes]:
        return self.request("get", path, allow_redirects=False)

    def header(self, response: Any, name: str) -> str | None:
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None

    # The list

    def test_listNewestFirst(self):
        response, body = self.get("/inbox")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "content-type"), "text/html; charset=utf-8")
        links = re.findall(rb'href="/inbox/(\w+)/([\w-]+)"', body)
        self.assertEqual(
            links,
            [(b"new", b"evil"), (b"failed", b"mms-2"), (b"new", b"mms-1"), (b"new", b"sms-1")],
        )
        self.assertIn(b"no zip from RetrieveMMS before the expiry", body)
        self.assertIn(b"Holiday", body)
        self.assertIn(b"Hello &lt;b&gt;there&lt;/b&gt;", body)

    def test_listEscapes(self):
        """
        A subject and a sender that are markup are shown as text.
        """
        _, body = self.get("/inbox")
        self.assertNotIn(b"<script", body)
        self.assertIn(b"&lt;script&gt;document.title='pwned'&lt;/script&gt;", body)

    def test_listFilters(self):
        _, body = self.get("/inbox?folder=failed")
        self.assertEqual(re.findall(rb'href="/inbox/(\w+)/([\w-]+)"', body), [(b"failed", b"mms-2")])
        _, body = self.get("/inbox?type=sms")
        self.assertEqual(re.findall(rb'href="/inbox/(\w+)/([\w-]+)"', body), [(b"new", b"sms-1")])
        self.assertIn(b'<option value="sms" selected="selected">', body)

    def test_badFilter(self):
        response, body = self.get("/inbox?folder=%3Cscript%3E&since=x")
        self.assertEqual(response.code, 400)
        self.assertIn(b"folder must be one of new, cur, pending, failed", body)
        self.assertNotIn(b"<script", body)

    def test_paging(self):
        """
        With more messages than a page, links lead to the older page and
        back, keeping the filters.
        """
        for i in range(60):
            put(self.root, "cur", sms(f"c{i:02d}", f"2026-11-24T09:{i:02d}:00.000Z"))
        _, first = self.get("/inbox?type=sms")
        older = re.search(rb'href="(/inbox\?[^"]*before=[^"]*)"', first).group(1)
        self.assertIn(b"type=sms", older)
        _, second = self.get(older.decode().replace("&amp;", "&"))
        names = re.findall(rb'href="/inbox/cur/(c\d\d)"', second)
        self.assertEqual(names, [b"c10", b"c09", b"c08", b"c07", b"c06", b"c05", b"c04", b"c03",
                                 b"c02", b"c01", b"c00"])
        self.assertIn(b"61 messages", second)
        self.assertIn(b"Newer", second)

    # A message

    def test_mmsInSmilOrder(self):
        response, body = self.get("/inbox/new/mms-1")
        self.assertEqual(response.code, 200)
        content = body[body.index(b'class="content"') : body.index(b'class="files"')]
        self.assertLess(content.index(b'<img src="/inbox/new/mms-1/parts/photo.png"'),
                        content.index(b"Greetings &lt;i&gt;from&lt;/i&gt; the beach"))
        self.assertIn(b'href="/inbox/new/mms-1/mms.zip"', body)
        for part in (b"slides.smil", b"words.txt", b"photo.png"):
            self.assertIn(b'href="/inbox/new/mms-1/parts/' + part + b'"', body)

    def test_smsText(self):
        _, body = self.get("/inbox/new/sms-1")
        self.assertIn(b'<pre class="text">Hello &lt;b&gt;there&lt;/b&gt;</pre>', body)
        self.assertNotIn(b"<b>", body)

    def test_hostilePartsNotEmbedded(self):
        """
        SVG, HTML, XML and unknown types are links to download, never
        embedded; a text part's markup is text; names are escaped.
        """
        _, body = self.get("/inbox/new/evil")
        self.assertNotIn(b"<script", body)
        self.assertNotIn(b"<svg", body)
        for tag in (b"<img", b"<iframe", b"<object", b"<embed"):
            embedded = re.findall(tag + rb' [^>]*>', body)
            self.assertTrue(all(b"quo" in e for e in embedded), embedded)
        self.assertIn(b"Not shown here: download it.", body)
        self.assertIn(b"&lt;script&gt;document.title='pwned'&lt;/script&gt;", body)

    def test_failedHasReasonAttemptsAndRequeue(self):
        _, body = self.get("/inbox/failed/mms-2")
        self.assertIn(b"no zip from RetrieveMMS before the expiry", body)
        self.assertIn(b"HTTP 404", body)
        token = self.csrf.token("requeue", "mms-2").encode()
        self.assertIn(b'action="/inbox/failed/mms-2/requeue"', body)
        self.assertIn(b'name="csrf" value="' + token + b'"', body)
        _, other = self.get("/inbox/new/mms-1")
        self.assertNotIn(b"requeue", other.lower())

    def test_movedMessage(self):
        """
        A link older than the application's move from new/ to cur/ leads
        to where the message is now.
        """
        os.rename(self.root / "new" / "mms-1", self.root / "cur" / "mms-1")
        response, _ = self.get("/inbox/new/mms-1")
        self.assertEqual(response.code, 302)
        self.assertEqual(self.header(response, "location"), "/inbox/cur/mms-1")
        response, body = self.get("/inbox/cur/mms-1")
        self.assertEqual(response.code, 200)
        self.assertIn(b'src="/inbox/cur/mms-1/parts/photo.png"', body)

    def test_notFound(self):
        for path in ("/inbox/new/nothing", "/inbox/tmp/mms-1", "/inbox/state/seen",
                     "/inbox/new/mms-1/other", "/inbox/static/x.css", "/inbox/new/%ff"):
            response, body = self.get(path)
            self.assertEqual(response.code, 404, path)
            self.assertIn(b"Not found", body)

    # Security headers

    def test_pagePolicy(self):
        """
        Every page forbids script, framing and sniffing, and is not cached.
        """
        self.assertNotIn(b"script-src", PAGE_POLICY)
        self.assertIn(b"default-src 'none'", PAGE_POLICY)
        self.assertIn(b"frame-ancestors 'none'", PAGE_POLICY)
        self.assertNotIn(b"unsafe", PAGE_POLICY)
        for path in ("/inbox", "/inbox/new/mms-1", "/inbox/failed/mms-2", "/inbox/nothing",
                     "/inbox?type=fax", "/inbox/static/inbox.css"):
            response, _ = self.get(path)
            self.assertEqual(
                self.header(response, "content-security-policy"), PAGE_POLICY.decode(), path
            )
            self.assertEqual(self.header(response, "x-content-type-options"), "nosniff", path)
            self.assertEqual(self.header(response, "x-frame-options"), "DENY", path)

    def test_stylesheet(self):
        response, body = self.get("/inbox/static/inbox.css")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "content-type"), "text/css; charset=utf-8")
        self.assertIn(b"font-family", body)

    def test_rasterImageInline(self):
        response, body = self.get("/inbox/new/mms-1/parts/photo.png")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "content-type"), "image/png")
        self.assertTrue(self.header(response, "content-disposition").startswith("inline;"))
        self.assertEqual(self.header(response, "x-content-type-options"), "nosniff")
        self.assertEqual(self.header(response, "content-security-policy"), FILE_POLICY.decode())
        self.assertEqual(body, (self.root / "new/mms-1/parts/photo.png").read_bytes())

    def test_othersAsAttachments(self):
        """
        SVG, HTML, XML, text and unknown parts, and the zip, are attachments
        the browser will not render, under a sandbox policy.
        """
        for path, data in (
            ("/inbox/new/evil/parts/x.svg", SVG),
            ("/inbox/new/evil/parts/page.html", HTML),
            ("/inbox/new/evil/parts/data.xml", b"<?xml version='1.0'?><x/>"),
            ("/inbox/new/evil/parts/blob.bin", b"\x00\x01"),
            ("/inbox/new/evil/parts/t.txt", SCRIPT.encode()),
        ):
            response, body = self.get(path)
            self.assertEqual(response.code, 200, path)
            self.assertEqual(body, data)
            self.assertEqual(self.header(response, "content-type"), "application/octet-stream")
            self.assertTrue(self.header(response, "content-disposition").startswith("attachment;"))
            self.assertEqual(self.header(response, "x-content-type-options"), "nosniff")
            self.assertIn("sandbox", self.header(response, "content-security-policy"))
        response, body = self.get("/inbox/new/mms-1/mms.zip")
        self.assertEqual(self.header(response, "content-type"), "application/zip")
        self.assertEqual(
            self.header(response, "content-disposition"),
            "attachment; filename=\"mms-1.zip\"; filename*=UTF-8''mms-1.zip",
        )
        self.assertEqual(body, (self.root / "new/mms-1/mms.zip").read_bytes())

    def test_contentDisposition(self):
        value = contentDisposition("attachment", 'quo"te\u00e9\r\n.png')
        self.assertEqual(
            value,
            b"attachment; filename=\"quo_te___.png\"; filename*=UTF-8''quo%22te%C3%A9%0D%0A.png",
        )

    def test_largePartStreamed(self):
        """
        A part bigger than a chunk arrives whole, read a chunk at a time.
        """
        data = os.urandom(CHUNK * 3 + 17)
        directory = self.root / "new" / "mms-1"
        (directory / "parts" / "big.mp4").write_bytes(data)
        document = json.loads((directory / MESSAGE_JSON).read_text())
        document["parts"].append(
            {"name": "big.mp4", "path": "parts/big.mp4", "size": len(data), "content_type": "video/mp4"}
        )
        (directory / MESSAGE_JSON).write_text(json.dumps(document))
        before = self.pool.calls
        response, body = self.get("/inbox/new/mms-1/parts/big.mp4")
        self.assertEqual((response.code, body), (200, data))
        self.assertEqual(self.header(response, "content-type"), "video/mp4")
        self.assertGreaterEqual(self.pool.calls - before, 5)
        _, page = self.get("/inbox/new/mms-1")
        self.assertIn(b'<video src="/inbox/new/mms-1/parts/big.mp4" controls="controls"', page)

    # Paths from the internet

    def test_noTraversal(self):
        """
        No request path leads outside the message's directory, nor to a
        file of it that is not a listed part.
        """
        (self.root / "state" / "secret").write_text("secret")
        for path in (
            "/inbox/new/mms-1/parts/..%2Fmessage.json",
            "/inbox/new/mms-1/parts/..%2F..%2F..%2Fstate%2Fsecret",
            "/inbox/new/mms-1/parts/%2Fetc%2Fpasswd",
            "/inbox/new/mms-1/parts/..",
            "/inbox/new/mms-1/parts/.",
            "/inbox/new/..%2Fstate/parts/secret",
            "/inbox/new/../state/secret",
            "/inbox/new/mms-1/../../state/secret",
            "/inbox/new/mms-1/parts/photo.png%00.txt",
            "/inbox/new/mms-1/parts/message.json",
            "/inbox/new/mms-1/message.json",
            "/inbox/new/mms-1/retrieve.json",
        ):
            response, body = self.get(path)
            self.assertEqual(response.code, 404, path)
            self.assertNotIn(b"secret", body)

    def test_messageJsonPointingOutside(self):
        """
        A part whose recorded path leaves parts/ (an application's edit in
        cur/), or a symbolic link planted in parts/, is not served.
        """
        directory = self.root / "new" / "mms-1"
        (self.root / "state" / "secret").write_text("secret")
        document = json.loads((directory / MESSAGE_JSON).read_text())
        document["parts"] += [
            {"name": "up", "path": "parts/../../../state/secret", "size": 6, "content_type": "image/png"},
            {"name": "abs", "path": str(self.root / "state" / "secret"), "size": 6, "content_type": "image/png"},
            {"name": "link.png", "path": "parts/link.png", "size": 6, "content_type": "image/png"},
        ]
        (directory / MESSAGE_JSON).write_text(json.dumps(document))
        os.symlink(self.root / "state" / "secret", directory / "parts" / "link.png")
        for path in ("/inbox/new/mms-1/parts/link.png", "/inbox/new/mms-1/parts/secret"):
            response, body = self.get(path)
            self.assertEqual(response.code, 404, path)
            self.assertNotIn(b"secret", body)
        _, page = self.get("/inbox/new/mms-1")
        self.assertNotIn(b"/parts/secret", page)
        self.assertNotIn(b"/parts/up", page)

    def test_symlinkedMessage(self):
        os.symlink(self.root / "state", self.root / "cur" / "linked")
        (self.root / "state" / MESSAGE_JSON).write_text(json.dumps({"id": "x", "secret": "s3"}))
        response, body = self.get("/inbox/cur/linked")
        self.assertEqual(response.code, 404)
        self.assertNotIn(b"s3", body)

    # Requeue

    def post(self, path: str, data: dict[str, str] | None = None) -> tuple[Any, bytes]:
        return self.request("post", path, data=data or {}, allow_redirects=False)

    def test_requeue(self):
        """
        The requeue button does what mxrecv requeue does, then takes the
        message up, and the browser is sent to it in pending/.
        """
        token = self.csrf.token("requeue", "mms-2")
        response, _ = self.post("/inbox/failed/mms-2/requeue", {"csrf": token})
        self.assertEqual(response.code, 303)
        self.assertEqual(self.header(response, "location"), "/inbox/pending/mms-2?requeued=1")
        moved = self.root / "pending" / "mms-2"
        self.assertTrue(moved.is_dir())
        self.assertFalse((self.root / "failed" / "mms-2").exists())
        document = json.loads((moved / MESSAGE_JSON).read_text())
        self.assertNotIn("error", document)
        self.assertTrue((moved / RETRIEVE_JSON).exists())
        self.assertEqual(self.taken, ["mms-2"])
        _, page = self.get("/inbox/pending/mms-2?requeued=1")
        self.assertIn(b"Requeued: moved from failed/ to pending/", page)
        response, body = self.post("/inbox/failed/mms-2/requeue", {"csrf": token})
        self.assertEqual(response.code, 409)
        self.assertIn(b"pending/mms-2 is not in failed/", body)

    def test_requeueNeedsToken(self):
        """
        Without the page's token (a form posted from another site), or
        with another message's, nothing moves.
        """
        for data in ({}, {"csrf": "0" * 64}, {"csrf": self.csrf.token("requeue", "mms-1")},
                     {"csrf": "\u00e9"}):
            response, body = self.post("/inbox/failed/mms-2/requeue", data)
            self.assertEqual(response.code, 403)
            self.assertIn(b"reload the message", body)
        self.assertTrue((self.root / "failed" / "mms-2").is_dir())
        self.assertEqual(self.taken, [])
        response, _ = self.request("get", "/inbox/failed/mms-2/requeue")
        self.assertEqual(response.code, 404)
        self.assertTrue((self.root / "failed" / "mms-2").is_dir())

    def test_onlyFailedRequeued(self):
        token = self.csrf.token("requeue", "mms-1")
        response, _ = self.post("/inbox/new/mms-1/requeue", {"csrf": token})
        self.assertEqual(response.code, 404)
        self.assertTrue((self.root / "new" / "mms-1").is_dir())

    # Availability

    def test_unavailable(self):
        """
        While another process keeps the catalog, the list says so (503);
        message pages still work.
        """
        self.inbox.stop()
        other = Catalog(self.root)
        other.open()
        self.addCleanup(other.close)
        inbox = Inbox(self.root, reactor=ImmediateReactor(), pool=ImmediatePool())
        inbox.start()
        root = Resource()
        root.putChild(b"inbox", InboxResource(inbox))
        self.stub = StubTreq(root)
        response, body = self.get("/inbox")
        self.assertEqual(response.code, 503)
        self.assertIn(b"another process keeps", body)
        response, _ = self.get("/inbox/new/mms-1")
        self.assertEqual(response.code, 200)


class AdminTokenTests(SynchronousTestCase):
    """
    With C{[admin] token} set, the requeue form asks for it, and nothing
    moves without it: in the form (a browser) or the Authorization header
    (a script), both checked by the admin listener's L{BearerToken}.
    """

    TOKEN = "a-long-admin-token-0123456789"

    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        spoolWithMessages(self.root)
        self.csrf = CsrfTokens()
        inbox = Inbox(self.root, reactor=ImmediateReactor(), pool=ImmediatePool())
        inbox.start()
        self.addCleanup(inbox.stop)
        root = Resource()
        root.putChild(b"inbox", InboxResource(inbox, self.csrf, BearerToken(self.TOKEN)))
        self.stub = StubTreq(root)

    def post(self, data: dict[str, str], headers: dict | None = None) -> int:
        d = self.stub.post(
            "http://127.0.0.1/inbox/failed/mms-2/requeue",
            data={"csrf": self.csrf.token("requeue", "mms-2"), **data},
            headers=headers,
            allow_redirects=False,
        )
        self.stub.flush()
        return self.successResultOf(d).code

    def test_formAsksForIt(self):
        d = self.stub.get("http://127.0.0.1/inbox/failed/mms-2")
        self.stub.flush()
        body = self.successResultOf(self.stub.content(self.successResultOf(d)))
        self.assertIn(b'type="password" name="token"', body)
        self.assertNotIn(self.TOKEN.encode(), body)

    def test_refusedWithout(self):
        self.assertEqual(self.post({}), 401)
        self.assertEqual(self.post({"token": "wrong"}), 401)
        self.assertEqual(self.post({"token": ""}, {"Authorization": "Bearer nope"}), 401)
        self.assertTrue((self.root / "failed" / "mms-2").is_dir())

    def test_inTheForm(self):
        self.assertEqual(self.post({"token": self.TOKEN}), 303)
        self.assertTrue((self.root / "pending" / "mms-2").is_dir())

    def test_inTheHeader(self):
        self.assertEqual(self.post({}, {"Authorization": f"Bearer {self.TOKEN}"}), 303)
        self.assertTrue((self.root / "pending" / "mms-2").is_dir())

    def test_csrfStillNeeded(self):
        code = self.post({"token": self.TOKEN, "csrf": "forged"})
        self.assertEqual(code, 403)
        self.assertTrue((self.root / "failed" / "mms-2").is_dir())


class TextBudgetTests(SynchronousTestCase):
    def test_textShownIsBounded(self):
        """
        A long text part is shown cut, and the page holds at most
        TEXTS_SHOWN of text however many text parts the zip has.
        """
        root = Path(self.mktemp())
        parts = [(f"t{i:02d}.txt", os.urandom(TEXT_SHOWN).hex().encode()) for i in range(20)]
        put(root, "new", mms("many", "2026-11-25T10:31:00.000Z"), zipOf(parts))
        shown = loadMessage(root, "new", "many")
        self.assertEqual(len(shown.order), 20)
        self.assertEqual(sum(len(text) for text, _ in shown.texts.values()), TEXTS_SHOWN)
        self.assertTrue(all(cut for _, cut in shown.texts.values()))


class PackageDataTests(SynchronousTestCase):
    def test_templatesShipped(self):
        """
        Every file of the inbox's templates/ is package data in setup.cfg,
        so that a non-editable install (pip install .) serves it.
        """
        import configparser
        import fnmatch

        import mxrecv.ops.inbox

        setup = configparser.ConfigParser()
        setup.read(Path(__file__).parent.parent / "setup.cfg")
        patterns = [
            p.strip() for p in setup["options.package_data"]["mxrecv.ops.inbox"].split(",")
        ]
        self.assertIn("mxrecv.ops.inbox", setup["options"]["packages"].split())
        package = Path(mxrecv.ops.inbox.__file__).parent
        files = [f.relative_to(package).as_posix() for f in (package / "templates").iterdir()]
        self.assertTrue(files)
        for name in files:
            self.assertTrue(any(fnmatch.fnmatch(name, p) for p in patterns), name)
