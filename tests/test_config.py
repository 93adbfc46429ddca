import ipaddress
from pathlib import Path
from zoneinfo import ZoneInfo

from twisted.trial.unittest import SynchronousTestCase

from mxrecv.config import Config, ConfigError, loadConfig, parseConfig
from mxrecv.deliver.signature import newSecret

EXAMPLE = Path(__file__).parent.parent / "etc" / "mxrecv.toml"


class ConfigTests(SynchronousTestCase):
    def assertConfigError(self, document, *fragments: str) -> None:
        e = self.assertRaises(ConfigError, parseConfig, document)
        for fragment in fragments:
            self.assertIn(fragment, str(e))

    def test_defaults(self) -> None:
        """
        With no file every key has a safe default: loopback on 8080, MX
        Telecom's networks only.
        """
        config = loadConfig(None)
        self.assertEqual(config, Config())
        self.assertEqual(config.server.listen, ("tcp:8080:interface=127.0.0.1",))
        self.assertEqual(config.server.allow, (ipaddress.ip_network("83.166.68.0/23"),))
        self.assertEqual(config.server.timezone, ZoneInfo("Europe/London"))
        self.assertEqual(config.spool.dedupe_days, 7)
        self.assertEqual(config.retrieve.concurrency, 8)

    def test_example(self) -> None:
        """
        The example configuration is valid and says what the defaults say,
        but for the loopback networks it allows.
        """
        config = loadConfig(EXAMPLE)
        self.assertEqual(config.spool, Config().spool)
        self.assertEqual(config.retrieve, Config().retrieve)
        self.assertIn(ipaddress.ip_network("127.0.0.0/8"), config.server.allow)

    def test_unknown(self) -> None:
        self.assertConfigError({"serve": {}}, "[serve]: unknown table")
        self.assertConfigError({"server": {"port": 1}}, "server.port: unknown key")

    def test_badValues(self) -> None:
        for table, key, value, fragment in [
            ("server", "listen", ["nonsense:1"], "server.listen[0]"),
            ("server", "listen", [], "server.listen"),
            ("server", "path", "callback", "must start with '/'"),
            ("server", "allow", ["83.166.68.1/23"], "server.allow[0]"),
            ("server", "allow", ["not a network"], "server.allow[0]"),
            ("server", "max_body", 0, "server.max_body"),
            ("server", "max_body", "1M", "server.max_body"),
            ("server", "timezone", "Mars/Olympus", "server.timezone: unknown time zone"),
            ("server", "ack", "", "server.ack: must not be empty"),
            ("server", "header_timeout", 0, "server.header_timeout: expected a number above 0"),
            ("server", "header_timeout", -5, "server.header_timeout: expected a number above 0"),
            ("server", "header_timeout", "30s", "server.header_timeout: expected a number above 0"),
            ("server", "header_timeout", True, "server.header_timeout: expected a number above 0"),
            ("spool", "dedupe_days", -1, "spool.dedupe_days"),
            ("spool", "fsync", "yes", "spool.fsync"),
            ("retrieve", "url", "ftp://x/", "retrieve.url"),
            ("retrieve", "url", "https://h/RetrieveMMS?user=u", "retrieve.url"),
            ("retrieve", "concurrency", True, "retrieve.concurrency"),
            ("retrieve", "ca_file", "/nonexistent/ca.pem", "retrieve.ca_file"),
        ]:
            self.assertConfigError({table: {key: value}}, fragment)

    def test_spoolMode(self) -> None:
        """
        [spool] mode is a file mode, as a TOML octal number or a string of
        octal digits: owner read and write, no execute; [spool] group must
        name a group.
        """
        self.assertEqual(Config().spool.mode, 0o640)
        self.assertEqual(parseConfig({"spool": {"mode": 0o660}}).spool.mode, 0o660)
        self.assertEqual(parseConfig({"spool": {"mode": "0644"}}).spool.mode, 0o644)
        self.assertEqual(parseConfig({"spool": {"mode": "0o600"}}).spool.mode, 0o600)
        for bad in (0o750, 0o400, 640, "rw-r-----", True, -1):
            self.assertConfigError({"spool": {"mode": bad}}, "spool.mode: expected a file mode")
        self.assertEqual(parseConfig({"spool": {"group": "root"}}).spool.group, "root")
        self.assertConfigError(
            {"spool": {"group": "no-such-group-here"}}, "spool.group: no such group"
        )

    def test_headerTimeout(self) -> None:
        """
        [server] header_timeout is 30 seconds unless set; a whole number is
        taken as seconds too.
        """
        self.assertEqual(Config().server.header_timeout, 30.0)
        self.assertEqual(loadConfig(EXAMPLE).server.header_timeout, 30.0)
        config = parseConfig({"server": {"header_timeout": 12}})
        self.assertEqual(config.server.header_timeout, 12.0)
        self.assertIsInstance(config.server.header_timeout, float)
        self.assertEqual(parseConfig({"server": {"header_timeout": 2.5}}).server.header_timeout, 2.5)

    def test_connectionsAndRate(self) -> None:
        """
        The connection caps and the minimum body rate have their defaults,
        as the example says; a rate of 0 turns the minimum off.
        """
        server = Config().server
        self.assertEqual(
            (server.max_connections, server.max_connections_per_client),
            (4096, 256),
        )
        self.assertEqual((server.min_body_rate, server.body_grace), (1024.0, 10.0))
        example = loadConfig(EXAMPLE).server
        self.assertEqual(
            (example.max_connections, example.max_connections_per_client),
            (4096, 256),
        )
        self.assertEqual((example.min_body_rate, example.body_grace), (1024.0, 10.0))
        self.assertEqual(parseConfig({"server": {"min_body_rate": 0}}).server.min_body_rate, 0.0)
        for key, value in [
            ("min_body_rate", -1),
            ("body_grace", 0),
            ("max_connections", 0),
            ("max_connections_per_client", "many"),
        ]:
            self.assertConfigError({"server": {key: value}}, f"server.{key}")

    def test_backoffOrder(self) -> None:
        self.assertConfigError(
            {"retrieve": {"backoff_initial": 10, "backoff_max": 5}}, "retrieve.backoff_max"
        )

    def test_passwordFile(self) -> None:
        """
        The password may come from a file beside the configuration, trailing
        whitespace stripped; not both ways at once.
        """
        base = Path(self.mktemp())
        base.mkdir()
        (base / "secret").write_text("s3cret \n")
        config = parseConfig({"retrieve": {"password_file": "secret"}}, base)
        self.assertEqual(config.retrieve.password, "s3cret")
        self.assertNotIn("s3cret", repr(config))
        e = self.assertRaises(
            ConfigError, parseConfig, {"retrieve": {"password_file": "missing"}}, base
        )
        self.assertIn("retrieve.password_file: cannot read it", str(e))
        e = self.assertRaises(
            ConfigError,
            parseConfig,
            {"retrieve": {"password_file": "secret", "password": "x"}},
            base,
        )
        self.assertIn("not both", str(e))

    def test_fileErrors(self) -> None:
        path = Path(self.mktemp())
        e = self.assertRaises(ConfigError, loadConfig, path)
        self.assertIn("cannot read", str(e))
        path.write_text("[server\n")
        e = self.assertRaises(ConfigError, loadConfig, path)
        self.assertIn("not valid TOML", str(e))
        path.write_text("[server]\nmax_body = -5\n")
        e = self.assertRaises(ConfigError, loadConfig, path)
        self.assertIn(f"{path}: server.max_body", str(e))


class AdminListenTests(SynchronousTestCase):
    """
    The admin listener is for operators: one that is not only reachable
    from this machine must be opened on purpose, with an allow list and a
    bearer token.
    """

    PUBLIC = [
        "tcp:9100",
        "tcp:9100:interface=0.0.0.0",
        "tcp:9100:interface=192.0.2.7",
        "tcp6:9100",
        "tcp6:9100:interface=\\:\\:",
    ]
    TOKEN = "0123456789abcdef0123"

    def test_publicRefused(self) -> None:
        """
        A listen string on another address than loopback (the wildcard that
        tcp:PORT means included) stops start-up, naming the key, unless both
        admin.allow and admin.token are given.
        """
        for listen in self.PUBLIC:
            for extra in [{}, {"allow": ["10.0.0.0/8"]}, {"token": self.TOKEN}]:
                e = self.assertRaises(
                    ConfigError, parseConfig, {"admin": {"listen": [listen], **extra}}
                )
                self.assertIn("admin.listen[0]", str(e))
                self.assertIn("admin.allow", str(e))

    def test_publicOnPurpose(self) -> None:
        for listen in self.PUBLIC:
            config = parseConfig(
                {"admin": {"listen": [listen], "allow": ["10.0.0.0/8"], "token": self.TOKEN}}
            )
            self.assertEqual(config.admin.allow, (ipaddress.ip_network("10.0.0.0/8"),))
            self.assertEqual(config.admin.token, self.TOKEN)
            self.assertNotIn(self.TOKEN, repr(config))

    def test_localAccepted(self) -> None:
        """
        Loopback addresses and UNIX sockets need neither; the allow list is
        then loopback and there is no token.
        """
        for listen in [
            "tcp:9100:interface=127.0.0.1",
            "tcp:9100:interface=127.0.0.2",
            "tcp6:9100:interface=\\:\\:1",
            "unix:/run/mxrecv/admin.sock",
        ]:
            config = parseConfig({"admin": {"listen": [listen]}})
            self.assertEqual(
                (config.admin.allow, config.admin.token),
                ((ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")), ""),
            )

    def test_token(self) -> None:
        """
        The token may come from a file beside the configuration; a short one
        is refused.
        """
        base = Path(self.mktemp())
        base.mkdir()
        (base / "token").write_text(self.TOKEN + "\n")
        config = parseConfig({"admin": {"token_file": "token"}}, base)
        self.assertEqual(config.admin.token, self.TOKEN)
        e = self.assertRaises(ConfigError, parseConfig, {"admin": {"token": "short"}})
        self.assertIn("admin.token: shorter than 16", str(e))
        e = self.assertRaises(
            ConfigError, parseConfig, {"admin": {"token_file": "token", "token": self.TOKEN}}, base
        )
        self.assertIn("admin.token_file: give token or token_file, not both", str(e))


class DeliverConfigTests(SynchronousTestCase):
    def assertConfigError(self, document, *fragments: str, base: Path = Path(".")) -> None:
        e = self.assertRaises(ConfigError, parseConfig, document, base)
        for fragment in fragments:
            self.assertIn(fragment, str(e))

    def test_defaults(self) -> None:
        deliver = Config().deliver
        self.assertEqual((deliver.max_attempts, deliver.concurrency), (3, 1))
        self.assertIsNone(deliver.secret)
        self.assertIsNone(deliver.ca_file)

    def test_secretFile(self) -> None:
        """
        secret_file, relative to the configuration's directory, holds a
        whsec_ secret; the key is kept, never shown.
        """
        base = Path(self.mktemp())
        base.mkdir()
        key = bytes(range(32))
        (base / "secret").write_text(newSecret(key) + "\n")
        url = "https://app.example.com/in"
        config = parseConfig({"deliver": {"url": url, "secret_file": "secret"}}, base)
        self.assertEqual(config.deliver.secret, key)
        self.assertNotIn("secret=", repr(config.deliver))
        (base / "bad").write_text("hunter2hunter2hunter2hunter2\n")
        self.assertConfigError(
            {"deliver": {"url": url, "secret_file": "bad"}},
            "deliver.secret_file: not a whsec_ secret",
            base=base,
        )
        e = self.assertRaises(
            ConfigError, parseConfig, {"deliver": {"url": url, "secret_file": "bad"}}, base
        )
        self.assertNotIn("hunter2", str(e))
        self.assertConfigError(
            {"deliver": {"url": url, "secret_file": "none"}}, "deliver.secret_file: cannot read"
        )
        self.assertConfigError(
            {"deliver": {"command": ["x"], "secret_file": "secret"}},
            "deliver.secret_file: given without url",
        )

    def test_caFile(self) -> None:
        base = Path(self.mktemp())
        base.mkdir()
        (base / "ca.pem").write_text("")
        url = "https://app.example.com/in"
        config = parseConfig({"deliver": {"url": url, "ca_file": "ca.pem"}}, base)
        self.assertEqual(config.deliver.ca_file, base / "ca.pem")
        self.assertConfigError(
            {"deliver": {"url": url, "ca_file": "missing.pem"}}, "deliver.ca_file: no such file"
        )

    def test_counts(self) -> None:
        for key in ("max_attempts", "concurrency"):
            self.assertConfigError({"deliver": {key: 0}}, f"deliver.{key}")
            self.assertConfigError({"deliver": {key: 1.5}}, f"deliver.{key}")
            self.assertEqual(getattr(parseConfig({"deliver": {key: 5}}).deliver, key), 5)


class AdminHostsTests(SynchronousTestCase):
    """
    C{[admin] hosts}: the names, besides loopback's and the listen
    interfaces', that the admin listener's browser pages answer to (a
    reverse proxy's); checked as host names, kept lowercased.
    """

    def test_default(self) -> None:
        self.assertEqual(parseConfig({}).admin.hosts, ())

    def test_names(self) -> None:
        config = parseConfig({"admin": {"hosts": ["MXRECV.example.com", "ops-1.internal."]}})
        self.assertEqual(config.admin.hosts, ("mxrecv.example.com", "ops-1.internal"))

    def test_notNames(self) -> None:
        for value in (["mxrecv.example.com:9100"], ["*.example.com"], ["a b"], [""], "x", [1],
                      ["-x.example"], ["x" * 64 + ".example"], ["http://x.example/"]):
            e = self.assertRaises(ConfigError, parseConfig, {"admin": {"hosts": value}})
            self.assertIn("admin.hosts", str(e))
