"""Headless Chromium for the browser tests: Debian's ``chromium`` (installed by
``scripts/install-system-deps.sh``), never a downloaded browser. ``chromium()`` finds it
(failing with the install hint when it is missing); ``launch_browser`` drives it through
Playwright's ``executable_path``; ``PageWatch`` collects a page's console errors, failed
loads and uncaught exceptions so a test can assert there were none."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

INSTALL_HINT = "install it with scripts/install-system-deps.sh (apt-get install chromium chromium-driver)"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is None:
        pytest.fail(f"chromium is not installed: {INSTALL_HINT}")
    return found


def launch_browser(playwright: Any) -> Any:
    """A Playwright ``Browser`` on Debian's chromium."""
    return playwright.chromium.launch(
        executable_path=chromium(), headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
    )


@dataclass
class PageWatch:
    """What went wrong on a page: console errors, uncaught exceptions, a page asset that
    failed to load, any 5xx answer. Chromium's own "Failed to load resource" line for an
    API call refused with a 4xx is not one: the page shows those answers on purpose (a
    form's validation error); the response listener judges loads instead."""

    errors: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> Any:
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url} {r.failure}")
                if "/ui/" in r.url else None)
        page.on("response", self._response)
        return page

    def _console(self, message: Any) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(f"console.error: {message.text}")

    def _response(self, response: Any) -> None:
        if response.status >= 500 or ("/ui/" in response.url and response.status >= 400):
            self.errors.append(f"HTTP {response.status}: {response.request.method} {response.url}")
