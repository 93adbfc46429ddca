"""
What importing a module loads, in a fresh interpreter: the pure modules
load nothing of Twisted, and the command line does not load the server's
subsystems (treq, the HTTP edge, MMS retrieval).  The import-linter
contracts (C{.importlinter}) check the imports written in the code; this
checks what Python really loads, package C{__init__}s included.
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PURE = (
    "mxrecv.message.dates",
    "mxrecv.message.model",
    "mxrecv.message.params",
    "mxrecv.message.text",
    "mxrecv.spool.layout",
    "mxrecv.spool.naming",
    "mxrecv.mms.schedule",
    "mxrecv.deliver.outcome",
    "mxrecv.deliver.policy",
    "mxrecv.deliver.identity",
    "mxrecv.deliver.schedule",
    "mxrecv.workers.restart",
    "mxrecv.backoff",
)


def loadedBy(module: str) -> set[str]:
    """
    The modules that importing C{module} loads into a fresh interpreter.
    """
    script = (
        "import json, sys; before = set(sys.modules); import {0}; "
        "print(json.dumps(sorted(set(sys.modules) - before)))".format(module)
    )
    path = os.pathsep.join(os.path.abspath(p) for p in sys.path)
    output = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    return set(json.loads(output))


class ImportTests(SynchronousTestCase):
    def test_pureModules(self):
        """
        A pure module loads no Twisted, no zope.interface, and no mxrecv
        module but pure ones.
        """
        for module in PURE:
            loaded = loadedBy(module)
            self.assertEqual(
                {m for m in loaded if m.split(".")[0] in ("twisted", "zope", "treq", "OpenSSL")},
                set(),
                module,
            )
            ours = {m for m in loaded if m.startswith("mxrecv.")}
            packages = {
                "mxrecv.message", "mxrecv.spool", "mxrecv.mms", "mxrecv.deliver", "mxrecv.workers",
            }
            self.assertLessEqual(ours, set(PURE) | packages, module)

    def test_commandLine(self):
        """
        The C{mxrecv} command loads neither treq nor the MMS, web, delivery
        or TLS certificate code: it reads the spool through its layout (and
        delivery's records, and makes webhook secrets, with modules that
        need nothing more).
        """
        loaded = loadedBy("mxrecv.ops.cli")
        self.assertNotIn("treq", loaded)
        self.assertNotIn("twisted.internet.reactor", loaded)
        self.assertEqual(
            {
                m
                for m in loaded
                if m.startswith(("mxrecv.mms.", "mxrecv.web.", "mxrecv.deliver."))
                or m == "mxrecv.tls.certificate"
            },
            {"mxrecv.deliver.records", "mxrecv.deliver.signature"},
        )


def testModulesImported(source: str) -> set[str]:
    """
    The test modules (C{test_*}) that the Python C{source} imports, by
    their last dotted component.
    """
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [alias.name for alias in node.names if not node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        imported.update(
            name.rsplit(".", 1)[-1] for name in names if name.rsplit(".", 1)[-1].startswith("test_")
        )
    return imported


class TestModuleTests(SynchronousTestCase):
    """
    A test module imports no other test module: what tests share lives in
    the helpers of C{tests/} (C{support}, C{certificates}, ...) or in
    C{mxrecv.testing}, so that running or changing one module never runs or
    breaks another's tests.
    """

    def test_found(self):
        self.assertEqual(
            testModulesImported(
                "from .test_post import X\nfrom tests.test_tls import Y\n"
                "from . import test_spool\nimport tests.test_seen\nfrom .support import Z\n"
            ),
            {"test_post", "test_tls", "test_spool", "test_seen"},
        )

    def test_noneImported(self):
        here = Path(__file__).parent
        offenders = {
            path.name: sorted(imported)
            for path in sorted(here.glob("*.py"))
            if (imported := testModulesImported(path.read_text()))
        }
        self.assertEqual(offenders, {})
