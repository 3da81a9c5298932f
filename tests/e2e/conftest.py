"""Fixtures for the browser tests: one Streamlit server per session, Debian's chromium, a fresh page per test.

The server runs `streamlit run app.py` as a subprocess on a free port; its log, and the screenshots the tests save,
land in tests/e2e/screenshots/ (ignored by git, kept as CI artifacts). With PIMOE_UPDATE_SCREENSHOTS=1 the page
screenshots go to assets/screenshots/ instead, the ones the README shows.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = Path(__file__).resolve().parent / "screenshots"
PUBLISHED_DIR = REPO_ROOT / "assets" / "screenshots"
CHROMIUM_PATH = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
]
SERVER_START_TIMEOUT_S = 60.0
EXPECT_TIMEOUT_MS = 30_000  # first render on a cold 2-core machine imports torch


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _health_ok(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/_stcore/health", timeout=2) as response:
            return response.read().decode().strip() == "ok"
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where browser tests save screenshots (tests/e2e/screenshots/)."""
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS_DIR


@pytest.fixture(scope="session")
def screenshot_dir(artifacts_dir: Path) -> Path:
    """Where page screenshots go: assets/screenshots/ when PIMOE_UPDATE_SCREENSHOTS=1, else the artifacts folder."""
    if os.environ.get("PIMOE_UPDATE_SCREENSHOTS") == "1":
        PUBLISHED_DIR.mkdir(parents=True, exist_ok=True)
        return PUBLISHED_DIR
    return artifacts_dir


@pytest.fixture(scope="session")
def app_url() -> Iterator[str]:
    """Start `streamlit run app.py` headless on a free local port and yield its base URL."""
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS_DIR / "streamlit-server.log"
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
    command += ["--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none"]
    command += ["--browser.gatherUsageStats", "false"]
    with open(log_path, "wb") as log:
        # A new session makes the server its own process group, so teardown also stops anything it spawned.
        proc = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not _health_ok(base_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                reason = f"exited with {proc.returncode}" if proc.poll() is not None else "did not answer in time"
                pytest.fail(
                    f"Streamlit server {reason} ({base_url}/_stcore/health).\n"
                    f"--- {log_path} ---\n{log_path.read_text(errors='replace')}",
                    pytrace=False,
                )
            time.sleep(0.25)  # polling the health endpoint, not waiting on the UI
        yield base_url
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium driven by Playwright; missing chromium fails in CI and skips elsewhere."""
    if not os.access(CHROMIUM_PATH, os.X_OK):
        message = (
            f"{CHROMIUM_PATH} not found. Install Debian's chromium: "
            "apt-get update && apt-get install -y --no-install-recommends chromium (or run `make test` as root)."
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)

    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM_PATH, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


VIEWPORT = {"width": 1400, "height": 900}


@pytest.fixture
def new_page(browser, app_url):
    """Factory of pages, each in its own browser context: a separate Streamlit session, as for separate users."""
    contexts = []

    def make():
        context = browser.new_context(base_url=app_url, viewport=VIEWPORT)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page):
    """A page in a fresh browser context (no shared cookies or storage between tests)."""
    return new_page()

