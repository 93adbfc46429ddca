"""
What importing a module loads, in a fresh interpreter: the pure modules
load nothing of Twisted, and the command line does not load the server's
subsystems (treq, the HTTP edge, MMS retrieval).  The import-linter
contracts (C{.importlinter}) check the imports written in the code; this
checks what Python really loads, package C{__init__}s included.
"""

import json
import os
import subprocess
import sys

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
