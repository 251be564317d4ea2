import math
from datetime import timedelta

from django.db import connection
from django.test import TestCase, TransactionTestCase
from django.test.utils import CaptureQueriesContext
from prometheus_client.parser import text_string_to_metric_families

from coupons.claim_codes import format_code
from coupons.holds import expire_holds
from coupons.models import Claim
from coupons.selectors import database_now
from coupons.services import claim_coupon, create_coupon, redeem_claim, release_claim
from coupons.stock_metrics import LABELLED_COUPONS
from tests.helpers import structlog_events
from tests.test_health import unreachable_database


class Scraping:
    def scrape(self):
        response = self.client.get("/metrics")
        self.assertEqual(response.status_code, 200)
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.content.decode())
            for sample in family.samples
        }


class LiveStockMetricsTests(Scraping, TestCase):
    def test_the_stock_left_of_live_coupons_read_in_one_query_per_scrape(self):  # and one for webhooks
        create_coupon(name="SPRING", amount=5)
        create_coupon(name="SUMMER", amount=3)
        create_coupon(name="GONE", amount=1)
        claim_coupon(user_id="alice", coupon_name="SPRING")
        claim_coupon(user_id="bob", coupon_name="GONE")

        with CaptureQueriesContext(connection) as queries:
            samples = self.scrape()

        # The stock in one query; then the claims by status and the next hold's deadline (ClaimStatusTests), the
        # webhook backlog (tests/test_webhooks.py), on PostgreSQL the backup stream (BackupStreamMetricsTests), and
        # fair admission's entries (admission/metrics.py).
        self.assertEqual(len(queries), 6 if connection.vendor == "postgresql" else 5)
        self.assertIn("remaining_amount", queries[0]["sql"])
        self.assertEqual(samples[("coupons_live", ())], 2)
        self.assertEqual(samples[("coupon_stock_remaining_total", ())], 4 + 3)
        per_coupon = {labels: value for (name, labels), value in samples.items() if name == "coupon_stock_remaining"}
        self.assertEqual(per_coupon, {(("coupon", "SPRING"),): 4, (("coupon", "SUMMER"),): 3})
        # The request metrics are still there.
        self.assertIn(("coupon_claims_total", (("outcome", "success"),)), samples)

    def test_per_coupon_series_are_capped_and_the_totals_count_every_live_coupon(self):
        for i in range(LABELLED_COUPONS + 5):
            create_coupon(name=f"C{i}", amount=2)

        samples = self.scrape()

        self.assertEqual(samples[("coupons_live", ())], LABELLED_COUPONS + 5)
        self.assertEqual(samples[("coupon_stock_remaining_total", ())], 2 * (LABELLED_COUPONS + 5))
        labelled = [labels for (name, labels) in samples if name == "coupon_stock_remaining"]
        self.assertEqual(len(labelled), LABELLED_COUPONS)
        self.assertIn((("coupon", f"C{LABELLED_COUPONS + 4}"),), labelled)  # the newest


class LiveStockMetricsWithoutDatabaseTests(Scraping, TransactionTestCase):
    # The connection is broken on purpose: outside any test transaction.
    def test_no_database_no_stock_but_the_request_metrics_still_answer(self):
        with unreachable_database(), structlog_events() as events:
            samples = self.scrape()

        self.assertIn("warning", [event["log_level"] for event in events if event["logger"] == "coupons.metrics"])
        self.assertNotIn(("coupons_live", ()), samples)
        self.assertIn(("coupon_claims_total", (("outcome", "success"),)), samples)


class ClaimStatusMetricsTests(Scraping, TestCase):
    def test_claims_by_status_and_the_expiry_lag_read_at_scrape_time(self):
        create_coupon(name="SPRING", amount=5, hold_seconds=60)
        codes = {user: claim_coupon(user_id=user, coupon_name="SPRING").code for user in ["ann", "bob", "cat", "dan"]}
        redeem_claim(code=codes["ann"])
        release_claim(coupon_name="SPRING", user_id="bob", released_by="test")
        # cat's hold is 5 s past its deadline, and nobody has expired it yet.
        Claim.objects.filter(code=codes["cat"]).update(expires_at=database_now() - timedelta(seconds=5))

        samples = self.scrape()

        by_status = {labels: value for (name, labels), value in samples.items() if name == "coupon_claims_by_status"}
        self.assertEqual(
            by_status,
            {
                (("status", "held"),): 2,
                (("status", "redeemed"),): 1,
                (("status", "released"),): 1,
                (("status", "expired"),): 0,
            },
        )
        self.assertGreaterEqual(samples[("coupon_hold_expiry_lag_seconds", ())], 5)

        expire_holds()
        samples = self.scrape()
        self.assertEqual(samples[("coupon_claims_by_status", (("status", "expired"),))], 1)
        self.assertEqual(samples[("coupon_hold_expiry_lag_seconds", ())], 0)

    def test_no_code_in_any_series(self):
        create_coupon(name="SPRING", amount=5)
        code = claim_coupon(user_id="ann", coupon_name="SPRING").code
        for path in (f"/api/redemptions/{code}", f"/api/redemptions/{format_code(code).lower()}"):
            self.client.get(path)
        self.client.post("/api/redemptions", {"code": code}, content_type="application/json")

        metrics = self.client.get("/metrics").content.decode()

        self.assertIn('view="redemption-detail"', metrics)
        self.assertNotIn(code, metrics.upper().replace("-", ""))


class BackupStreamMetricsTests(Scraping, TestCase):
    """No backup host streams the test database: the stream is reported absent and its figures unknown, never 0 (a
    lag of 0 would say "all streamed"). tests/cluster/test_restore.py reads them with the stream running."""

    def test_no_stream_is_not_streaming_and_the_lag_is_unknown(self):
        samples = self.scrape()

        self.assertEqual(samples[("coupon_backup_wal_streaming", ())], 0)
        self.assertTrue(math.isnan(samples[("coupon_backup_wal_lag_bytes", ())]))
        self.assertTrue(math.isnan(samples[("coupon_backup_slot_retained_wal_bytes", ())]))
