"""Settings for test runs: the project's settings on the test database.

Used by pytest (pyproject.toml) and by `python manage.py test` (manage.py).
"""

import os

from tests.database import select_test_database

TEST_DATABASE_NOTICE = select_test_database()
# Printed once per run: the process that chose the backend, not its workers.
if "PYTEST_XDIST_WORKER" not in os.environ and "PYTEST_VERSION" not in os.environ:
    print(TEST_DATABASE_NOTICE)

from couponsite.settings import *  # noqa: E402, F403

# Password hashing is deliberately slow; tests log in staff users often.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
TEST_RUNNER = "tests.runner.CouponTestRunner"

# The service logs a line per request and per claim: a test run prints only
# warnings and errors (the tests of log lines capture them at their own level).
LOGGING = logging_config(renderer=LOG_FORMAT, level="WARNING")  # noqa: F405
# structlog's events too; loggers not cached, so that a test can lower the level while it captures
# (tests/helpers.py: structlog_events, service_log_lines).
configure_structlog(renderer=LOG_FORMAT, level="WARNING", cache=False)  # noqa: F405
