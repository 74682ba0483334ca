"""Headless Chromium through Playwright, shared by the browser tests and the measurement.

Debian's ``chromium`` package is used as is (``executable_path``); Playwright's own browser
download is never needed. Both are optional: ``pip install vae-deploy[web]`` and
``apt-get install chromium``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from vae_deploy.errors import VaeDeployError

CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")


class BrowserError(VaeDeployError, RuntimeError):
    """No usable Chromium or Playwright, or the page failed to load."""


def chromium_path() -> Path:
    """``$VAE_DEPLOY_CHROMIUM``, else ``chromium`` on PATH (Debian: apt-get install chromium)."""
    found = os.environ.get("VAE_DEPLOY_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found or not Path(found).is_file():
        raise BrowserError("no Chromium found: expected `chromium` on PATH (Debian: apt-get install chromium) "
                           "or VAE_DEPLOY_CHROMIUM=/path/to/chromium")
    return Path(found)


def sync_playwright() -> Any:
    """Playwright's sync entry point, or a BrowserError that says how to install it."""
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        raise BrowserError("Playwright is not installed: pip install 'vae-deploy[web]' (never `playwright install`: "
                           "the system chromium is used)") from None
    return start()


def launch(playwright: Any) -> Any:
    """A headless Chromium browser from a started ``sync_playwright()``."""
    return playwright.chromium.launch(executable_path=str(chromium_path()), args=list(CHROMIUM_ARGS))


def open_page(browser: Any, url: str, *, timeout_s: float = 120) -> Any:
    """A fresh context and page at ``url``, once the page is ready or shows its error."""
    context = browser.new_context(viewport={"width": 1100, "height": 1400}, device_scale_factor=1)
    page = context.new_page()
    page.goto(url)
    page.wait_for_function("document.body.dataset.state !== 'loading'", timeout=timeout_s * 1000)
    return page
