"""
POST mode end to end: multipart callbacks over a real port on 127.0.0.1,
sent with treq (or, to control exactly what reaches the server and when,
written raw to a TCP connection), into a real spool, completed to new/.
"""

import hashlib
import ipaddress
import json
import os
import zipfile
from pathlib import Path
from urllib.parse import urlencode

from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from mxrecv.message.model import Message
from mxrecv.message.params import parseCallback
from mxrecv.mms.complete import Completer
from mxrecv.spool.layout import NEW, PENDING, TMP
from mxrecv.web.service import buildSite

from .strategies import callbackParams, contentTypeFor, examples, multipartBody, zipOf
from .support import (
    BOUNDARY,
    MMS_ZIP,
    fileWriters,
    httpClient,
    listenGated,
    mmsFields,
    openSpool,
    rawExchange,
    serverConfig,
    startedPool,
)

SMS_FIELDS = [
    ("id", b"sms-1"),
    ("from", b"447700900123"),
    ("to", b"80000"),
    ("date", b"2026-11-25 10:30:00"),
    ("type", b"6"),
    ("network", b"vodafone"),
    ("message", b"caf\xe9 \xa4"),
]


def listing(directory: Path):
    return sorted(p.name for p in directory.iterdir())


def statusOf(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


class PostTests(TestCase):
    def startServer(self, complete=True, **server):
        """
        The callback site on a fresh port of 127.0.0.1 with its real spool;
        each MMS accepted is completed (unpacked to new/) unless not
        C{complete}, and C{self.completions} collects those Deferreds.
        """
        self.spool = openSpool(self)
        self.config = serverConfig(**server)
        self.completions = []
        completer = Completer(self.spool, reactor=reactor, pool=startedPool(self))
        onPending = (lambda name: self.completions.append(completer.complete(name))) if complete else None
        site = buildSite(self.config, self.spool, reactor, onPending, writers=fileWriters(self))
        port = listenGated(self, site, self.config)
        self.port = port
        self.url = f"http://127.0.0.1:{port.getHost().port}/"
        self.treq = httpClient(self)

    def post(self, fields, file=None, boundary=BOUNDARY):
        return self.treq.post(
            self.url,
            data=multipartBody(boundary, fields, file),
            headers={b"Content-Type": [contentTypeFor(boundary)]},
        )

    def raw(self, data: bytes):
        return rawExchange(self.port, data)

    @inlineCallbacks
    def assertAnswer(self, response, code, text=""):
        body = yield response.text()
        self.assertEqual(response.code, code, body)
        self.assertIn(text, body)
        yield self.spool.whenIdle()
        self.assertEqual(listing(self.spool.dir(TMP)), [])

    def stored(self, where, name):
        return Message.decode((self.spool.dir(where) / name / "message.json").read_bytes())

    # Delivered

    @inlineCallbacks
    def test_sms(self):
        """
        An SMS in POST mode lands in new/ like a GET one, delivery "post",
        text decoded as ISO-8859-15 when it is not UTF-8.
        """
        self.startServer()
        response = yield self.post(SMS_FIELDS)
        yield self.assertAnswer(response, 200, "OK")
        message = self.stored(NEW, "sms-1")
        self.assertEqual(
            (message.delivery, message.message, message.charset, message.network),
            ("post", "café €", "iso-8859-15", "vodafone"),
        )
        self.assertEqual(listing(self.spool.dir(PENDING)), [])

    @inlineCallbacks
    def test_mmsDurableInPendingAtTheAnswer(self):
        """
        An MMS is answered once message.json and mms.zip are in pending/,
        with the zip's size and SHA-256 measured on the way in.
        """
        self.startServer(complete=False)
        response = yield self.post(mmsFields(), MMS_ZIP)
        yield self.assertAnswer(response, 200)
        self.assertEqual(listing(self.spool.dir(PENDING) / "mms-1"), ["message.json", "mms.zip"])
        self.assertEqual((self.spool.dir(PENDING) / "mms-1" / "mms.zip").read_bytes(), MMS_ZIP)
        message = self.stored(PENDING, "mms-1")
        self.assertEqual(
            (message.mms_size, message.mms_sha256, message.to, message.subject, message.delivery),
            (len(MMS_ZIP), hashlib.sha256(MMS_ZIP).hexdigest(), ("80000", "80001"), "Photo", "post"),
        )

    @inlineCallbacks
    def test_mmsReachesNewWithParts(self):
        self.startServer()
        response = yield self.post(mmsFields(), MMS_ZIP)
        yield self.assertAnswer(response, 200)
        yield gatherResults(self.completions)
        directory = self.spool.dir(NEW) / "mms-1"
        self.assertEqual(listing(directory), ["message.json", "mms.zip", "parts"])
        self.assertEqual((directory / "mms.zip").read_bytes(), MMS_ZIP)
        self.assertEqual(listing(directory / "parts"), ["mms.smil", "photo.jpg", "text.txt"])
        document = json.loads((directory / "message.json").read_bytes())
        self.assertEqual(
            [(p["name"], p["path"], p["content_type"]) for p in document["parts"]],
            [
                ("mms.smil", "parts/mms.smil", "application/smil"),
                ("photo.jpg", "parts/photo.jpg", "image/jpeg"),
                ("text.txt", "parts/text.txt", "text/plain"),
            ],
        )
        self.assertEqual((document["text"], document["parts_error"]), ("Hi there", None))
        self.assertEqual(document["mms_sha256"], hashlib.sha256(MMS_ZIP).hexdigest())
        self.assertEqual(listing(self.spool.dir(PENDING)), [])

    @inlineCallbacks
    def test_badZipStillDelivered(self):
        """
        A zip that fails a check (here a ../ name) reaches new/ with its raw
        mms.zip, no parts and the reason in parts_error.
        """
        self.startServer()
        evil = zipOf([("../../evil.sh", b"rm -rf /")])
        response = yield self.post(mmsFields(), evil)
        yield self.assertAnswer(response, 200)
        yield gatherResults(self.completions)
        message = self.stored(NEW, "mms-1")
        self.assertEqual(message.parts, ())
        self.assertIn("'..'", message.parts_error)
        self.assertEqual((self.spool.dir(NEW) / "mms-1" / "mms.zip").read_bytes(), evil)
        self.assertFalse((self.spool.dir(NEW) / "mms-1" / "parts").exists())

    @inlineCallbacks
    def test_largeUpload(self):
        """
        A zip of over 50 MiB, sent by treq's own multipart encoder from a
        file, arrives byte for byte (by SHA-256) in new/, unpacked.
        """
        self.startServer()
        source = Path(self.mktemp())
        payload = os.urandom(1024 * 1024) * 52
        with zipfile.ZipFile(source, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("video.3gp", payload)
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        with source.open("rb") as f:
            response = yield self.treq.post(
                self.url,
                data=[(name, value.decode()) for name, value in mmsFields("big")],
                files={"mms.zip": ("mms.zip", "application/zip", f)},
            )
            yield self.assertAnswer(response, 200)
        yield gatherResults(self.completions)
        stored = self.spool.dir(NEW) / "big"
        self.assertEqual(hashlib.sha256((stored / "mms.zip").read_bytes()).hexdigest(), digest)
        message = self.stored(NEW, "big")
        self.assertEqual((message.mms_sha256, message.mms_size), (digest, source.stat().st_size))
        self.assertEqual([(p.path, p.size, p.content_type) for p in message.parts],
                         [("parts/video.3gp", len(payload), "video/3gpp")])

    @inlineCallbacks
    def test_anyCallbackRoundTrips(self):
        """
        Any valid parameter set, and any zip bytes for an MMS, sent in a
        multipart body, is stored as parseCallback reads the parameters, with
        the zip byte for byte.
        """
        self.startServer()
        for index, (params, data) in enumerate(
            examples(st.tuples(callbackParams(), st.binary(max_size=2000)), 12)
        ):
            params[b"id"] = [b"round-trip-%d" % index]
            fields = [(name.decode(), value) for name, values in params.items() for value in values]
            isMms = params[b"type"] == [b"2"]
            response = yield self.post(fields, data if isMms else None)
            yield self.assertAnswer(response, 200)
            yield gatherResults(self.completions)
            stored = self.stored(NEW, f"round-trip-{index}")
            expected = parseCallback(
                params, delivery="post", received=stored.received, zone=self.config.server.timezone
            )
            self.assertEqual(
                stored.replace(mms_size=None, mms_sha256=None, parts=(), text=None, parts_error=None),
                expected,
            )
            if isMms:
                self.assertEqual((self.spool.dir(NEW) / stored.id / "mms.zip").read_bytes(), data)
                self.assertEqual(stored.mms_sha256, hashlib.sha256(data).hexdigest())

    @inlineCallbacks
    def test_duplicateMms(self):
        """
        A retry of an accepted MMS is answered 200 and its upload dropped.
        """
        self.startServer(complete=False)
        yield self.assertAnswer((yield self.post(mmsFields(), MMS_ZIP)), 200)
        yield self.assertAnswer((yield self.post(mmsFields(), b"other")), 200)
        self.assertEqual((self.spool.dir(PENDING) / "mms-1" / "mms.zip").read_bytes(), MMS_ZIP)

    # Refused

    # One source of parameters per mode

    @inlineCallbacks
    def test_getBodyNotTaken(self):
        """
        A GET callback's parameters are its query string: a multipart body
        with an mms.zip is read and dropped, not taken for the MMS, which
        waits in pending/ for RetrieveMMS like any GET-mode notification.
        """
        self.startServer(complete=False)
        query = urlencode([(k, v) for k, v in mmsFields("get-1")])
        response = yield self.treq.get(
            f"{self.url}?{query}",
            data=multipartBody(BOUNDARY, mmsFields("other"), MMS_ZIP),
            headers={b"Content-Type": [contentTypeFor(BOUNDARY)]},
        )
        yield self.assertAnswer(response, 200, "OK")
        self.assertEqual(listing(self.spool.dir(PENDING)), ["get-1"])
        self.assertEqual(listing(self.spool.dir(PENDING) / "get-1"), ["message.json"])
        self.assertEqual(self.stored(PENDING, "get-1").delivery, "get")

    @inlineCallbacks
    def test_getBodyOfAnyType(self):
        """
        Whatever its type, a GET's body is not read as parameters (a form's
        id does not replace the query string's) nor refused.
        """
        self.startServer()
        fields = dict(SMS_FIELDS)
        query = urlencode({**fields, "message": b"hi"})
        for contentType, body in [
            (b"application/x-www-form-urlencoded", b"id=form"),
            (b"text/plain", b"anything"),
        ]:
            response = yield self.treq.get(
                f"{self.url}?{query}", data=body, headers={b"Content-Type": [contentType]}
            )
            yield self.assertAnswer(response, 200, "OK")
        self.assertEqual(listing(self.spool.dir(NEW)), ["sms-1"])

    @inlineCallbacks
    def test_postParametersInQueryRefused(self):
        """
        A POST whose query string carries a callback parameter, as well as
        its body or instead of it, is refused with 400 naming it, before the
        body is read; nothing is stored.
        """
        self.startServer()
        for query, fields in [("id=other", SMS_FIELDS), ("from=1&to=2", SMS_FIELDS), ("id=x", [])]:
            response = yield self.treq.post(
                f"{self.url}?{query}",
                data=multipartBody(BOUNDARY, fields),
                headers={b"Content-Type": [contentTypeFor(BOUNDARY)]},
            )
            name = query.split("=")[0]
            yield self.assertAnswer(response, 400, f"parameter {name!r} in the query string of a POST")
        response = yield self.treq.post(f"{self.url}?{urlencode(dict(SMS_FIELDS))}")
        yield self.assertAnswer(response, 400, "in the query string of a POST")
        self.assertEqual(listing(self.spool.dir(NEW)), [])

    @inlineCallbacks
    def test_postOtherQueryIgnored(self):
        """
        Names that are no callback parameter in a POST's query string (a
        token in the URL given to MX Telecom, say) are ignored.
        """
        self.startServer()
        response = yield self.treq.post(
            f"{self.url}?key=abc",
            data=multipartBody(BOUNDARY, SMS_FIELDS),
            headers={b"Content-Type": [contentTypeFor(BOUNDARY)]},
        )
        yield self.assertAnswer(response, 200, "OK")
        self.assertEqual(listing(self.spool.dir(NEW)), ["sms-1"])

    @inlineCallbacks
    def test_postWithoutBodyType(self):
        """
        A POST without a form or multipart body is refused with 415.
        """
        self.startServer()
        response = yield self.treq.post(self.url)
        yield self.assertAnswer(response, 415, "multipart/form-data")

    @inlineCallbacks
    def test_mmsWithoutZip(self):
        self.startServer()
        response = yield self.post(mmsFields())
        yield self.assertAnswer(response, 400, "mms.zip")

    @inlineCallbacks
    def test_duplicatedField(self):
        self.startServer()
        response = yield self.post(mmsFields() + [("id", b"other")], MMS_ZIP)
        yield self.assertAnswer(response, 400, "'id': given more than once")
        self.assertEqual(listing(self.spool.dir(PENDING)), [])

    @inlineCallbacks
    def test_malformed(self):
        """
        Malformed multipart gets 400 with the reason, and leaves nothing in
        tmp/.
        """
        self.startServer()
        body = multipartBody(BOUNDARY, mmsFields(), MMS_ZIP)
        cases = [
            (contentTypeFor(BOUNDARY), body.replace(b"\r\n", b"\n"), "malformed multipart"),
            (b"multipart/form-data", body, "boundary"),
            (contentTypeFor("other"), body, "malformed multipart"),
            (contentTypeFor(BOUNDARY), body[: -len(BOUNDARY) - 6], "Unexpected end"),
            (contentTypeFor(BOUNDARY), body.replace(b"Content-Disposition", b"X-Other"), "Content-Disposition"),
        ]
        for contentType, data, reason in cases:
            response = yield self.treq.post(self.url, data=data, headers={b"Content-Type": [contentType]})
            yield self.assertAnswer(response, 400, reason)

    @inlineCallbacks
    def test_otherPathOrMethod(self):
        """
        An upload to another path (404) or with another method (405) is
        answered after its body has been read, and its zip is removed.
        """
        self.startServer()
        body = multipartBody(BOUNDARY, mmsFields(), MMS_ZIP)
        headers = {b"Content-Type": [contentTypeFor(BOUNDARY)]}
        response = yield self.treq.post(self.url + "other", data=body, headers=headers)
        yield self.assertAnswer(response, 404)
        response = yield self.treq.put(self.url, data=body, headers=headers)
        yield self.assertAnswer(response, 405)

    @inlineCallbacks
    def test_truncatedChunkedBody(self):
        """
        A chunked body that ends (properly) in the middle of the zip is
        refused with 400 and its partial zip removed.
        """
        self.startServer()
        body = multipartBody(BOUNDARY, mmsFields(), b"z" * 200000)[:150000]
        response = yield self.raw(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: " + contentTypeFor(BOUNDARY) + b"\r\n\r\n"
            + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
        )
        self.assertEqual(statusOf(response), 400)
        self.assertIn(b"Unexpected end of multipart stream", response)
        yield self.spool.whenIdle()
        self.assertEqual(listing(self.spool.dir(TMP)), [])

    @inlineCallbacks
    def test_chunkedBodyOverMaxBody(self):
        """
        A chunked body that grows past max_body is cut off with 413.
        """
        self.startServer(max_body=100000)
        body = multipartBody(BOUNDARY, mmsFields(), b"z" * 300000)
        chunks = b"".join(
            b"%x\r\n" % len(body[i : i + 16384]) + body[i : i + 16384] + b"\r\n"
            for i in range(0, len(body), 16384)
        )
        response = yield self.raw(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: " + contentTypeFor(BOUNDARY) + b"\r\n\r\n" + chunks + b"0\r\n\r\n"
        )
        self.assertEqual(statusOf(response), 413)
        yield self.spool.whenIdle()
        self.assertEqual(listing(self.spool.dir(TMP)), [])
        self.assertEqual(listing(self.spool.dir(PENDING)), [])

    @inlineCallbacks
    def test_refusedBeforeTheBody(self):
        """
        A client outside allow is dropped at accept, and a Content-Length
        over max_body gets 413 on the headers alone: the client sends no
        body at all.
        """
        self.startServer(allow=(ipaddress.ip_network("10.0.0.0/8"),))
        headers = (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
            b"Content-Type: " + contentTypeFor(BOUNDARY) + b"\r\n\r\n"
        )
        response = yield self.raw(headers)
        self.assertEqual(response, b"")
        self.startServer(max_body=999999)
        response = yield self.raw(headers)
        self.assertEqual(statusOf(response), 413)
        self.assertEqual(listing(self.spool.dir(TMP)), [])


class StalledTests(TestCase):
    """
    A client that stops sending mid-upload, on a site whose clock the test
    drives: an in-memory connection to the real site and spool.
    """

    def connect(self):
        self.clock = Clock()
        self.spool = openSpool(self)
        config = serverConfig(request_timeout=30.0)
        site = buildSite(config, self.spool, self.clock, writers=fileWriters(self))
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        self.transport = StringTransport(peerAddress=peer)
        protocol = site.buildProtocol(peer)
        protocol.makeConnection(self.transport)
        body = multipartBody(BOUNDARY, mmsFields(), b"z" * 100000)
        protocol.dataReceived(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(body)
            + b"Content-Type: " + contentTypeFor(BOUNDARY) + b"\r\n\r\n" + body[:60000]
        )
        self.assertEqual(len(listing(self.spool.dir(TMP))), 1)
        return protocol

    @inlineCallbacks
    def test_stalledUploadTimedOut(self):
        """
        After request_timeout the client gets 408, the connection is closed
        and the partial zip is removed from tmp/.
        """
        self.connect()
        self.clock.advance(29)
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(1)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertTrue(self.transport.disconnecting)
        yield self.spool.whenIdle()
        self.assertEqual(listing(self.spool.dir(TMP)), [])

    @inlineCallbacks
    def test_clientGoneMidUpload(self):
        """
        A client that closes the connection mid-upload leaves nothing in tmp/.
        """
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        protocol = self.connect()
        protocol.connectionLost(Failure(ConnectionLost()))
        yield self.spool.whenIdle()
        self.assertEqual(listing(self.spool.dir(TMP)), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
