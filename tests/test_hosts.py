"""
The Host check of the admin listener's browser pages (the inbox): a page
of another site, whose name an attacker points at 127.0.0.1 after it has
loaded (DNS rebinding), reaches the listener under its own name and is
refused; the listener's own names and any address literal are answered.
"""

from __future__ import annotations

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from mxrecv.ops.hosts import HostRequired, KnownHosts, hostName


class Leaf(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"private:" + b"/".join(request.postpath)

    def render_POST(self, request):
        return b"changed"


class HostNameTests(SynchronousTestCase):
    def test_parsed(self):
        for header, name in [
            (b"127.0.0.1:9100", "127.0.0.1"),
            (b"127.0.0.1", "127.0.0.1"),
            (b"[::1]:9100", "::1"),
            (b"[::1]", "::1"),
            (b"LocalHost:80", "localhost"),
            (b"localhost.", "localhost"),
            (b"mxrecv.example.com", "mxrecv.example.com"),
        ]:
            self.assertEqual(hostName(header), name, header)

    def test_malformed(self):
        for header in [b"", b":9100", b"[::1", b"[::1]x", b"[nothost]:1", b"a b", b"a:b:c",
                       b"x:port", b"caf\xc3\xa9.example", b"x.example:99999", b"a/b", b"a@b"]:
            self.assertIsNone(hostName(header), header)


class KnownHostsTests(SynchronousTestCase):
    def test_known(self):
        hosts = KnownHosts.of(["mxrecv.example.com"])
        for header in [b"127.0.0.1:9100", b"127.0.0.2", b"[::1]:9100", b"localhost:9100",
                       b"LOCALHOST", b"192.0.2.7:9100", b"[2001:db8::1]", b"mxrecv.example.com",
                       b"MXRECV.example.com.:443"]:
            self.assertTrue(hosts.knows([header]), header)

    def test_unknown(self):
        """
        Any other name, even one that sounds local, is unknown: an
        attacker's name can be made to resolve to 127.0.0.1.
        """
        hosts = KnownHosts.of(["mxrecv.example.com"])
        for header in [b"rebind.attacker.example:9100", b"localhost.attacker.example",
                       b"127.0.0.1.nip.io", b"x.mxrecv.example.com", b"mxrecv.example.com.evil",
                       b"admin.localhost", b"[::1", b""]:
            self.assertFalse(hosts.knows([header]), header)

    def test_noneOrSeveral(self):
        """
        No Host header (not a browser: every browser sends one) is answered;
        two are refused, as one could be the attacker's.
        """
        hosts = KnownHosts.of([])
        self.assertTrue(hosts.knows([]))
        self.assertFalse(hosts.knows([b"127.0.0.1", b"rebind.attacker.example"]))
        self.assertFalse(hosts.knows([b"127.0.0.1", b"127.0.0.1"]))


class HostRequiredTests(SynchronousTestCase):
    def setUp(self):
        root = Resource()
        root.putChild(b"inbox", HostRequired(Leaf(), KnownHosts.of(["ops.example"])))
        self.stub = StubTreq(root)

    def request(self, method, url):
        d = self.stub.request(method, url)
        self.stub.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(self.stub.content(response))
        return response, body

    def test_refused(self):
        """
        Under an unknown name, nothing is served or changed: 421, a plain
        text answer that names the setting.
        """
        for method in ("GET", "POST"):
            response, body = self.request(method, "http://rebind.attacker.example:9100/inbox/new/x")
            self.assertEqual(response.code, 421)
            self.assertNotIn(b"private", body)
            self.assertNotIn(b"changed", body)
            self.assertIn(b"[admin] hosts", body)
            self.assertEqual(
                response.headers.getRawHeaders("content-type"), ["text/plain; charset=utf-8"]
            )
            self.assertEqual(response.headers.getRawHeaders("x-content-type-options"), ["nosniff"])

    def test_answered(self):
        for url in ("http://127.0.0.1:9100/inbox/new/x", "http://ops.example/inbox/new/x",
                    "http://localhost:9100/inbox/new/x"):
            response, body = self.request("GET", url)
            self.assertEqual((response.code, body), (200, b"private:new/x"), url)
