"""The service as deployed — `python -m couponsite.serve`, as `make run` starts it — in a process group of its own."""

import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from tests.faults.cluster import children
from tests.helpers import ROOT, free_port

# The server's entry point (couponsite/serve.py), after the Python that runs it: `make run`'s.
SERVE = ["-m", "couponsite.serve"]
# Only these reach the service from the tests' environment: every setting
# comes from the test itself, never from whoever runs it.
INHERITED_VARIABLES = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"}
BOOT_TIMEOUT_SECONDS = 60


@dataclass
class Reply:
    """One HTTP exchange: `status` is None when no answer came at all (`error` says why)."""

    status: int | None
    seconds: float
    headers: dict = field(default_factory=dict)
    body: object = None
    error: str | None = None

    @property
    def is_json(self):
        return self.headers.get("content-type") == "application/json"


def request(host, port, method, path, body=None, timeout=30, headers=None):
    """One HTTP exchange on a fresh connection, as a Reply (status None when no answer came)."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    started = time.monotonic()
    try:
        headers = {**({"Content-Type": "application/json"} if body is not None else {}), **(headers or {})}
        connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = connection.getresponse()
        raw = response.read()
    except (OSError, http.client.HTTPException) as exc:
        return Reply(None, time.monotonic() - started, error=f"{type(exc).__name__}: {exc}")
    finally:
        connection.close()
    reply = Reply(response.status, time.monotonic() - started, {k.lower(): v for k, v in response.getheaders()})
    reply.body = json.loads(raw) if reply.is_json else raw.decode(errors="replace")
    return reply


class Service:
    """The web server (granian) serving couponsite.wsgi, configured by `environment` only.

    By default on a free port of 127.0.0.1. The cluster tests run app hosts
    in network namespaces: `launcher` prefixes the command (`ip netns exec
    NAME`), and `host` and `port` are where the service listens there.
    """

    def __init__(self, database_url, *, launcher=(), host="127.0.0.1", port=None, **environment):
        self.launcher = list(launcher)
        self.host = host
        self.port = port
        self.environment = {
            **{name: value for name, value in os.environ.items() if name in INHERITED_VARIABLES},
            "DJANGO_SETTINGS_MODULE": "couponsite.settings",
            "DATABASE_URL": database_url,
            "DEBUG": "0",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "WEB_CONCURRENCY": "3",
            "LOG_LEVEL": "WARNING",
            **environment,
        }
        self.process = None
        # Unless the test gives one, a metrics directory of the Service's, not the server's own: a server that a
        # test SIGKILLs cannot remove its own.
        self.own_metrics, self.metrics = "PROMETHEUS_MULTIPROC_DIR" not in environment, None

    def __enter__(self):
        self.port = self.port or free_port()
        self.environment["WEB_BIND"] = f"{self.host}:{self.port}"
        if self.own_metrics and self.metrics is None:
            self.metrics = tempfile.TemporaryDirectory(prefix="couponsite-test-metrics-")
            self.environment["PROMETHEUS_MULTIPROC_DIR"] = self.metrics.name
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [*self.launcher, *self.command()],
            cwd=ROOT,
            env=self.environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_until_serving()
        except BaseException:
            self.__exit__()
            raise
        return self

    def command(self):
        """What runs the service (after the launcher): the web server, as the Procfile's `web:` line starts it."""
        return [sys.executable, *SERVE]

    def _wait_until_serving(self):
        deadline = time.monotonic() + BOOT_TIMEOUT_SECONDS
        while self.request("GET", "/health", timeout=5).status is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{self.output()}")
            time.sleep(0.2)

    def __exit__(self, *exc_info):
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=30)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            self.process = None
        if self.metrics is not None:
            self.metrics.cleanup()
            self.metrics = None

    def kill(self):
        """SIGKILL the master and every worker at once, as when the host dies; returns once all are gone."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def output(self):
        """What the server and the application logged so far."""
        self.log.seek(0)
        return self.log.read()

    @property
    def master_pid(self):
        return self.process.pid

    def workers(self):
        return set(children(self.process.pid))

    def request(self, method, path, body=None, timeout=30, headers=None):
        return request(self.host, self.port, method, path, body, timeout, headers)

    def claim_groups(self):
        """(claim transactions, claims in them) so far, all workers added up, from /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        metrics = self.request("GET", "/metrics")
        samples = {s.name: s.value for f in text_string_to_metric_families(metrics.body) for s in f.samples}
        return samples["coupon_claim_group_size_count"], samples["coupon_claim_group_size_sum"]

    def claim(self, user_id, coupon_name, timeout=30, idempotency_key=None):
        body = {"user_id": user_id, "coupon_name": coupon_name}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        return self.request("POST", "/api/coupons/claim", body, timeout, headers)
