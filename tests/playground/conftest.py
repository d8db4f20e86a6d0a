"""A real headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by selenium.

Without them the browser tests skip on a workstation, and fail on CI (``CI`` set), where
``.ci/run`` installs them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")
INSTALL = "apt-get install chromium chromium-driver; pip install selenium (the dev extra)"


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return f"selenium is not installed ({INSTALL})"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (path.is_file() and os.access(path, os.X_OK)):
            return f"{path} is missing ({INSTALL})"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator:
    problem = missing_browser()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the playground's browser tests need Chromium on CI: {problem}")
        pytest.skip(problem)
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--window-size=1200,1900",
        "--force-device-scale-factor=1",
        "--lang=en-US",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


KEY = "playground-test-key"


@pytest.fixture(scope="session")
def playground_server(tmp_path_factory):
    """An open server that knows its device's hourly price (so the page shows a cost)."""
    from tests.conftest import start_server, stop_server

    server = start_server(tmp_path_factory.mktemp("playground"), "--gpu-hourly-usd", "2.4")
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory):
    """A server whose inference routes need ``Authorization: Key <KEY>``."""
    from tests.conftest import start_server, stop_server

    directory = tmp_path_factory.mktemp("playground-keys")
    keys = directory / "keys"
    keys.write_text(f"# test key\n{KEY}\n")
    server = start_server(directory, "--keys-file", str(keys))
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def busy_server(tmp_path_factory):
    """One job at a time and one waiting; small tiles, so progress comes tile by tile."""
    from tests.conftest import start_server, stop_server

    server = start_server(
        tmp_path_factory.mktemp("playground-busy"),
        "--max-inflight",
        "1",
        "--max-waiting",
        "1",
        "--tile-size",
        "32",
    )
    yield server
    stop_server(server)
