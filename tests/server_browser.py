"""Headless Chromium (Debian ``chromium`` + ``chromium-driver``, driven by selenium) for frontend tests.

``scripts/provision_comfyui.py`` installs the two Debian packages when they are missing; selenium
comes from PyPI (test dependency). :func:`open_browser` starts Chromium with the flags a sandboxed CI
needs and returns a :class:`Browser` that keeps the console log.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from comfy_support import ENV_REQUIRE, _must_require

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "/usr/lib/chromium/chromium")
DRIVER_CANDIDATES = ("chromedriver", "/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver")
WINDOW = (1400, 900)

# Console errors the stock ComfyUI frontend 1.32.9 logs on every page load with no extension at all
# (checked on an empty page): files an offline test server does not have, the Comfy Registry lookups
# that the page's Content-Security-Policy blocks offline, and a frontend bug that writes an undefined
# setting (useRenderModeSetting → settingStore.set → onChange reading `.id` of undefined).
FRONTEND_BASELINE_ERRORS = (
    re.compile(r"/favicon\.ico - Failed to load resource"),
    re.compile(r"/(api/userdata/)?user\.css - Failed to load resource"),
    re.compile(r"/api/userdata(\?dir=|/comfy\.templates\.json).* - Failed to load resource"),
    re.compile(r"Connecting to 'https://api\.comfy\.org/[^']*' violates the following Content Security"),
    re.compile(r"TypeError: Cannot read properties of undefined \(reading 'id'\)\s+at onChange .*"
               r"\s+at Proxy\.set", re.S),
)


def _find(candidates: tuple[str, ...]) -> str | None:
    for name in candidates:
        path = shutil.which(name) or (name if Path(name).is_file() else None)
        if path:
            return path
    return None


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``, or fail when ``REHYAT_REQUIRE_COMFYUI=1`` (CI must not skip)."""
    if _must_require():
        pytest.fail(f"{ENV_REQUIRE} is set but {reason}")
    pytest.skip(reason)


@dataclass
class Browser:
    """A selenium Chrome driver plus every console entry seen so far."""

    driver: Any
    console: list[dict[str, Any]] = field(default_factory=list)

    def drain_console(self) -> list[dict[str, Any]]:
        """Read new console entries into :attr:`console`; return them."""
        entries = self.driver.get_log("browser")
        self.console.extend(entries)
        return entries

    def unexpected_errors(self) -> list[str]:
        """SEVERE console messages that are not in the frontend's own baseline."""
        self.drain_console()
        return [e["message"] for e in self.console if e["level"] == "SEVERE"
                and not any(p.search(e["message"]) for p in FRONTEND_BASELINE_ERRORS)]

    def js(self, script: str, *args: Any) -> Any:
        """Run ``script`` (an async function body is fine: top-level await) and return its value."""
        return self.driver.execute_script(script, *args)

    def wait_for(self, script: str, timeout: float = 60.0, what: str = "condition") -> Any:
        """Poll the JS expression ``script`` until it is truthy; return its value (keep it JSON-able)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.driver.execute_script(f"return ({script});")
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: {script}")
            time.sleep(0.25)

    def quit(self) -> None:
        self.driver.quit()


def open_browser() -> Browser:
    """Headless Chromium under chromedriver (skips, or fails in CI, when a part is missing)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        skip_or_fail("selenium is not installed (pip install selenium)")
    chromium, driver = _find(CHROMIUM_CANDIDATES), _find(DRIVER_CANDIDATES)
    if not chromium or not driver:
        skip_or_fail("Chromium/chromedriver missing: run python scripts/provision_comfyui.py as root "
                     "(apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="rehyat-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return Browser(webdriver.Chrome(service=Service(driver), options=options))
