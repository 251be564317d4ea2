"""Sale windows through the API: the timestamps' format, the status, and claims refused outside the window.

Windows are set relative to the database's clock (the one the service
reads), so that no test depends on the test process's clock agreeing.
"""

from datetime import UTC, datetime, timedelta

from django.db import IntegrityError, transaction
from django.test import SimpleTestCase, TestCase

from coupons.models import Claim, Coupon
from coupons.sale_windows import SaleStatus, SaleWindow, format_utc, whole_seconds_until
from coupons.selectors import database_now
from coupons.services import claim_coupon, create_coupon, schedule_sale
from tests.helpers import JsonApiAssertions


class CreateWithWindowTests(JsonApiAssertions, TestCase):
    def create(self, **window):
        return self.post_json("/api/coupons", {"name": "SALE", "amount": 5, **window})

    def test_bounds_are_echoed_in_utc(self):
        response = self.create(starts_at="2026-12-01T13:00:00+01:00", ends_at="2026-12-01T12:30:00.250000-01:00")

        self.assertEqual(response.status_code, 201, response.content)
        self.assertEqual(response.json()["starts_at"], "2026-12-01T12:00:00Z")
        self.assertEqual(response.json()["ends_at"], "2026-12-01T13:30:00.250000Z")
        coupon = Coupon.objects.get(name="SALE")
        self.assertEqual(coupon.starts_at, datetime(2026, 12, 1, 12, tzinfo=UTC))
        self.assertEqual(self.get_coupon("SALE").json()["starts_at"], "2026-12-01T12:00:00Z")

    def test_absent_or_null_bounds_mean_no_bound(self):
        for label, window in [("absent", {}), ("null", {"starts_at": None, "ends_at": None})]:
            with self.subTest(label):
                Coupon.objects.filter(name="SALE").delete()
                response = self.create(**window)
                self.assertEqual(response.status_code, 201, response.content)
                self.assertEqual((response.json()["starts_at"], response.json()["ends_at"]), (None, None))

    def test_lowercase_t_and_z_and_long_fractions_are_rfc_3339(self):
        response = self.create(starts_at="2026-12-01t12:00:00.1234567z")
        self.assertEqual(response.status_code, 201, response.content)
        self.assertEqual(response.json()["starts_at"], "2026-12-01T12:00:00.123456Z")

    def test_timestamps_that_are_not_rfc_3339_with_an_offset(self):
        for value in [
            "2026-12-01T12:00:00",  # no offset
            "2026-12-01 12:00:00Z",  # space, not T
            "2026-12-01",
            "2026-12-01T12:00Z",  # no seconds
            "2026-13-01T12:00:00Z",
            "2026-12-01T24:00:00Z",
            "2026-12-01T23:59:60Z",
            "2026-12-01T12:00:00+2400",
            "2026-12-01T12:00:00+24:00",
            "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
            "9999-12-31T23:00:00-05:00",  # after year 9999 in UTC
            "２０２６-12-01T12:00:00Z",  # non-ASCII digits
            "1764590400",
            1764590400,
            True,
            ["2026-12-01T12:00:00Z"],
            "",
        ]:
            with self.subTest(value=value):
                self.assert_error(self.create(starts_at=value), 400, "invalid")
        self.assertFalse(Coupon.objects.exists())

    def test_the_end_must_come_after_the_start(self):
        for ends_at in ["2026-12-01T12:00:00Z", "2026-12-01T12:30:00+01:00", "2026-11-30T12:00:00Z"]:
            with self.subTest(ends_at=ends_at):
                message = self.assert_error(
                    self.create(starts_at="2026-12-01T12:00:00Z", ends_at=ends_at), 400, "invalid"
                )
                self.assertIn("ends_at", message)
        self.assertFalse(Coupon.objects.exists())

    def test_the_database_refuses_a_window_that_ends_before_it_starts(self):
        start = datetime(2026, 12, 1, 12, tzinfo=UTC)
        with self.assertRaises(IntegrityError), transaction.atomic():
            Coupon.objects.create(name="BAD", amount=1, starts_at=start, ends_at=start)


class StatusTests(JsonApiAssertions, TestCase):
    def status_of(self, name):
        response = self.get_coupon(name)
        self.assertEqual(response.status_code, 200)
        return response.json()["status"]

    def test_each_status(self):
        now = database_now()
        hour = timedelta(hours=1)
        create_coupon(name="scheduled", amount=1, starts_at=now + hour)
        create_coupon(name="live", amount=1, starts_at=now - hour, ends_at=now + hour)
        create_coupon(name="unbounded", amount=1)
        create_coupon(name="sold out", amount=1, ends_at=now + hour)
        claim_coupon(user_id="u", coupon_name="sold out")
        create_coupon(name="ended", amount=1, starts_at=now - 2 * hour, ends_at=now - hour)

        for name, status in [
            ("scheduled", "scheduled"),
            ("live", "live"),
            ("unbounded", "live"),
            ("sold out", "sold_out"),
            ("ended", "ended"),
        ]:
            with self.subTest(name):
                self.assertEqual(self.status_of(name), status)


class ClaimWindowTests(JsonApiAssertions, TestCase):
    def claim(self, user_id="user_1", coupon_name="SALE"):
        return self.post_json("/api/coupons/claim", {"user_id": user_id, "coupon_name": coupon_name})

    def test_before_the_start_a_403_with_whole_seconds_to_wait(self):
        create_coupon(name="SALE", amount=5, starts_at=database_now() + timedelta(seconds=90, milliseconds=500))

        response = self.claim()

        self.assert_error(response, 403, "sale_not_started")
        # 90.5 s (less the few ms since) rounds up to 91.
        self.assertEqual(response["Retry-After"], "91")
        self.assertFalse(Claim.objects.exists())
        self.assertEqual(Coupon.objects.get(name="SALE").remaining_amount, 5)

    def test_at_or_after_the_end_a_403(self):
        create_coupon(name="SALE", amount=5, ends_at=database_now())

        response = self.claim()

        self.assert_error(response, 403, "sale_ended")
        self.assertNotIn("Retry-After", response)
        self.assertFalse(Claim.objects.exists())

    def test_inside_the_window_a_claim(self):
        now = database_now()
        create_coupon(name="SALE", amount=5, starts_at=now - timedelta(seconds=1), ends_at=now + timedelta(hours=1))
        self.assertEqual(self.claim().status_code, 201)

    def test_precedence_404_then_409_then_403_then_400(self):
        now = database_now()
        create_coupon(name="SALE", amount=1)
        claim_coupon(user_id="holder", coupon_name="SALE")
        # The holder's claim stays after the window closes and the stock is gone.
        schedule_sale(coupon_name="SALE", ends_at=now - timedelta(seconds=1), starts_at=now - timedelta(hours=1))

        self.assert_error(self.claim("holder", "NOPE"), 404, "not_found")
        self.assert_error(self.claim("holder"), 409, "already_claimed")
        self.assert_error(self.claim("someone else"), 403, "sale_ended")
        schedule_sale(coupon_name="SALE", starts_at=None, ends_at=None)
        self.assert_error(self.claim("someone else"), 400, "out_of_stock")


class WindowRulesTests(SimpleTestCase):
    """The pure rules the claim path, the detail and the admin share (fed the database's clock)."""

    start = datetime(2026, 12, 1, 12, tzinfo=UTC)

    def test_whole_seconds_until_rounds_up(self):
        for before, seconds in [
            (timedelta(microseconds=1), 1),
            (timedelta(seconds=1), 1),
            (timedelta(seconds=1, microseconds=1), 2),
            (timedelta(seconds=59, microseconds=999_999), 60),
            (timedelta(hours=2), 7200),
        ]:
            with self.subTest(before=before):
                self.assertEqual(whole_seconds_until(self.start, self.start - before), seconds)

    def test_the_window_is_half_open(self):
        end = self.start + timedelta(hours=1)
        window = SaleWindow(self.start, end)
        tick = timedelta(microseconds=1)
        self.assertEqual(window.status(now=self.start - tick, remaining_amount=1), SaleStatus.SCHEDULED)
        self.assertEqual(window.status(now=self.start, remaining_amount=1), SaleStatus.LIVE)
        self.assertEqual(window.status(now=end - tick, remaining_amount=0), SaleStatus.SOLD_OUT)
        self.assertEqual(window.status(now=end, remaining_amount=1), SaleStatus.ENDED)
        self.assertEqual(SaleWindow(None, None).status(now=self.start, remaining_amount=1), SaleStatus.LIVE)

    def test_utc_format(self):
        self.assertEqual(format_utc(self.start), "2026-12-01T12:00:00Z")
        self.assertEqual(format_utc(self.start.replace(microsecond=5)), "2026-12-01T12:00:00.000005Z")
        self.assertIsNone(format_utc(None))
