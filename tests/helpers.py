"""Helpers shared by the test modules."""

import contextlib
import io
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import structlog
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def structlog_events():
    """The structlog events logged while the block runs, at every level (a list, filled as they come), each with
    what its line carries: its fields, the request's bound context (request_id, claim, api_key), `logger`, and
    `log_level`."""
    processors = [structlog.contextvars.merge_contextvars, structlog.stdlib.add_logger_name]
    with _structlog_level(logging.DEBUG), structlog.testing.capture_logs(processors) as events:
        yield events


@contextlib.contextmanager
def service_log_lines():
    """Every line the service writes while the block runs, at every level, as written: its one handler's output
    (structlog's lines and standard logging's records), in a StringIO."""
    root = logging.getLogger()
    handler = root.handlers[0]  # the service's own, as configured by LOGGING
    output, level = io.StringIO(), root.level
    stream = handler.setStream(output)
    root.setLevel(logging.DEBUG)
    try:
        with _structlog_level(logging.DEBUG):
            yield output
    finally:
        root.setLevel(level)
        handler.setStream(stream)


@contextlib.contextmanager
def _structlog_level(level):
    # tests/settings.py configures structlog's loggers uncached: they follow this.
    wrapper_class = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
    try:
        yield
    finally:
        structlog.configure(wrapper_class=wrapper_class)


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def manage(*args, **environment):
    """Run manage.py in a fresh process on the project's own settings, with DEBUG and SECRET_KEY unset.

    `environment` adds variables; a value of None removes one. The browser
    tests' DJANGO_ALLOW_ASYNC_UNSAFE (set for their whole pytest worker)
    never reaches the subprocess: deployments do not set it.
    """
    unset = {"DEBUG", "SECRET_KEY", "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env = {key: value for key, value in os.environ.items() if key not in unset}
    env.update(environment, DJANGO_SETTINGS_MODULE="couponsite.settings")
    env = {key: value for key, value in env.items() if value is not None}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


class JsonApiAssertions:
    """For Django test cases: send JSON to the API with the test client and check JSON errors."""

    def post_json(self, path, body, **extra):
        return self.post_raw(path, json.dumps(body).encode(), **extra)

    def post_raw(self, path, data, content_type="application/json", **extra):
        return self.client.post(path, data=data, content_type=content_type, **extra)

    def assert_error(self, response, status_code, code=None):
        """A JSON error body, {"error": message, "code": one of ErrorCode (`code`, when given)}; returns the message."""
        from coupons.api.error_codes import ErrorCode

        self.assertEqual(response.status_code, status_code, response.content)
        self.assertEqual(response["Content-Type"], "application/json")
        body = response.json()
        self.assertEqual(list(body), ["error", "code"])
        self.assertIsInstance(body["error"], str)
        self.assertTrue(body["error"])
        self.assertIn(body["code"], list(ErrorCode))
        if code is not None:
            self.assertEqual(body["code"], code)
        return body["error"]

    def get_coupon(self, name):
        return self.client.get("/api/coupons/" + quote(name, safe=""))


def subprocess_database_url():
    """The test database as a DATABASE_URL, for a server in another process."""
    database = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{database['NAME']}"
    credentials = quote(database["USER"] or "", safe="")
    if database["PASSWORD"]:
        credentials += ":" + quote(database["PASSWORD"], safe="")
    return f"postgres://{credentials}@{database['HOST'] or 'localhost'}:{database['PORT'] or 5432}/{database['NAME']}"
