"""
The twistd plugin: discovered, configured, and run as a user runs it.
"""

import signal
from pathlib import Path

from twisted.application.service import IServiceMaker, Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SkipTest, TestCase

from mxrecv.config import (
    AdminConfig,
    Config,
    DeliverConfig,
    RetrieveConfig,
    ServerConfig,
    SpoolConfig,
)
from mxrecv.deliver.service import DeliveryService
from mxrecv.mms.pending import PendingService
from mxrecv.mms.retrieve import RetrieveService
from mxrecv.ops.inbox.service import InboxService
from mxrecv.ops.service import OrderedService, ThreadPoolService
from mxrecv.spool.service import PruneService, SpoolService
from mxrecv.tap import Options, makeService
from mxrecv.web.drain import DrainService
from mxrecv.web.listen import Listener

from .support import SMS, httpClient
from .twistd import runTwistd


class PluginTests(TestCase):
    def test_discovered(self) -> None:
        """
        twistd finds the mxrecv plugin, pointing at mxrecv.tap.
        """
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("mxrecv", makers)
        self.assertEqual(makers["mxrecv"].module, "mxrecv.tap")

    def test_badConfigIsUsageError(self) -> None:
        path = Path(self.mktemp())
        path.write_text('[server]\nlisten = "tcp:8080"\n')
        e = self.assertRaises(UsageError, Options().parseOptions, ["--config", str(path)])
        self.assertIn("server.listen", str(e))

    @inlineCallbacks
    def test_twistdRunsExample(self):
        """
        twistd mxrecv with a configuration file takes a callback into its
        spool, and stops cleanly on SIGTERM.
        """
        base = Path(self.mktemp()).absolute()
        base.mkdir()
        config = base / "mxrecv.toml"
        config.write_text(
            '[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\nallow = ["127.0.0.0/8"]\n'
            f'[spool]\ndir = "{base / "spool"}"\n'
        )
        twistd = runTwistd(self, "--config", str(config))
        port = yield twistd.listening
        response = yield httpClient(self).get(f"http://127.0.0.1:{port}/", params=SMS)
        self.assertEqual(response.code, 200)
        self.assertTrue((base / "spool" / "new" / "mx-1" / "message.json").is_file())
        twistd.process.signalProcess("TERM")
        ended = yield twistd.ended
        # twistd ends with the signal that stopped it, once it has shut down.
        self.assertEqual(
            (ended.exitCode, ended.signal), (None, signal.SIGTERM), twistd.output.decode()
        )
        self.assertIn(b"Server Shut Down.", twistd.output)

    @inlineCallbacks
    def test_twistdWarnsAtStartUp(self):
        """
        What check-config warns about, start-up logs too: a password file
        other users can read, a RetrieveMMS password sent in clear.
        """
        base = Path(self.mktemp()).absolute()
        base.mkdir()
        (base / "password").write_text("s3cret\n")
        (base / "password").chmod(0o644)
        config = base / "mxrecv.toml"
        config.write_text(
            '[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\nallow = ["127.0.0.0/8"]\n'
            f'[spool]\ndir = "{base / "spool"}"\n'
            '[retrieve]\nuser = "acme"\npassword_file = "password"\n'
            'url = "http://127.0.0.1:9/RetrieveMMS"\n'
        )
        twistd = runTwistd(self, "--config", str(config))
        yield twistd.listening
        output = twistd.output.decode()
        self.assertIn(
            f"Configuration: retrieve.password_file: {base / 'password'} is readable by "
            "other users (mode 0644): chmod o-rwx it",
            output,
        )
        self.assertIn("Configuration: retrieve.url: a plain http:// URL sends", output)
        self.assertNotIn("s3cret", output)

    @inlineCallbacks
    def test_twistdRefusesBadConfig(self):
        """
        A bad key stops start-up with a non-zero exit and names the key.
        """
        config = Path(self.mktemp())
        config.write_text("[spool]\ndedupe_dayz = 7\n")
        twistd = runTwistd(self, "--config", str(config))
        twistd.listening.addErrback(lambda f: None)
        ended = yield twistd.ended
        self.assertEqual(ended.exitCode, 1)
        self.assertIn(b"spool.dedupe_dayz: unknown key", twistd.output)


class PackagingTests(TestCase):
    def test_pluginInstalled(self) -> None:
        """
        An installed mxrecv (pip install ., not only a checkout) ships the
        plugin file and no twisted/__init__.py or twisted/plugins/__init__.py,
        which would break Twisted itself.
        """
        from importlib.metadata import PackageNotFoundError, files

        try:
            installed = {str(f) for f in files("mxrecv") or ()}
        except PackageNotFoundError:
            raise SkipTest("mxrecv is not installed; running from a checkout")
        self.assertIn("twisted/plugins/mxrecv_plugin.py", installed)
        self.assertNotIn("twisted/__init__.py", installed)
        self.assertNotIn("twisted/plugins/__init__.py", installed)

    def test_everyModuleInstalled(self) -> None:
        """
        A regular install (pip install ., as the README's commands do) ships
        every module and template of the checkout: the tests themselves
        import mxrecv from the checkout, so a subpackage left out of
        setup.cfg would otherwise only show when twistd starts.
        """
        from importlib.metadata import PackageNotFoundError, files

        try:
            installed = {str(f) for f in files("mxrecv") or ()}
        except PackageNotFoundError:
            raise SkipTest("mxrecv is not installed; running from a checkout")
        if "mxrecv/__init__.py" not in installed:
            raise SkipTest("mxrecv is installed in editable mode: its files are the checkout")
        checkout = Path(__file__).parent.parent
        shipped = {
            str(path.relative_to(checkout))
            for pattern in ("mxrecv/**/*.py", "mxrecv/**/templates/*")
            for path in checkout.glob(pattern)
        }
        self.assertEqual(sorted(shipped - installed), [])


class OrderedServiceTests(TestCase):
    def test_stopsInReverseOrderWaiting(self) -> None:
        """
        Children stop last-first, each only after the previous one finished.
        """
        events = []
        gate: Deferred[None] = Deferred()

        class Child(Service):
            def __init__(self, name, result=None):
                self.name = name
                self.result = result

            def stopService(self):
                events.append(self.name)
                return self.result

        parent = OrderedService()
        Child("pool").setServiceParent(parent)
        Child("spool", gate).setServiceParent(parent)
        Child("listener").setServiceParent(parent)
        parent.startService()
        stopped = parent.stopService()
        self.assertEqual(events, ["listener", "spool"])
        self.assertNoResult(stopped)
        gate.callback(None)
        self.assertEqual(events, ["listener", "spool", "pool"])
        self.successResultOf(stopped)

    def test_oneAfterAnother(self):
        """
        Children stop last first, each once the one before it has stopped.
        """
        stopped = []
        holds = {}

        class Child(Service):
            def __init__(self, name):
                self.name = name

            def stopService(self):
                super().stopService()
                stopped.append(self.name)
                holds[self.name] = Deferred()
                return holds[self.name]

        parent = OrderedService()
        for name in ("first", "second", "third"):
            Child(name).setServiceParent(parent)
        parent.startService()
        done = parent.stopService()
        self.assertEqual(stopped, ["third"])
        holds["third"].callback(None)
        self.assertEqual(stopped, ["third", "second"])
        holds["second"].errback(RuntimeError("cannot stop"))
        self.assertEqual(stopped, ["third", "second", "first"])
        holds["first"].callback(None)
        self.successResultOf(done)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class LayersTests(TestCase):
    def test_stopOrderByLayer(self) -> None:
        """
        The service is composed in layers, stopped from the top: the edge
        (callback listeners, then the drain of the callbacks in flight,
        then the admin listeners, then the inbox they served), the MMS and
        delivery work (delivery, then the sweep of pending/, then retrieval,
        then the prune of the seen-id index), the spool, the thread pools.
        """
        base = Path(self.mktemp())
        config = Config(
            server=ServerConfig(listen=("tcp:0:interface=127.0.0.1",) * 2),
            spool=SpoolConfig(dir=base / "spool"),
            retrieve=RetrieveConfig(user="u", password="p"),
            admin=AdminConfig(listen=("tcp:0:interface=127.0.0.1",)),
            deliver=DeliverConfig(command=("true",)),
        )
        service = makeService({"settings": config}, MemoryReactorClock())
        self.addCleanup(service.spool.close)

        def stopOrder(collection) -> list:
            return list(reversed(list(collection)))

        self.assertEqual(
            [(layer.name, [type(s) for s in stopOrder(layer)]) for layer in stopOrder(service)],
            [
                ("edge", [Listener, Listener, DrainService, Listener, InboxService]),
                ("work", [DeliveryService, PendingService, RetrieveService, PruneService]),
                ("store", [SpoolService]),
                ("threads", [ThreadPoolService, ThreadPoolService]),
            ],
        )
        self.assertEqual(
            [s.pool.name for s in stopOrder(service.threads)], ["mxrecv-upload", "mxrecv-io"]
        )
        edge = stopOrder(service.edge)
        self.assertEqual(edge[:2], service.listeners[::-1])
        self.assertEqual(edge[3:4], service.adminListeners)
