import re
from pathlib import Path

import pytest

# Debian's Chromium (apt-get install chromium): Playwright cannot download a
# browser of its own here.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Screenshots and downloads of the runs, kept for people to look at (gitignored).
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# The screenshots the documentation shows (docs/operator-guide.md): written by every run, committed.
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "img" / "admin"
# A time as the admin shows it: "2026-12-02 07:52:11.936000 UTC" (claims) or "Dec. 2, 2026, 7:52 a.m." (Django's).
ADMIN_TIMES = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d|[A-Z][a-z]+\.? \d{1,2}, \d{4}, \d")
# A claim's code as the admin shows it (XXXX-XXXX-XXXX-XXXX): random, so masked like the times.
CLAIM_CODES = re.compile(r"^[0-9A-HJKMNP-TV-Z]{4}(?:-[0-9A-HJKMNP-TV-Z]{4}){3}$")
MASK_COLOR = "#d9d9d9"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "headless": True, "args": CHROMIUM_FLAGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1280, "height": 800}}


@pytest.fixture
def artifacts():
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def screenshot(artifacts):
    """Take a screenshot into the artifacts; `docs_name`: also the one the documentation shows under that name."""

    def take(page, name, docs_name=None, **options):
        page.screenshot(path=artifacts / name, **options)
        if docs_name:
            # Times and codes change on every run: masked, so that a run changes the committed picture only
            # when the admin itself changes.
            DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            varying = [page.get_by_text(ADMIN_TIMES), page.get_by_text(CLAIM_CODES)]
            page.screenshot(path=DOCS_SCREENSHOTS / docs_name, mask=varying, mask_color=MASK_COLOR, **options)

    return take


@pytest.fixture(scope="session", autouse=True)
def _database_calls_beside_the_browser(django_db_setup):
    """Let the tests' own database calls run in the thread where Playwright runs.

    Playwright's sync API keeps an asyncio loop in the test's thread, and
    Django refuses database calls from a thread with a running loop. The
    test's calls (its setup and checks, the flush after it, dropping the
    test database) are plain synchronous ones; the live server answers on
    threads of its own. Session-wide, because the database is dropped last.
    """
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        yield
