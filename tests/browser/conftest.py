"""Browser tests: the console in a headless Chromium, driven by Playwright's sync API against
pytest-django's `live_server` (so with the transactional database: what a test creates is
committed, and the server's thread sees it).

The browser is Debian's `chromium` (scripts/setup installs it), never one Playwright downloads.
One browser serves the whole package; each test gets fresh contexts (cookies, storage) of it.

Fixtures and helpers, for tests of this package:

- `page`: a Page in a new context, its base URL the live server's, so `page.goto("/admin/")`.
- `new_page(**context_options)`: another Page in a context of its own, e.g.
  `new_page(java_script_enabled=False)` or `new_page(viewport={"width": 400, "height": 800})`.
- `staff_user`: a staff superuser in the database; its password is `PASSWORD`.
- `signed_in_page`: `page`, already signed in as `staff_user` through the real login form.
- `sign_in(page, username, password)`: fills in and sends /admin/login/, without waiting on
  where it lands (the caller asserts that).
- `shot(page, name)`: writes `var/browser-failures/<name>.png` (the full page) and `<name>.html`,
  returns the .png's path.

Wait on conditions, never sleep: Playwright's `expect(locator)` retries until its timeout
(`expect(page.locator("svg rect")).to_have_count(3)`), as do locator actions.

When a test fails (or its fixtures do), every page it opened through these fixtures is shot
to `var/browser-failures/<test name>.png` (and .html) before teardown; the report names the files.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright

FAILURES = Path(__file__).resolve().parents[2] / "var" / "browser-failures"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Short enough that a missing element fails the test in seconds, long enough for a cold page.
TIMEOUT_MS = 10_000
USERNAME = "boss"
PASSWORD = "pw-browser-boss"

# The pages a test opened, for the screenshot of its failure.
_PAGES = pytest.StashKey[list[Page]]()


def chromium_path() -> str:
    return shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    # The sync API keeps an event loop marked as running in this thread from start() to stop(),
    # so Django would take every ORM call of the tests for one made from async code. Nothing
    # here is async: the loop only runs while Playwright talks to the browser. Allowed for
    # this package only; stopped before the tests of other packages run.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        patch.setenv("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        with sync_playwright() as driver:
            yield driver


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    executable = chromium_path()
    if not os.access(executable, os.X_OK):
        pytest.fail(f"no Chromium at {executable}: run scripts/setup dev (it installs Debian's chromium)")
    browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
    yield browser
    browser.close()


@pytest.fixture
def new_page(
    browser: Browser, live_server: Any, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Page]]:
    contexts: list[BrowserContext] = []
    pages = request.node.stash.setdefault(_PAGES, [])

    def make(**context_options: Any) -> Page:
        context = browser.new_context(base_url=live_server.url, **context_options)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        pages.append(page)
        return page

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page: Callable[..., Page]) -> Page:
    return new_page()


@pytest.fixture
def staff_user(transactional_db: Any) -> User:
    return User.objects.create_superuser(USERNAME, email="boss@example.com", password=PASSWORD)


def sign_in(page: Page, username: str, password: str) -> None:
    page.goto("/admin/login/?next=/admin/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


@pytest.fixture
def signed_in_page(page: Page, staff_user: User) -> Page:
    sign_in(page, USERNAME, PASSWORD)
    expect(page).to_have_url(re.compile(r"/admin/$"))
    return page


def shot(page: Page, name: str) -> Path:
    FAILURES.mkdir(parents=True, exist_ok=True)
    path = FAILURES / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    page.screenshot(path=path, full_page=True)
    path.with_suffix(".html").write_text(page.content())
    return path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    pages = [page for page in item.stash.get(_PAGES, []) if not page.is_closed()]
    if report.failed and report.when in ("setup", "call") and pages:
        shots = []
        for number, page in enumerate(pages, start=1):
            name = item.name if number == 1 else f"{item.name}-{number}"
            try:
                shots.append(str(shot(page, name)))
            except Exception as exc:  # a crashed page must not hide the test's own failure
                shots.append(f"{name}: no screenshot ({exc})")
        report.sections.append(("browser failure", "\n".join(shots)))
    return report
