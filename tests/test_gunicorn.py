"""The real server: gunicorn with gunicorn.conf.py, several workers, against the test database.

Workers are recycled every few requests (--max-requests), so the requests of
one test are served by many worker processes in turn: /metrics must still
add them all up, and every line they log must be JSON.
"""

import json
import re
from pathlib import Path

from django.test import TransactionTestCase
from prometheus_client.parser import text_string_to_metric_families

from coupons.services import create_coupon
from tests.faults.service import Service
from tests.helpers import subprocess_database_url


class GunicornTests(TransactionTestCase):
    def test_metrics_and_logs_add_up_across_recycled_workers(self):
        create_coupon(name="GUNICORN", amount=3)
        claims = [  # (body, status, outcome)
            *[({"user_id": f"user_{i}", "coupon_name": "GUNICORN"}, 201, "success") for i in range(3)],
            *[({"user_id": f"user_{i}", "coupon_name": "GUNICORN"}, 400, "out_of_stock") for i in range(3, 5)],
            ({"user_id": "user_0", "coupon_name": "GUNICORN"}, 409, "already_claimed"),
            ({"user_id": "user_0", "coupon_name": "NOPE"}, 404, "not_found"),
            ({"user_id": "", "coupon_name": "GUNICORN"}, 400, "invalid"),
        ]

        service = Service(
            subprocess_database_url(),
            WEB_CONCURRENCY="2",
            GUNICORN_CMD_ARGS="--max-requests 2 --max-requests-jitter 0",
            DATABASE_CONN_MAX_AGE="0",
            LOG_FORMAT="json",
            LOG_LEVEL="INFO",
        )
        with service:
            for body, status, _ in claims:
                self.assertEqual(service.request("POST", "/api/coupons/claim", body).status, status, body)
            metrics = service.request("GET", "/metrics")
        lines = [json.loads(line) for line in service.output().splitlines()]  # every line is JSON

        self.assertEqual(metrics.status, 200)
        samples = [sample for family in text_string_to_metric_families(metrics.body) for sample in family.samples]
        outcomes = {s.labels["outcome"]: s.value for s in samples if s.name == "coupon_claims_total" and s.value}
        self.assertEqual(
            outcomes, {"success": 3, "out_of_stock": 2, "already_claimed": 1, "not_found": 1, "invalid": 1}
        )
        [claim_latency_count] = [
            s.value
            for s in samples
            if s.name == "django_http_requests_latency_seconds_by_view_method_count"
            and s.labels == {"view": "coupon-claim", "method": "POST"}
        ]
        self.assertEqual(claim_latency_count, len(claims))

        # The requests were spread over many workers, one after the other.
        booted = [line for line in lines if line["event"].startswith("Booting worker")]
        self.assertGreaterEqual(len(booted), 4)  # the 2 first workers and at least 2 replacements
        claim_lines = [line for line in lines if "claim" in line]
        self.assertEqual(
            [(line["event"], line["claim"]) for line in claim_lines],
            [
                ("request_finished", {"user_id": body["user_id"], "coupon": body["coupon_name"], "outcome": outcome})
                for body, _, outcome in claims
            ],
        )
        self.assertEqual(len({line["request_id"] for line in claim_lines}), len(claims))

        # The metrics directory gunicorn.conf.py made for this server is gone with it.
        [announced] = [line["event"] for line in lines if line["event"].startswith("Prometheus multiprocess directory")]
        metrics_dir = re.search(r": (.+)$", announced).group(1)
        self.assertFalse(Path(metrics_dir).exists())
