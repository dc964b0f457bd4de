"""The console's browser tests: Debian's chromium driven by Playwright, against a real stack (API, worker,
webhook sender) on real Redis and SQL, reviewing real generated text and images.

Where the browser cannot be had, the tests are skipped with a loud reason; with GENQUEUE_REQUIRE_BROWSER=1
(CI sets it in .ci/run) that skip is turned into a failure, so a CI run never passes without them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from genqueue.client import Client
from genqueue.db.session import Database, upgrade
from genqueue.enums import Role
from genqueue.settings import Settings
from genqueue.stack import Stack, free_port
from genqueue_api.auth import create_key

BROWSER_SKIP = "CONSOLE BROWSER TESTS NOT RUN"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Words the demo model writes often: the real pre-screen then flags some real outputs, as in production.
BLOCKLIST = "little,moon,tree,garden"


def _chromium() -> str | None:
    """GENQUEUE_CHROMIUM when set (and then only it), else Debian's chromium."""
    forced = os.environ.get("GENQUEUE_CHROMIUM")
    for candidate in [forced] if forced else [shutil.which("chromium"), "/usr/bin/chromium"]:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("GENQUEUE_REQUIRE_BROWSER") == "1" and BROWSER_SKIP in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"{report.longrepr}\nGENQUEUE_REQUIRE_BROWSER=1: the browser tests must run here."


def pytest_terminal_summary(terminalreporter: Any) -> None:
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if BROWSER_SKIP in str(r.longrepr)]
    if skipped:
        terminalreporter.write_sep("!", f"{BROWSER_SKIP}: {len(skipped)} skipped", red=True, bold=True)
        terminalreporter.write_line(str(skipped[0].longrepr), red=True)
        terminalreporter.write_line("Install Debian's chromium (`make browser`, as root) to run them.", red=True)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Debian chromium under Playwright, shared by the module's tests. Module scope, not session:
    Playwright's sync API keeps an event loop running in this thread until it stops, and tests elsewhere
    that call asyncio.run() fail while one runs."""
    path = _chromium()
    if path is None:
        pytest.skip(f"{BROWSER_SKIP}: no chromium executable (install Debian's `chromium`: `make browser`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        pytest.skip(f"{BROWSER_SKIP}: the playwright package is missing ({e}); `make venv` installs it")
    pw = sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
    except Exception as e:
        pw.stop()
        pytest.skip(f"{BROWSER_SKIP}: {path} does not start under Playwright: {e}")
    yield browser
    browser.close()
    pw.stop()


@dataclass
class ConsoleStack:
    stack: Stack
    db: Database
    keys: dict[str, str]  # name -> secret: client, alice (moderator), root (admin)
    key_ids: dict[str, str]
    client: Client
    admin: Client

    @property
    def url(self) -> str:
        return self.stack.base_url


@pytest.fixture(scope="module")
def console_stack(redis_url_factory: Any, models_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                  chromium: Any) -> Iterator[ConsoleStack]:
    """A real stack of its own (SQLite, a worker, the webhook sender) with a client, a moderator and an
    admin key. It starts after the browser, so that a missing browser skips before any process starts."""
    data = tmp_path_factory.mktemp("console")
    settings = Settings(data_dir=data, database_url=f"sqlite:///{data / 'gq.db'}", redis_url=redis_url_factory(),
                        models_dir=models_dir)
    upgrade(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url)
    keys, ids = {}, {}
    with db.session() as s:
        for name, role in (("client", Role.client), ("alice", Role.moderator), ("root", Role.admin)):
            k, keys[name] = create_key(s, name, role)
            ids[name] = k.id
    stack = Stack(settings, port=free_port(),
                  extra_env={"GENQUEUE_WORKER_METRICS_PORT": str(free_port()), "GENQUEUE_BLOCKLIST": BLOCKLIST,
                             "GENQUEUE_REVIEW_AUTO_POLICY": "all"}).start(timeout=180)
    client = Client(stack.base_url, keys["client"], timeout=90)
    admin = Client(stack.base_url, keys["root"], timeout=90)
    try:
        yield ConsoleStack(stack, db, keys, ids, client, admin)
    finally:
        client.close()
        admin.close()
        stack.stop()
        db.dispose()
        redis_url_factory.release(str(settings.redis_url))
