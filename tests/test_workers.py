"""
Several worker processes (C{[server] workers}): the pure parts in memory.
"""

from unittest import mock

from twisted.trial.unittest import SynchronousTestCase

from mxrecv.config import ConfigError, availableCores, parseConfig


class WorkersConfigTests(SynchronousTestCase):
    def test_default(self) -> None:
        """
        One process unless configured: the server as it always was.
        """
        self.assertEqual(parseConfig({}).server.workers, 1)

    def test_number(self) -> None:
        self.assertEqual(parseConfig({"server": {"workers": 3}}).server.workers, 3)

    def test_auto(self) -> None:
        """
        C{"auto"} is the number of cores this process may run on.
        """
        with mock.patch("os.sched_getaffinity", return_value={0, 2, 5}):
            self.assertEqual(availableCores(), 3)
            self.assertEqual(parseConfig({"server": {"workers": "auto"}}).server.workers, 3)

    def test_bad(self) -> None:
        for value in (0, -1, True, "2", 1.5, "all"):
            e = self.assertRaises(ConfigError, parseConfig, {"server": {"workers": value}})
            self.assertIn("server.workers", str(e))
