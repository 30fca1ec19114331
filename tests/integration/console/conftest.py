"""Fixtures of the console's browser tests: one Chromium per module, and ``open_console``,
which opens ``/ui`` on a server in a fresh page (credentials typed into the header's
fields, as an operator would), fails the test on any JavaScript console error, and saves
a screenshot under the test's tmp dir (and, with ``CORRAL_CONSOLE_SHOTS=DIR``, a copy
there: how docs/console/ is refreshed)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.browser import PageWatch, launch_browser

DESKTOP = {"width": 1280, "height": 800}
NARROW = {"width": 400, "height": 800}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_browser(playwright)
        yield browser
        browser.close()


@pytest.fixture
def open_console(browser: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    opened: list[tuple[Any, Any, PageWatch, str]] = []

    def open_page(url: str, admin_token: str | None = None, api_key: str | None = None, actor: str = "tester",
                  viewport: dict[str, int] = DESKTOP, panel: str = "overview", shot: str | None = None) -> Any:
        context = browser.new_context(viewport=viewport)
        watch = PageWatch()
        page = watch.attach(context.new_page())
        page.on("dialog", lambda dialog: dialog.accept())  # the confirmations of capacity drops
        page.goto(f"{url}/ui/#{panel}")
        if admin_token is not None:
            page.fill("#admin-token", admin_token)
            page.fill("#actor", actor)
            page.click("#save-token")
        if api_key is not None:
            page.fill("#api-key", api_key)
            page.dispatch_event("#api-key", "change")
        opened.append((context, page, watch, shot or request.node.name))
        return page

    yield open_page
    shots = os.environ.get("CORRAL_CONSOLE_SHOTS")
    for context, page, watch, name in opened:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        if shots:
            Path(shots).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(shots) / path.name)
        context.close()
        assert not watch.errors, f"JavaScript errors on the console page: {watch.errors}"
