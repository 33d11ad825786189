"""Browser tests: a real `opsgate serve` process per test, driven by headless Chromium.

The suite needs the `playwright` Python package (a dev dependency) and a Chromium executable:
Debian's (`apt-get install -y chromium`, found at /usr/bin/chromium) or any other named by
OPSGATE_CHROMIUM=/path/to/chromium. Playwright's own browser downloads are never used. Without
either, every browser test is skipped with a message saying so, unless
OPSGATE_REQUIRE_BROWSER=1 (CI), where that is a failure, as is a run in which no browser test
passed.

Each test gets its own database (the `test_db` fixture, so SQLite and PostgreSQL), its own server
process on it, and fresh browser contexts (cookie jars). On teardown a full-page screenshot of
every page the test opened, plus any checkpoint taken with `shots.take(page)` on the way, is
written to test-output/screenshots/<test>-<n>.png for a person to look at.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from opsgate.core.identity import passwords
from opsgate.core.identity.users import find_user
from opsgate.db.engine import Database
from tests.conftest import TestDatabase
from tests.servers import Server, start_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Playwright

REQUIRE_BROWSER = os.environ.get("OPSGATE_REQUIRE_BROWSER") == "1"
HOW_TO_ENABLE = (
    "install Debian's Chromium (`apt-get install -y chromium`) or set "
    "OPSGATE_CHROMIUM=/path/to/chromium, and the dev dependencies (`make install`, which "
    "brings the `playwright` package) to run the browser tests"
)
# Chromium as this machine's rules want it: headless, no sandbox (we run as root), no GPU and
# no traffic of its own. The host resolver rule is a safety net: nothing but localhost,
# 127.0.0.1 and 127.0.0.2 (the cross-site test's other origin) resolves, so a stray absolute
# URL in a page fails instead of leaving the machine.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1, "
    "EXCLUDE 127.0.0.2",
]
# The demo users who sign in to the console in these tests (alice: support agent, rita: risk
# reviewer), and their password.
SIGNS_IN = ("alice", "rita")
PASSWORD = "Chromium drives the console 2026"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
VIEWPORT = {"width": 1280, "height": 800}


def chromium_executable() -> str | None:
    """OPSGATE_CHROMIUM when set (it must exist), else Debian's chromium on PATH."""
    named = os.environ.get("OPSGATE_CHROMIUM")
    if named:
        return named if os.access(named, os.X_OK) else None
    for candidate in ("chromium", "chromium-browser"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def _reason_unavailable() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"the `playwright` Python package is not installed: {HOW_TO_ENABLE}"
    named = os.environ.get("OPSGATE_CHROMIUM")
    if chromium_executable() is None:
        where = f"OPSGATE_CHROMIUM={named} is not executable" if named else "no chromium found"
        return f"{where}: {HOW_TO_ENABLE}"
    return None


_UNAVAILABLE = _reason_unavailable()
_browser_passed = 0
_browser_collected = 0


def pytest_report_header() -> str:
    state = "required" if REQUIRE_BROWSER else "optional"
    return f"opsgate: browser {state}: {_UNAVAILABLE or chromium_executable()}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    global _browser_collected
    _browser_collected = sum(1 for item in items if item.get_closest_marker("browser"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    global _browser_passed
    if report.when == "call" and report.passed and "tests/browser/" in report.nodeid:
        _browser_passed += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if REQUIRE_BROWSER and _browser_collected and _browser_passed == 0:
        session.config.get_terminal_writer().line(
            "OPSGATE_REQUIRE_BROWSER=1 but no browser test passed", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# Package scope: the driver and Chromium end with the last browser test, before the rest of
# the suite runs.
@pytest.fixture(scope="package")
def playwright_driver() -> Iterator[Playwright]:
    if _UNAVAILABLE:
        if REQUIRE_BROWSER:
            pytest.fail(f"OPSGATE_REQUIRE_BROWSER=1: {_UNAVAILABLE}")
        pytest.skip(_UNAVAILABLE)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    """One headless Chromium for the run.

    Playwright starts it on a fresh temporary user-data-dir (deleted on close); every test
    gets its own contexts, so no cookie or storage crosses tests.
    """
    launched = playwright_driver.chromium.launch(
        executable_path=chromium_executable(), headless=True, args=CHROMIUM_ARGS
    )
    yield launched
    launched.close()


def give_passwords(url: str, usernames: tuple[str, ...], now: datetime) -> None:
    """These demo users sign in with PASSWORD, set by the function behind `opsgate users
    set-password`. Only the ones the tests sign in as: each Argon2 hash takes a while."""
    db = Database(url)
    try:
        with db.writing() as session:
            for username in usernames:
                user = find_user(session, username)
                assert user is not None, username
                passwords.set_password(session, user, PASSWORD, now=now)
            session.commit()
    finally:
        db.dispose()


@pytest.fixture
def console(test_db: TestDatabase, tmp_path: Path) -> Iterator[Server]:
    """A real `opsgate serve` process on this test's database, its demo users with passwords.

    The signing key is the test's own, so no development key file is left in the work tree.
    """
    give_passwords(test_db.url, SIGNS_IN, datetime.now(UTC))
    server = start_server(
        test_db.url,
        tmp_path / "server.log",
        OPSGATE_SECRET_KEY=secrets.token_urlsafe(48),
        OPSGATE_SECRET_KEY_FILE=str(tmp_path / "secret-key"),
    )
    yield server
    server.stop()


def _shot_prefix(node: pytest.Item) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", node.name).strip("-")


@dataclass
class Shots:
    """Full-page screenshots of a test, numbered in the order taken."""

    prefix: str
    taken: list[tuple[str, bytes]] = field(default_factory=list)

    def take(self, page: Page, label: str = "") -> None:
        """A checkpoint of what the page shows now (written to disk on teardown)."""
        page.wait_for_load_state()
        self.taken.append((label, page.screenshot(full_page=True)))

    def write(self) -> list[Path]:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for stale in SCREENSHOTS.glob(f"{self.prefix}-*.png"):
            stale.unlink()
        paths = []
        for n, (label, png) in enumerate(self.taken, start=1):
            suffix = f"-{re.sub(r'[^A-Za-z0-9_.-]+', '-', label)}" if label else ""
            path = SCREENSHOTS / f"{self.prefix}-{n}{suffix}.png"
            path.write_bytes(png)
            paths.append(path)
        return paths


@dataclass
class BrowserSession:
    """Browser contexts opened for one test; `new_page()` gives a page with its own cookies."""

    browser: Browser
    base_url: str
    shots: Shots
    contexts: list[BrowserContext] = field(default_factory=list)
    pages: list[Page] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def new_page(self, *, javascript: bool = True) -> Page:
        """A page in a new context: another person's browser, or one with scripts off."""
        context = self.browser.new_context(
            base_url=self.base_url,
            viewport=VIEWPORT,
            locale="en-GB",
            java_script_enabled=javascript,
        )
        context.set_default_timeout(10_000)
        self.contexts.append(context)
        page = context.new_page()
        self.watch(page)
        return page

    def watch(self, page: Page) -> None:
        """Record every dialog and uncaught script error of a page. A confirmation is
        accepted, as the person at the keyboard would; anything else is dismissed."""
        self.pages.append(page)

        def on_dialog(dialog: Any) -> None:
            self.dialogs.append(f"{dialog.type}: {dialog.message}")
            if dialog.type == "confirm":
                dialog.accept()
            else:
                dialog.dismiss()

        page.on("dialog", on_dialog)
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: {exc}"))

    def close(self) -> None:
        open_pages = [page for page in self.pages if not page.is_closed()]
        for n, page in enumerate(open_pages, start=1):
            try:
                self.shots.take(page, "end" if len(open_pages) == 1 else f"end-page{n}")
            except Exception as exc:  # a screenshot must not hide the test's own result
                print(f"screenshot of {page.url} failed: {exc}")  # noqa: T201
        for context in self.contexts:
            context.close()


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Iterator[Shots]:
    taken = Shots(_shot_prefix(request.node))
    yield taken
    taken.write()


@pytest.fixture
def browser_session(browser: Browser, console: Server, shots: Shots) -> Iterator[BrowserSession]:
    session = BrowserSession(browser, console.base_url, shots)
    yield session
    session.close()
    assert not session.errors, f"uncaught script errors in the console: {session.errors}"


@pytest.fixture
def page(browser_session: BrowserSession) -> Page:
    """A page in a fresh context whose relative URLs go to this test's server."""
    return browser_session.new_page()


@pytest.fixture
def new_page(browser_session: BrowserSession) -> Callable[..., Page]:
    """Another page in its own context (another person's browser); `javascript=False` for
    a browser with scripts off."""
    return browser_session.new_page


@dataclass
class OtherSite:
    """A second web server on another origin (127.0.0.2): an attacker's page, for CSRF tests."""

    base_url: str
    pages: dict[str, str] = field(default_factory=dict)

    def serve(self, path: str, html: str) -> str:
        self.pages[path] = html
        return f"{self.base_url}{path}"


def _other_site_handler(site: OtherSite) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            html = site.pages.get(self.path)
            body = (html or "not found").encode()
            self.send_response(200 if html is not None else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def other_site() -> Iterator[OtherSite]:
    server = ThreadingHTTPServer(("127.0.0.2", 0), BaseHTTPRequestHandler)
    site = OtherSite(f"http://127.0.0.2:{server.server_address[1]}")
    server.RequestHandlerClass = _other_site_handler(site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield site
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
