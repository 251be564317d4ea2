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
