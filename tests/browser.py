"""
Debian's Chromium driven by selenium through Debian's chromedriver, as the
inbox's browser tests and the docs' screenshots use it.

Selenium is blocking (it talks HTTP to chromedriver): the tests call it in
a thread while the reactor serves the pages.  Chromium runs headless with
the flags this closed network needs (no background connections, no
component updates: without them it tries to reach Google's hosts), in a
profile of its own that is removed with it.
"""

from __future__ import annotations

import os
import shutil
import tempfile

CHROMIUM = os.environ.get("MXRECV_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MXRECV_CHROMEDRIVER", "/usr/bin/chromedriver")

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-features=MediaRouter,OptimizationHints,Translate",
    "--metrics-recording-only",
    "--hide-scrollbars",
)


class Browser:
    """
    A headless Chromium and its chromedriver; L{close} ends both and
    removes the profile.

    @param resolve: host names that Chromium resolves to 127.0.0.1 itself,
        without DNS (as a name an attacker controls would, rebound).
    """

    def __init__(
        self, width: int = 1280, height: int = 900, resolve: tuple[str, ...] = ()
    ) -> None:
        # Never let selenium look for (or download) a driver of its own.
        os.environ["SE_OFFLINE"] = "true"
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="mxrecv-chromium-")
        options = Options()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        options.add_argument(f"--window-size={width},{height}")
        if resolve:
            rules = ", ".join(f"MAP {name} 127.0.0.1" for name in resolve)
            options.add_argument(f"--host-resolver-rules={rules}")
        try:
            self.driver = webdriver.Chrome(
                options=options, service=Service(executable_path=CHROMEDRIVER)
            )
        except BaseException:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)
