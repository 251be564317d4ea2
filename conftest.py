import pytest
from django.conf import settings


def pytest_report_header(config):
    return settings.TEST_DATABASE_NOTICE


@pytest.fixture(autouse=True)
def _coupon_states_forgotten():
    """Each test starts with a process that knows no coupon (coupons/coupon_states.py): a test's coupons are
    rolled back or flushed after it, without the notifications a real change sends."""
    from coupons.coupon_states import coupon_states

    coupon_states.forget_all()


@pytest.fixture(scope="session", autouse=True)
def _coupon_states_listener_stopped(django_db_setup, django_db_blocker):
    """The listener's connection ends before the test database is dropped."""
    yield
    from coupons.coupon_states import coupon_states

    with django_db_blocker.unblock():
        coupon_states.stop_listening()


@pytest.fixture(autouse=True)
def _admission_caches_forgotten():
    """Each test starts without fair admission's per-process caches (admission/extension.py, selectors.py): a
    test case rolls its coupons back, and SQLite gives their ids to the next test's coupons."""
    from admission.extension import forget_caches

    forget_caches()
