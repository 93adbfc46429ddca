"""
The operator's command, C{mxrecv}: check-config, list, show, requeue,
redeliver, webhook-secret; and
the validation of the operations tables of the configuration.
"""

import io
import json
import socket
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from mxrecv.config import AdminConfig
from mxrecv.deliver.records import Records
from mxrecv.deliver.signature import KEY_SIZE, parseSecret
from mxrecv.mms.complete import Completer
from mxrecv.ops.cli import main
from mxrecv.spool.layout import FAILED, PENDING, Attempt, Attempts, undeliverableDocument

from .running import ANY_PORT, client, run, runningConfig
from .support import openSpool, sms


def command(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


class CheckConfigTests(TestCase):
    def config(self, text: str) -> str:
        path = Path(self.mktemp())
        path.write_text(text)
        return str(path)

    def test_ok(self):
        path = self.config(
            '[admin]\nlisten = ["tcp:9100:interface=127.0.0.1"]\n'
            '[log]\nformat = "json"\n'
            '[deliver]\ncommand = ["/usr/local/bin/take"]\nurl = "http://127.0.0.1:8000/in"\n'
            "[server]\nshutdown_timeout = 10\n"
        )
        code, out, err = command("check-config", path)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("admin: tcp:9100:interface=127.0.0.1", out)
        self.assertIn("deliver: command, http://127.0.0.1:8000/in", out)

    def assertRefused(self, text: str, key: str):
        code, out, err = command("check-config", self.config(text))
        self.assertEqual(code, 1)
        self.assertIn(key, err)

    def test_publicAdminRefused(self):
        """
        check-config refuses an admin listener on all addresses (what
        tcp:9100 means) without an allow list and a token.
        """
        self.assertRefused('[admin]\nlisten = ["tcp:9100"]\n', "admin.listen[0]")

    def test_badValues(self):
        self.assertRefused('[log]\nformat = "xml"\n', "log.format")
        self.assertRefused("[admin]\nport = 9100\n", "admin.port: unknown key")
        self.assertRefused('[admin]\nlisten = ["nonsense:1"]\n', "admin.listen[0]")
        self.assertRefused("[deliver]\ncommand = []\n", "deliver.command")
        self.assertRefused('[deliver]\nurl = "ftp://x/"\n', "deliver.url")
        self.assertRefused(
            "[deliver]\nbackoff_initial = 10\nbackoff_max = 1\n", "deliver.backoff_max"
        )
        self.assertRefused("[server]\nshutdown_timeout = 0\n", "server.shutdown_timeout")

    def test_warnsAboutSecretsOthersCanRead(self):
        """
        check-config warns (and still succeeds) when a file of secrets, or
        the configuration holding a password itself, can be read by other
        users; not once only its owner and group can.
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        secret = directory / "retrieve-password"
        secret.write_text("s3cret\n")
        secret.chmod(0o644)
        path = directory / "mxrecv.toml"
        path.write_text('[retrieve]\nuser = "acme"\npassword_file = "retrieve-password"\n')
        path.chmod(0o644)
        code, out, err = command("check-config", str(path))
        self.assertEqual(code, 0)
        self.assertEqual(
            err,
            f"{path}: warning: retrieve.password_file: {secret} is readable by other "
            "users (mode 0644): chmod o-rwx it\n",
        )
        secret.chmod(0o640)
        self.assertEqual(command("check-config", str(path)), (0, out, ""))

        path.write_text('[retrieve]\nuser = "acme"\npassword = "s3cret"\n')
        code, out, err = command("check-config", str(path))
        self.assertEqual(code, 0)
        self.assertIn(
            f"warning: retrieve.password: given in {path}, which is readable by other users "
            "(mode 0644)",
            err,
        )
        self.assertNotIn("s3cret", out + err)
        path.chmod(0o600)
        self.assertEqual(command("check-config", str(path))[2], "")

    def test_warnsAboutPlainHttp(self):
        """
        check-config warns when the RetrieveMMS password would be sent in
        clear (retrieval on, plain http://).
        """
        path = self.config(
            '[retrieve]\nuser = "acme"\nurl = "http://mms.example.com/RetrieveMMS"\n'
        )
        code, out, err = command("check-config", path)
        self.assertEqual(code, 0)
        self.assertEqual(
            err,
            f"{path}: warning: retrieve.url: a plain http:// URL sends the RetrieveMMS "
            "password unencrypted (in its query string): use https://\n",
        )
        for text in (
            '[retrieve]\nuser = "acme"\nurl = "https://mms.example.com/RetrieveMMS"\n',
            '[retrieve]\nurl = "http://mms.example.com/RetrieveMMS"\n',
        ):
            self.assertEqual(command("check-config", self.config(text))[::2], (0, ""))

    def test_missingFile(self):
        code, out, err = command("check-config", self.mktemp())
        self.assertEqual(code, 1)
        self.assertIn("cannot read", err)


class SpoolCommandTests(TestCase):
    @inlineCallbacks
    def setUp(self):
        self.spool = openSpool(self)
        path = Path(self.mktemp())
        path.write_text(f'[spool]\ndir = "{self.spool.root}"\n')
        self.config = str(path)
        yield self.spool.accept(sms("b", received="2026-11-25T10:00:02.000Z"))
        yield self.spool.accept(sms("a", received="2026-11-25T10:00:01.000Z"))
        yield self.spool.accept(sms("m/1").replace(type="mms", message=None), PENDING)
        completer = Completer(self.spool, reactor=reactor, pool=self.spool._pool)
        yield completer.fail(
            "m=2F1",
            "gave up after 3 attempts",
            Attempts.of([Attempt("2026-11-25T10:00:05Z", "HTTP 500")]),
        )

    def test_list(self):
        code, out, err = command("-c", self.config, "list")
        self.assertEqual(code, 0)
        lines = [line.split("\t") for line in out.splitlines()]
        self.assertEqual(
            [(l[0], l[1]) for l in lines], [("new", "a"), ("new", "b"), ("failed", "m=2F1")]
        )
        self.assertEqual(lines[2][-1], "gave up after 3 attempts")

    def test_listOne(self):
        code, out, err = command("-c", self.config, "list", "failed")
        self.assertEqual([line.split("\t")[1] for line in out.splitlines()], ["m=2F1"])

    def test_showById(self):
        code, out, err = command("-c", self.config, "show", "m/1")
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith("failed/m=2F1\n"))
        self.assertIn('"error": "gave up after 3 attempts"', out)

    @inlineCallbacks
    def test_controlCharactersEscaped(self):
        """
        A sender with a line break and tabs cannot forge a row or a column
        of the list, nor an escape sequence reach the terminal; show gives
        message.json as the same JSON, DEL and C1 controls as JSON escapes.
        """
        forged = "447700900123\nnew\tforged\tsms\t2026\t\x1b[2J\x00\x7f\x9b"
        yield self.spool.accept(sms("c", received="2026-11-25T10:00:03.000Z").replace(sender=forged))
        code, out, err = command("-c", self.config, "list", "new")
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertEqual([line.split("\t")[1] for line in lines], ["a", "b", "c"])
        self.assertEqual(
            lines[2].split("\t")[4],
            "447700900123\\nnew\\tforged\\tsms\\t2026\\t\\x1b[2J\\x00\\x7f\\x9b",
        )
        code, out, err = command("-c", self.config, "show", "c")
        self.assertEqual(code, 0)
        self.assertFalse(any(c in out for c in "\x1b\x00\x7f\x9b"), out)
        document = out[out.index("{") :]
        self.assertEqual(json.loads(document)["from"], forged)

    def test_showUnknown(self):
        code, out, err = command("-c", self.config, "show", "nothing")
        self.assertEqual(code, 1)
        self.assertIn("no message 'nothing'", err)

    def test_requeue(self):
        """
        requeue moves a failed MMS back to pending/, without its error and
        attempts, so that the next start retrieves it again.
        """
        code, out, err = command("-c", self.config, "requeue", "m=2F1")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(
            out.splitlines()[0],
            "failed/m=2F1 -> pending/m=2F1 "
            "(after 1 attempt; the last, at 2026-11-25T10:00:05Z: HTTP 500)",
        )
        self.assertFalse((self.spool.dir(FAILED) / "m=2F1").exists())
        document = json.loads((self.spool.dir(PENDING) / "m=2F1" / "message.json").read_bytes())
        self.assertNotIn("error", document)
        self.assertNotIn("attempts", document)
        self.assertNotIn("attempt_count", document)
        self.assertEqual(document["id"], "m/1")

    @inlineCallbacks
    def test_requeueAfterManyAttempts(self):
        """
        A message given up after many attempts records their count and the
        last ten; requeue says how many there were and what the last was.
        """
        yield self.spool.accept(sms("many").replace(type="mms", message=None), PENDING)
        attempts = Attempts.of(
            Attempt(f"2026-11-25T10:{i // 60:02}:{i % 60:02}Z", f"HTTP {400 + i % 2}")
            for i in range(250)
        )
        completer = Completer(self.spool, reactor=reactor, pool=self.spool._pool)
        yield completer.fail("many", "gave up", attempts)
        document = json.loads((self.spool.dir(FAILED) / "many" / "message.json").read_bytes())
        self.assertEqual(document["attempt_count"], 250)
        self.assertEqual(
            document["attempts"],
            [
                {"at": f"2026-11-25T10:{i // 60:02}:{i % 60:02}Z", "outcome": f"HTTP {400 + i % 2}"}
                for i in range(240, 250)
            ],
        )
        code, out, err = command("-c", self.config, "requeue", "many")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(
            out.splitlines()[0],
            "failed/many -> pending/many "
            "(after 250 attempts; the last, at 2026-11-25T10:04:09Z: HTTP 401)",
        )

    def test_requeueNotFailed(self):
        code, out, err = command("-c", self.config, "requeue", "a")
        self.assertEqual(code, 1)
        self.assertIn("new/a is not in failed/", err)
        self.assertTrue((self.spool.dir("new") / "a").is_dir())


class RequeueNowTests(TestCase):
    @inlineCallbacks
    def test_takenUpByRunningServer(self):
        """
        requeue --admin URL has the running server take the message up at
        once (POST /pending/NAME on its admin listener).
        """
        config = runningConfig(self)
        spool = openSpool(self, config.spool.dir)
        yield spool.accept(sms("m/1").replace(type="mms", message=None), PENDING)
        completer = Completer(spool, reactor=reactor, pool=spool._pool)
        yield completer.fail("m=2F1", "gave up", Attempts())
        spool.close()
        running = run(self, config)
        path = Path(self.mktemp())
        path.write_text(f'[spool]\ndir = "{config.spool.dir}"\n')

        taken = []

        def observe(event):
            if event.get("log_format", "").startswith("Taking up pending/"):
                taken.append(event["name"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        # The command blocks (urllib): run it beside the reactor.
        code, out, err = yield deferToThread(
            command, "-c", str(path), "requeue", "m/1", "--admin", running.admin
        )
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"taken up by the server at {running.admin}", out)
        self.assertEqual(taken, ["m=2F1"])
        self.assertTrue((config.spool.dir / PENDING / "m=2F1").is_dir())

    @inlineCallbacks
    def test_withToken(self):
        """
        When the admin listener has a token, requeue --admin sends the one
        in the configuration it was given.
        """
        token = "t" * 20
        config = runningConfig(self, admin=AdminConfig(listen=ANY_PORT, token=token))
        spool = openSpool(self, config.spool.dir)
        yield spool.accept(sms("m1").replace(type="mms", message=None), PENDING)
        yield Completer(spool, reactor=reactor, pool=spool._pool).fail("m1", "gave up", Attempts())
        spool.close()
        running = run(self, config)
        path = Path(self.mktemp())
        path.write_text(f'[spool]\ndir = "{config.spool.dir}"\n[admin]\ntoken = "{token}"\n')
        code, out, err = yield deferToThread(
            command, "-c", str(path), "requeue", "m1", "--admin", running.admin
        )
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"taken up by the server at {running.admin}", out)

    @inlineCallbacks
    def test_unknown(self):
        running = run(self, runningConfig(self))
        response = yield client().post(running.admin + "/pending/nothing")
        self.assertEqual(response.code, 404)
        yield response.content()


class DeadLetterCommandTests(TestCase):
    """
    list --undeliverable, show and redeliver (without a running server: the
    running one is in test_deliver_running), webhook-secret.
    """

    @inlineCallbacks
    def setUp(self):
        self.spool = openSpool(self)
        path = Path(self.mktemp())
        path.write_text(f'[spool]\ndir = "{self.spool.root}"\n')
        self.config = str(path)
        self.records = Records(self.spool.root)
        yield self.spool.accept(sms("a", received="2026-11-25T10:00:01.000Z"))
        yield self.spool.accept(sms("b", received="2026-11-25T10:00:02.000Z"))
        stderr = "line 1\nforged\trow\x1b[2J"
        attempt = Attempt("2026-11-25T10:00:03.000Z", f"exit status 1; stderr: {stderr}")
        for target, name in (("command", "b"), ("url", "b"), ("url", "a")):
            self.records.markUndeliverable(
                target,
                name,
                undeliverableDocument(
                    name=name,
                    target=target,
                    error=f"refused 1 times; the last time: {attempt.outcome}",
                    at=attempt.at,
                    attempts=Attempts.of([attempt]),
                ),
            )

    def test_list(self):
        """
        One line per dead letter, oldest message first, each field escaped:
        the end of a stderr cannot forge a row or reach the terminal.
        """
        code, out, err = command("-c", self.config, "list", "--undeliverable")
        self.assertEqual((code, err), (0, ""))
        lines = [line.split("\t") for line in out.splitlines()]
        self.assertEqual([(l[0], l[1]) for l in lines], [("url", "a"), ("command", "b"), ("url", "b")])
        self.assertEqual(lines[0][5], "1 attempts")
        self.assertEqual(
            lines[0][6],
            "refused 1 times; the last time: exit status 1; stderr: "
            "line 1\\nforged\\trow\\x1b[2J",
        )
        code, out, err = command("-c", self.config, "list", "new", "--undeliverable")
        self.assertEqual(code, 1)

    def test_show(self):
        code, out, err = command("-c", self.config, "show", "b")
        self.assertEqual(code, 0)
        self.assertIn("undeliverable to command: refused 1 times", out)
        self.assertIn("undeliverable to url: refused 1 times", out)
        self.assertIn("2026-11-25T10:00:03.000Z\texit status 1; stderr: line 1\\nforged", out)

    def test_redeliverOneTarget(self):
        code, out, err = command("-c", self.config, "redeliver", "b", "--target", "url")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("new/b is no longer undeliverable to url", out)
        self.assertEqual(
            [(t, n) for t, n, _ in self.records.undeliverable()], [("command", "b"), ("url", "a")]
        )

    def test_redeliverEveryTarget(self):
        code, out, err = command("-c", self.config, "redeliver", "b")
        self.assertEqual(code, 0)
        self.assertIn("to command, url", out)
        self.assertEqual([(t, n) for t, n, _ in self.records.undeliverable()], [("url", "a")])

    def test_redeliverNotDead(self):
        code, out, err = command("-c", self.config, "redeliver", "a", "--target", "command")
        self.assertEqual(code, 1)
        self.assertIn("new/a is not undeliverable to the command", err)
        code, out, err = command("-c", self.config, "redeliver", "nothing")
        self.assertEqual(code, 1)

    def test_redeliverAdminDown(self):
        """
        With --admin and no server there, nothing is changed, and the error
        says so.
        """
        # Bound and never listening: a connection to it is refused at once,
        # and no other process can take the port while the test holds it.
        refusing = socket.socket()
        self.addCleanup(refusing.close)
        refusing.bind(("127.0.0.1", 0))
        port = refusing.getsockname()[1]
        code, out, err = command(
            "-c", self.config, "redeliver", "b", "--admin", f"http://127.0.0.1:{port}"
        )
        self.assertEqual(code, 1)
        self.assertIn("nothing was changed", err)
        self.assertEqual(len(self.records.undeliverable()), 3)

    def test_webhookSecret(self):
        """
        webhook-secret writes a new whsec_ secret to a file of mode 0600 it
        creates (never over an existing one), or prints one.
        """
        path = Path(self.mktemp()).absolute()
        code, out, err = command("webhook-secret", "--out", str(path))
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(path.stat().st_mode & 0o777, 0o600)
        secret = path.read_text().strip()
        self.assertEqual(len(parseSecret(secret)), KEY_SIZE)
        code, out, err = command("webhook-secret", "--out", str(path))
        self.assertEqual(code, 1)
        self.assertEqual(path.read_text().strip(), secret)
        code, out, err = command("webhook-secret")
        self.assertEqual(code, 0)
        self.assertNotEqual(out.strip(), secret)
        parseSecret(out.strip())
        config = Path(self.mktemp())
        config.write_text(
            f'[deliver]\nurl = "http://127.0.0.1:8000/"\nsecret_file = "{path}"\n'
        )
        code, out, err = command("check-config", str(config))
        self.assertEqual((code, err), (0, ""))
        self.assertIn("deliver: http://127.0.0.1:8000/ (signed)", out)
