import json

from django.db import connection
from django.test import TestCase, TransactionTestCase
from django.test.utils import CaptureQueriesContext
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from coupons.coupon_states import coupon_states
from coupons.services import create_coupon
from tests.helpers import structlog_events
from tests.test_health import unreachable_database

OUTCOMES = [
    "success",
    "already_claimed",
    "sale_not_started",
    "sale_ended",
    "out_of_stock",
    "not_found",
    "invalid",
    "unavailable",
    "error",
]


def claims_counted():
    return {
        outcome: REGISTRY.get_sample_value("coupon_claims_total", {"outcome": outcome}) or 0.0 for outcome in OUTCOMES
    }


class ClaimOutcomeAssertions:
    """Mixed into a TestCase: a claim request is counted once, under one outcome, and logged on its request's line."""

    def claim(self, body, content_type="application/json"):
        return self.client.post("/api/coupons/claim", body, content_type=content_type)

    def assert_recorded(self, outcome, *, status, body, user_id=None, coupon=None, **post):
        before = claims_counted()
        with structlog_events() as events:
            response = self.claim(body, **post)

        self.assertEqual(response.status_code, status, response.content)
        after = claims_counted()
        self.assertEqual(
            {name: after[name] - before[name] for name in OUTCOMES if after[name] != before[name]}, {outcome: 1}
        )
        [line] = [event for event in events if event["logger"] == "couponsite.request_logs"]  # the request's own
        self.assertEqual(
            (line["event"], line["code"], line["claim"]),
            ("request_finished", status, {"outcome": outcome, "user_id": user_id, "coupon": coupon}),
        )
        self.assertRegex(line["request_id"], r"^[0-9a-f-]{36}$")


class ClaimOutcomeTests(ClaimOutcomeAssertions, TestCase):
    def setUp(self):
        create_coupon(name="PROMO", amount=1)

    def claim_json(self, user_id, coupon_name):
        return json.dumps({"user_id": user_id, "coupon_name": coupon_name})

    def test_every_outcome_is_counted_and_logged_once(self):
        cases = [
            ("success", 201, self.claim_json("alice", "PROMO"), "alice", "PROMO"),
            ("already_claimed", 409, self.claim_json("alice", "PROMO"), "alice", "PROMO"),
            ("out_of_stock", 400, self.claim_json("bob", "PROMO"), "bob", "PROMO"),
            ("not_found", 404, self.claim_json("bob", "NOPE"), "bob", "NOPE"),
            ("invalid", 400, json.dumps({"user_id": "", "coupon_name": "PROMO"}), "", "PROMO"),
            ("invalid", 400, json.dumps({"user_id": 7, "coupon_name": "PROMO"}), None, "PROMO"),
            ("invalid", 400, json.dumps({"user_id": "x" * 300, "coupon_name": "PROMO"}), "x" * 255, "PROMO"),
            ("invalid", 400, json.dumps(["alice", "PROMO"]), None, None),
            ("invalid", 400, '{"user_id": ', None, None),
        ]
        for outcome, status, body, user_id, coupon in cases:
            with self.subTest(outcome=outcome, body=body[:40]):
                self.assert_recorded(outcome, status=status, body=body, user_id=user_id, coupon=coupon)

    def test_a_body_that_is_not_json_is_invalid(self):
        self.assert_recorded("invalid", status=415, body="user_id=alice", content_type="text/plain")

    def test_reading_the_coupon_named_claim_is_not_a_claim(self):
        create_coupon(name="claim", amount=1)
        before = claims_counted()

        self.assertEqual(self.client.get("/api/coupons/claim").status_code, 200)

        self.assertEqual(claims_counted(), before)


class UnavailableOutcomeTests(ClaimOutcomeAssertions, TransactionTestCase):
    def test_database_unreachable(self):
        with unreachable_database():
            self.assert_recorded(
                "unavailable",
                status=503,
                body=json.dumps({"user_id": "alice", "coupon_name": "PROMO"}),
                user_id="alice",
                coupon="PROMO",
            )


class ClaimCostTests(TransactionTestCase):
    def test_counting_and_logging_add_no_database_work(self):
        """A claim through HTTP runs exactly the service's statements (tests/test_services.py): once the process
        knows the coupon (coupons/coupon_states.py), the group's lock, holders, insert and decrement with its
        events."""
        create_coupon(name="PROMO", amount=5)
        coupon_states.wait_for_notifications()
        self.client.post(
            "/api/coupons/claim", {"user_id": "ann", "coupon_name": "PROMO"}, content_type="application/json"
        )

        with CaptureQueriesContext(connection) as queries:
            response = self.client.post(
                "/api/coupons/claim", {"user_id": "alice", "coupon_name": "PROMO"}, content_type="application/json"
            )

        self.assertEqual(response.status_code, 201)
        statements = [query["sql"] for query in queries if not query["sql"].startswith(("BEGIN", "COMMIT"))]
        self.assertEqual(len(statements), 4 if connection.vendor == "postgresql" else 5, statements)


class MetricsEndpointTests(TestCase):
    def scrape(self):
        response = self.client.get("/metrics")
        self.assertEqual(response.status_code, 200)
        self.assertTrue(response["Content-Type"].startswith("text/plain; version="))
        return {family.name: family for family in text_string_to_metric_families(response.content.decode())}

    def test_claim_outcomes_are_labelled_by_outcome_only(self):
        create_coupon(name="PROMO", amount=1)
        self.client.post(
            "/api/coupons/claim", {"user_id": "alice", "coupon_name": "PROMO"}, content_type="application/json"
        )

        samples = self.scrape()["coupon_claims"].samples

        totals = [sample for sample in samples if sample.name == "coupon_claims_total"]
        self.assertEqual(sorted(sample.labels["outcome"] for sample in totals), sorted(OUTCOMES))
        self.assertEqual({tuple(sample.labels) for sample in samples}, {("outcome",)})
        self.assertGreaterEqual(next(s.value for s in totals if s.labels["outcome"] == "success"), 1)

    def test_request_latency_histograms(self):
        self.client.post("/api/coupons/claim", {}, content_type="application/json")

        families = self.scrape()

        by_view = families["django_http_requests_latency_seconds_by_view_method"]
        self.assertEqual(by_view.type, "histogram")
        claim_buckets = {
            sample.labels["le"]
            for sample in by_view.samples
            if sample.name.endswith("_bucket") and sample.labels["view"] == "coupon-claim"
        }
        self.assertTrue({"0.001", "0.005", "0.1", "1.0", "+Inf"} <= claim_buckets, claim_buckets)
        self.assertEqual(families["django_http_requests_latency_including_middlewares_seconds"].type, "histogram")
        self.assertIn("django_http_responses_total_by_status_view_method", families)
