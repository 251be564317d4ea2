import pytest
from django.conf import settings


def pytest_report_header(config):
    return settings.TEST_DATABASE_NOTICE


@pytest.fixture(autouse=True)
def _admission_caches_forgotten():
    """Each test starts without fair admission's per-process caches (admission/extension.py, selectors.py): a
    test case rolls its coupons back, and SQLite gives their ids to the next test's coupons."""
    from admission.extension import forget_caches

    forget_caches()
