"""Schemathesis's own CLI, every check, against the served app: what a shop integrating from /api/schema/ runs.

`schemathesis run URL/api/schema/ -c all` with its positive, negative and
stateful phases, against granian serving the app (tests/faults/service.py),
with an API key holding every scope; schemathesis.toml (read from the
checkout) says where a documented business rule answers a request the schema
cannot tell apart, and why. The run is bounded: a fixed seed, a fixed number of
examples per operation (about a minute here). Run with `-o log_cli=true
--log-cli-level=INFO` to see Schemathesis's summary.
"""

import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from django.test import TransactionTestCase

from coupons.api_keys import create_api_key
from coupons.models import API_KEY_SCOPES
from tests.faults.service import Service
from tests.helpers import ROOT, subprocess_database_url

logger = logging.getLogger(__name__)

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
SEED = 26
EXAMPLES_PER_OPERATION = 40
MAX_RESPONSE_SECONDS = 5
TIMEOUT_SECONDS = 600
# The checks left out of `-c all`, and why. Nothing else is.
EXCLUDED_CHECKS = {
    # GET is served on /api/coupons/claim and /api/coupons/{name}/claims/{user_id} (it reads the coupon that
    # path names) and documented once, as GET /api/coupons/{name}: their Allow headers name a GET their own
    # paths' entries leave out. Schemathesis 4.32.5 applies a per-operation setting (schemathesis.toml) to
    # every check but this one, which it runs on OPTIONS probes outside any operation's configuration;
    # tests/test_schema.py makes the same comparison for every path instead.
    "allow_header_conformance",
}


def schemathesis_command(base_url, key):
    return [
        str(SCHEMATHESIS),
        "--no-color",
        "--config-file",
        str(ROOT / "schemathesis.toml"),
        "run",
        f"{base_url}/api/schema/",
        "--checks",
        "all",
        "--exclude-checks",
        ",".join(sorted(EXCLUDED_CHECKS)),
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--mode",
        "all",  # positive and negative
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        str(SEED),
        "--max-response-time",
        str(MAX_RESPONSE_SECONDS),
        "--generation-database",
        "none",  # nothing carried over from an earlier run: the seed alone decides
        "--header",
        f"Authorization: Api-Key {key}",
    ]


class SchemathesisServedTests(TransactionTestCase):
    def test_every_check_passes_against_the_served_app(self):
        _, key = create_api_key(name="schemathesis", scopes=set(API_KEY_SCOPES))
        # Schemathesis sends one request at a time: one worker of four threads serves it, and holds few of the
        # database server's connections (a PostgreSQL shared with other test runs refused one once: a 503).
        with Service(subprocess_database_url(), WEB_CONCURRENCY="1", WEB_THREADS="4") as service:
            started = time.monotonic()
            run = subprocess.run(
                schemathesis_command(f"http://127.0.0.1:{service.port}", key),
                # Not the checkout: Schemathesis keeps state between runs (.schemathesis/) in its directory, which
                # would replay an earlier run's failures; each run starts afresh, from the seed alone.
                cwd=self.enterContext(tempfile.TemporaryDirectory()),
                capture_output=True,
                text=True,
                timeout=TIMEOUT_SECONDS,
            )
            server_log = service.output()
        output = run.stdout + run.stderr
        summary = output[output.rfind("=== SUMMARY") :] if "=== SUMMARY" in output else output[-3000:]
        logger.info("schemathesis, %.0f s:\n%s", time.monotonic() - started, summary)
        self.assertEqual(
            run.returncode, 0, f"{output[-20000:]}\n--- server log (end):\n{server_log[-3000:]}".replace(key, "<key>")
        )
