"""
The screenshots of the inbox in the README and docs/inbox.md, taken with
the browser tests' Chromium and selenium (L{tests.browser}) from a whole
mxrecv running on an example spool:

    PYTHONPATH=. .venv/bin/python -m tests.screenshots docs/images
"""

from __future__ import annotations

import ipaddress
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react
from twisted.internet.threads import deferToThread

from mxrecv.config import AdminConfig, Config, ServerConfig, SpoolConfig
from mxrecv.tap import Options, makeService
from mxrecv.testing.examples import mms, png, put, smil, sms
from mxrecv.testing.zips import zipOf

from .browser import Browser


def exampleSpool(root: Path) -> None:
    put(root, "cur", sms("41000001", "2026-11-25T08:12:40.201Z", "Running 10 min late, sorry!",
                         sender="447700900321"))
    put(root, "new", sms("41000002", "2026-11-25T09:02:11.734Z", "STOP", sender="447700900555"))
    put(root, "new", sms("41000003", "2026-11-25T09:40:03.015Z",
                         "Can I book a table for 4 tonight at 8?", sender="447700900777"))
    put(
        root,
        "new",
        mms("41000004", "2026-11-25T10:31:00.512Z", "Greetings from Brighton"),
        zipOf(
            [
                ("presentation.smil", smil(("img", "beach.png"), ("text", "note.txt"))),
                ("beach.png", png(480, 270, (42, 120, 196))),
                ("note.txt", "Sun's out at last. Wish you were here!".encode()),
            ]
        ),
    )
    put(
        root,
        "failed",
        mms("41000005", "2026-11-24T16:05:09.118Z", "Birthday video", sender="447700900999",
            delivery="get"),
        error="no zip from RetrieveMMS before the expiry (2026-11-25 16:05:09 UTC)",
        attempts=[
            {"at": "2026-11-24T16:05:10.001Z", "outcome": "HTTP 503"},
            {"at": "2026-11-24T16:05:20.310Z", "outcome": "timed out after 30 s"},
        ],
    )
    put(root, "pending", mms("41000006", "2026-11-25T10:33:45.900Z", "Menu", delivery="get"))


async def shoot(reactor: Any, out: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="mxrecv-screenshots-"))
    exampleSpool(work / "spool")
    loopback = (ipaddress.ip_network("127.0.0.0/8"),)
    options = Options()
    options["settings"] = Config(
        server=ServerConfig(listen=("tcp:0:interface=127.0.0.1",), allow=loopback),
        spool=SpoolConfig(dir=work / "spool"),
        admin=AdminConfig(listen=("tcp:0:interface=127.0.0.1",)),
    )
    service = makeService(options, reactor)
    service.startService()
    try:
        # A TCP listen is immediate: the port is there once started.
        admin = f"http://127.0.0.1:{service.adminListeners[0].port.getHost().port}"

        def browse() -> None:
            browser = Browser(width=1200, height=600)
            try:
                driver = browser.driver
                driver.get(admin + "/inbox")
                driver.save_screenshot(str(out / "inbox.png"))
                driver.set_window_size(1200, 900)
                driver.get(admin + "/inbox/new/41000004")
                driver.save_screenshot(str(out / "inbox-mms.png"))
            finally:
                browser.close()

        await deferToThread(browse)
    finally:
        await service.stopService()


def main(argv: list[str]) -> None:
    out = Path(argv[0] if argv else "docs/images")
    out.mkdir(parents=True, exist_ok=True)
    react(lambda reactor: ensureDeferred(shoot(reactor, out)))


if __name__ == "__main__":
    main(sys.argv[1:])
