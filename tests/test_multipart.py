"""
Tests for L{mxrecv.web.multipart}: a multipart body fed chunk by chunk into a
real spool's staging directory.
"""

import hashlib

from hypothesis import strategies as st
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from mxrecv.web.body import Refusal, Upload
from mxrecv.web.multipart import (
    MAX_FIELD_BYTES,
    MAX_FIELDS,
    MAX_FIELDS_BYTES,
    MultipartBody,
    boundaryOf,
)

from .strategies import contentTypeFor, examples, formSubmissions, multipartBody, splits
from .support import fileWriters, openSpool

BOUNDARY = "----mxrecv-test-7f3a"


def messageWithCharset(charset: bytes, value: bytes) -> bytes:
    """
    A whole multipart body of one field, C{message}, whose part names
    C{charset} (as written in its Content-Type).
    """
    return (
        b"--" + BOUNDARY.encode() + b'\r\nContent-Disposition: form-data; name="message"\r\n'
        b"Content-Type: text/plain; charset=" + charset + b"\r\n\r\n" + value + b"\r\n"
        b"--" + BOUNDARY.encode() + b"--\r\n"
    )


CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}".encode()


def fieldsAsParams(fields):
    params = {}
    for name, value in fields:
        params.setdefault(name.encode("utf-8"), []).append(value)
    return params


class Feeding:
    """
    Helpers to feed bodies to a L{MultipartBody} on a real spool, its zip
    written by real worker threads.
    """

    def setUp(self):
        self.spool = openSpool(self)
        self.writers = fileWriters(self)

    @inlineCallbacks
    def feed(self, chunks, contentType=CONTENT_TYPE):
        """
        Fire with the body once C{chunks} are fed and it has finished.
        """
        body = MultipartBody(contentType, spool=self.spool, writers=self.writers)
        self.addCleanup(self.discard, body)
        for chunk in chunks:
            body.write(chunk)
        yield body.finish()
        return body

    def discard(self, body):
        body.abort()
        return self.spool.whenIdle()

    @inlineCallbacks
    def refusal(self, chunks, contentType=CONTENT_TYPE):
        """
        Feed C{chunks} and return the L{Refusal}, after checking that the
        abort that follows leaves nothing in tmp/.
        """
        body = None
        try:
            body = MultipartBody(contentType, spool=self.spool, writers=self.writers)
            for chunk in chunks:
                body.write(chunk)
            yield body.finish()
        except Refusal as e:
            if body is not None:
                body.abort()
            yield self.spool.whenIdle()
            return self.tmpEmpty(e)
        self.fail(f"not refused: {body.params!r}")

    def tmpEmpty(self, refusal):
        self.assertEqual(list(self.spool.dir("tmp").iterdir()), [])
        return refusal


class PropertyTests(Feeding, TestCase):
    @inlineCallbacks
    def test_anySplitParsesTheSame(self):
        """
        A body split into any sequence of chunks parses as it does in one
        piece: the same fields and the same file, byte for byte.
        """
        submissions = formSubmissions().flatmap(
            lambda s: st.tuples(st.just(s), splits(multipartBody(*s)))
        )
        for (boundary, fields, file), chunks in examples(submissions, 60):
            raw = multipartBody(boundary, fields, file)
            contentType = contentTypeFor(boundary)
            whole = yield self.feed([raw], contentType)
            pieces = yield self.feed(chunks, contentType)
            self.assertEqual(pieces.params, whole.params)
            self.assertEqual(pieces.upload, whole.upload)
            if file is not None:
                self.assertEqual(
                    pieces.staging.file("mms.zip").read_bytes(),
                    whole.staging.file("mms.zip").read_bytes(),
                )
            whole.abort()
            pieces.abort()

    @inlineCallbacks
    def test_roundTrip(self):
        """
        Any fields and file bytes come out as they went in: the fields in
        C{params} (repeats in order), the file in staging/mms.zip with its
        size and SHA-256 in C{upload}.
        """
        for submission, chunkSize in examples(
            st.tuples(formSubmissions(), st.integers(1, 300)), 60
        ):
            yield self.roundTrip(submission, chunkSize)

    @inlineCallbacks
    def roundTrip(self, submission, chunkSize):
        boundary, fields, file = submission
        raw = multipartBody(boundary, fields, file)
        body = yield self.feed(
            [raw[i : i + chunkSize] for i in range(0, len(raw), chunkSize)],
            contentTypeFor(boundary),
        )
        self.assertEqual(body.params, fieldsAsParams(fields))
        if file is None:
            self.assertIsNone(body.staging)
            self.assertIsNone(body.upload)
        else:
            self.assertEqual(body.staging.file("mms.zip").read_bytes(), file)
            self.assertEqual(
                body.upload, Upload("mms.zip", len(file), hashlib.sha256(file).hexdigest())
            )
        body.abort()


class HostileTests(Feeding, TestCase):
    """
    Each hostile input and its documented answer.
    """

    @inlineCallbacks
    def test_boundaryLikeBytesInTheZip(self):
        """
        The boundary without its leading CRLF, CR/LF runs and partial
        delimiters inside the file are data.
        """
        file = (
            b"--" + BOUNDARY.encode() + b"\r\n"
            b"\r\n--" + BOUNDARY.encode()[:-1] + b"\r\n"
            b"\r\r\n\n-" + BOUNDARY.encode() + b"--\r\n\r\n-"
        )
        body = yield self.feed([multipartBody(BOUNDARY, [("id", b"1")], file)])
        self.assertEqual(body.staging.file("mms.zip").read_bytes(), file)

    @inlineCallbacks
    def test_lfOnlyLineEnds(self):
        """
        A body with LF line ends is not multipart as RFC 7578 defines it: 400.
        """
        raw = multipartBody(BOUNDARY, [("id", b"1")], b"zip").replace(b"\r\n", b"\n")
        refusal = yield self.refusal([raw])
        self.assertEqual(refusal.code, 400)
        self.assertIn("malformed multipart body", refusal.reason)

    @inlineCallbacks
    def test_missingContentDisposition(self):
        raw = (
            b"--" + BOUNDARY.encode() + b"\r\nContent-Type: text/plain\r\n\r\n1\r\n"
            b"--" + BOUNDARY.encode() + b"--\r\n"
        )
        refusal = yield self.refusal([raw])
        self.assertEqual(refusal.code, 400)
        self.assertIn("Content-Disposition", refusal.reason)

    @inlineCallbacks
    def test_duplicatedFields(self):
        """
        Repeated fields are all kept, in order: C{parseCallback} accepts
        repeated C{to} and C{cc} and refuses any other repeat with 400
        (see L{tests.test_post}).
        """
        body = yield self.feed(
            [multipartBody(BOUNDARY, [("to", b"1"), ("id", b"a"), ("to", b"2")])]
        )
        self.assertEqual(body.params, {b"to": [b"1", b"2"], b"id": [b"a"]})

    @inlineCallbacks
    def test_duplicatedZip(self):
        raw = multipartBody(BOUNDARY, [], b"one")[: -len(BOUNDARY) - 6] + multipartBody(
            BOUNDARY, [], b"two"
        )
        refusal = yield self.refusal([raw])
        self.assertEqual((refusal.code, refusal.reason), (400, "mms.zip given more than once"))

    @inlineCallbacks
    def test_hugeHeader(self):
        raw = (
            b"--" + BOUNDARY.encode() + b"\r\nContent-Disposition: form-data; name=\"id\"\r\n"
            b"X-Padding: " + b"x" * 10000 + b"\r\n\r\n1\r\n--" + BOUNDARY.encode() + b"--\r\n"
        )
        refusal = yield self.refusal([raw[i : i + 1000] for i in range(0, len(raw), 1000)])
        self.assertEqual(refusal.code, 400)
        self.assertIn("header", refusal.reason)

    @inlineCallbacks
    def test_tooManyHeaders(self):
        raw = (
            b"--" + BOUNDARY.encode() + b"\r\nContent-Disposition: form-data; name=\"id\"\r\n"
            + b"X-A: 1\r\n" * 20 + b"\r\n1\r\n--" + BOUNDARY.encode() + b"--\r\n"
        )
        self.assertEqual((yield self.refusal([raw])).code, 400)

    @inlineCallbacks
    def test_endsMidPart(self):
        """
        A body that ends inside the zip part is refused when it ends, and
        the part written so far is removed.
        """
        raw = multipartBody(BOUNDARY, [("id", b"1")], b"z" * 100000)
        refusal = yield self.refusal([raw[:50000]])
        self.assertEqual(refusal.code, 400)
        self.assertIn("Unexpected end", refusal.reason)

    @inlineCallbacks
    def test_missingClosingBoundary(self):
        raw = multipartBody(BOUNDARY, [("id", b"1")], b"zip")
        refusal = yield self.refusal([raw[: -len(BOUNDARY) - 6]])
        self.assertEqual(refusal.code, 400)

    def test_noBoundary(self):
        for contentType in (
            b"multipart/form-data",
            b"multipart/form-data; boundary=",
            b"multipart/form-data; boundary=" + b"x" * 71,
        ):
            with self.assertRaises(Refusal) as caught:
                boundaryOf(contentType)
            self.assertEqual(caught.exception.code, 400)

    @inlineCallbacks
    def test_wrongBoundary(self):
        raw = multipartBody("other", [("id", b"1")], b"zip")
        self.assertEqual((yield self.refusal([raw])).code, 400)

    @inlineCallbacks
    def test_fieldTooLong(self):
        raw = multipartBody(BOUNDARY, [("message", b"m" * (MAX_FIELD_BYTES + 1))])
        refusal = yield self.refusal([raw])
        self.assertEqual(refusal.code, 400)
        self.assertIn("'message' longer than", refusal.reason)

    @inlineCallbacks
    def test_tooManyFields(self):
        raw = multipartBody(BOUNDARY, [("to", b"1")] * (MAX_FIELDS + 1))
        refusal = yield self.refusal([raw])
        self.assertEqual(refusal.code, 400)

    @inlineCallbacks
    def test_fieldsTooLongInAll(self):
        """
        Text fields are bounded in all, not only each: many long ones are
        refused before they add up.
        """
        fields = [("message", b"m" * MAX_FIELD_BYTES)] * (MAX_FIELDS_BYTES // MAX_FIELD_BYTES + 1)
        refusal = yield self.refusal([multipartBody(BOUNDARY, fields)])
        self.assertEqual(refusal.code, 400)
        self.assertIn("in all", refusal.reason)

    @inlineCallbacks
    def test_charsetGivingSurrogates(self):
        """
        A field whose declared charset decodes to text that is not valid
        Unicode (UTF-7 can encode a lone surrogate) is kept as sent, not a
        crash that drops the connection unanswered.
        """
        body = yield self.feed([messageWithCharset(b"utf-7", b"+2D0-")])
        self.assertEqual(body.params, {b"message": [b"+2D0-"]})

    @inlineCallbacks
    def test_charsetWithNul(self):
        """
        A charset name with a NUL in it (which makes C{bytes.decode} raise
        ValueError, not LookupError) leaves the field as sent rather than
        dropping the connection unanswered.
        """
        body = yield self.feed([messageWithCharset(b'"utf\x008"', b"Hello")])
        self.assertEqual(body.params, {b"message": [b"Hello"]})

    @inlineCallbacks
    def test_fieldCharset(self):
        """
        A field whose part names its charset is stored as UTF-8; one
        without is kept as sent (decoded later like GET-mode text).
        """
        raw = (
            b"--" + BOUNDARY.encode() + b"\r\nContent-Disposition: form-data; name=\"message\"\r\n"
            b"Content-Type: text/plain; charset=windows-1252\r\n\r\n\x80uro\r\n"
            b"--" + BOUNDARY.encode() + b"\r\nContent-Disposition: form-data; name=\"subject\"\r\n"
            b"\r\n\xa4\r\n--" + BOUNDARY.encode() + b"--\r\n"
        )
        body = yield self.feed([raw])
        self.assertEqual(body.params, {b"message": ["\u20acuro".encode()], b"subject": [b"\xa4"]})

    @inlineCallbacks
    def test_zipAsFileName(self):
        """
        A file part named otherwise but with file name mms.zip is the zip.
        """
        raw = multipartBody(BOUNDARY, [], b"zip").replace(b'data; name="mms.zip"', b'data; name="file"')
        body = yield self.feed([raw])
        self.assertEqual(body.upload.size, 3)

    @inlineCallbacks
    def test_abortRemovesStaging(self):
        """
        A body aborted mid-zip (the client went away, or the request timed
        out) leaves nothing in tmp/.
        """
        body = MultipartBody(CONTENT_TYPE, spool=self.spool, writers=self.writers)
        body.write(multipartBody(BOUNDARY, [("id", b"1")], b"z" * 100000)[:60000])
        self.assertTrue(body.staging.file("mms.zip").exists())
        body.abort()
        body.abort()
        yield self.spool.whenIdle()
        self.assertEqual(list(self.spool.dir("tmp").iterdir()), [])
