"""The admin's side of sale windows and releases: schedule, status, releases shown, "Release selected claims"."""

from datetime import UTC, datetime, timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import TestCase, override_settings

from coupons.claim_codes import format_code
from coupons.models import Claim, ClaimRelease, Coupon, RedemptionUndo
from coupons.selectors import database_now
from coupons.services import claim_coupon, create_coupon, redeem_claim, release_claim, undo_redemption
from tests.test_admin import CHANGELIST, OperatorTestCase, change_page

CLAIMS = "/admin/coupons/claim/"


@override_settings(TIME_ZONE="Europe/Paris")
class WindowInTheOperatorsTimeZoneTests(OperatorTestCase):
    def test_the_add_form_reads_the_window_in_the_operators_time_zone(self):
        response = self.client.post(
            f"{CHANGELIST}add/",
            {
                "name": "WINTER",
                "amount": 10,
                "starts_at_0": "2026-12-01",
                "starts_at_1": "13:00:00",
                "ends_at_0": "2026-12-01",
                "ends_at_1": "14:30:00",
            },
        )

        self.assertEqual(response.status_code, 302)
        coupon = Coupon.objects.get(name="WINTER")
        # Paris is UTC+1 in December.
        self.assertEqual(coupon.starts_at, datetime(2026, 12, 1, 12, tzinfo=UTC))
        self.assertEqual(coupon.ends_at, datetime(2026, 12, 1, 13, 30, tzinfo=UTC))
        self.assertContains(self.client.get(change_page(coupon)), "Dec. 1, 2026, 1 p.m.")

    def test_the_schedule_page_sets_and_clears_the_window(self):
        coupon = create_coupon(name="WINTER", amount=10)
        url = f"{CHANGELIST}{coupon.pk}/schedule/"
        self.assertContains(self.client.get(url), "Europe/Paris")

        response = self.client.post(url, {"starts_at_0": "2026-12-01", "starts_at_1": "13:00:00"})

        self.assertRedirects(response, change_page(coupon), fetch_redirect_response=False)
        coupon.refresh_from_db()
        self.assertEqual((coupon.starts_at, coupon.ends_at), (datetime(2026, 12, 1, 12, tzinfo=UTC), None))
        self.client.post(url, {})
        coupon.refresh_from_db()
        self.assertEqual((coupon.starts_at, coupon.ends_at), (None, None))

    def test_an_end_before_the_start_is_refused_and_changes_nothing(self):
        coupon = create_coupon(name="WINTER", amount=10)
        response = self.client.post(
            f"{CHANGELIST}{coupon.pk}/schedule/",
            {"starts_at_0": "2026-12-01", "starts_at_1": "13:00", "ends_at_0": "2026-12-01", "ends_at_1": "12:00"},
        )
        self.assertContains(response, "The sale must end after it starts.")
        coupon.refresh_from_db()
        self.assertEqual((coupon.starts_at, coupon.ends_at), (None, None))


class SaleStatusColumnTests(OperatorTestCase):
    def setUp(self):
        super().setUp()
        now, hour = database_now(), timedelta(hours=1)
        create_coupon(name="SOON", amount=1, starts_at=now + hour)
        create_coupon(name="OPEN", amount=1)
        create_coupon(name="GONE", amount=1, ends_at=now + hour)
        claim_coupon(user_id="u", coupon_name="GONE")
        create_coupon(name="OVER", amount=1, starts_at=now - 2 * hour, ends_at=now - hour)

    def test_status_column(self):
        response = self.client.get(CHANGELIST)
        statuses = {
            coupon.name: response.context["cl"].model_admin.status(coupon)
            for coupon in response.context["cl"].result_list
        }
        self.assertEqual(statuses, {"SOON": "Scheduled", "OPEN": "Live", "GONE": "Sold out", "OVER": "Ended"})

    def test_status_filter(self):
        for status, name in [("scheduled", "SOON"), ("live", "OPEN"), ("sold_out", "GONE"), ("ended", "OVER")]:
            with self.subTest(status):
                response = self.client.get(CHANGELIST, {"status": status})
                self.assertEqual([coupon.name for coupon in response.context["cl"].result_list], [name])


class ReleasesInTheAdminTests(OperatorTestCase):
    def setUp(self):
        super().setUp()
        self.coupon = create_coupon(name="PROMO", amount=3)
        for user_id in ["alice", "bob", "carol"]:
            claim_coupon(user_id=user_id, coupon_name="PROMO")

    def test_the_coupon_page_shows_its_releases(self):
        release_claim(coupon_name="PROMO", user_id="alice", released_by="someone", reason="fraudulent claim")
        page = self.client.get(change_page(self.coupon))
        self.assertContains(page, "fraudulent claim")
        self.assertContains(page, "someone")

    def test_release_selected_claims_asks_for_a_reason_then_releases(self):
        selected = list(Claim.objects.filter(user_id__in=["alice", "bob"]).values_list("pk", flat=True))
        action = {"action": "release_selected_claims", "_selected_action": selected}

        confirm = self.client.post(CLAIMS, action)
        self.assertContains(confirm, "Release these claims?")
        self.assertContains(confirm, 'name="reason"')
        self.assertEqual(Claim.objects.count(), 3)

        no_reason = self.client.post(CLAIMS, {**action, "apply": "Release", "reason": ""})
        self.assertContains(no_reason, "Please give a reason.")
        self.assertEqual(Claim.objects.count(), 3)

        done = self.client.post(CLAIMS, {**action, "apply": "Release", "reason": "orders cancelled"})
        self.assertRedirects(done, CLAIMS, fetch_redirect_response=False)
        self.assertEqual(
            dict(Claim.objects.values_list("user_id", "status")),
            {"alice": "released", "bob": "released", "carol": "held"},
        )
        self.coupon.refresh_from_db()
        self.assertEqual(self.coupon.remaining_amount, 2)
        self.assertEqual(
            sorted(ClaimRelease.objects.values_list("user_id", "released_by", "reason")),
            [("alice", "operator", "orders cancelled"), ("bob", "operator", "orders cancelled")],
        )

    def test_a_released_claim_selected_again_leaves_the_users_new_claim_alone(self):
        release_claim(coupon_name="PROMO", user_id="alice", released_by="someone")
        claim_coupon(user_id="alice", coupon_name="PROMO")
        released = Claim.objects.get(user_id="alice", status="released")
        action = {"action": "release_selected_claims", "_selected_action": [released.pk]}

        self.client.post(CLAIMS, {**action, "apply": "Release", "reason": "again"})

        self.assertEqual(
            sorted(Claim.objects.filter(user_id="alice").values_list("status", flat=True)), ["held", "released"]
        )
        self.assertEqual(ClaimRelease.objects.count(), 1)

    def test_the_audit_trail_is_read_only(self):
        release_claim(coupon_name="PROMO", user_id="alice", released_by="someone", reason="test")
        release = ClaimRelease.objects.get()
        self.assertContains(self.client.get("/admin/coupons/claimrelease/"), "alice")
        self.assertEqual(self.client.get("/admin/coupons/claimrelease/add/").status_code, 403)
        self.client.post(f"/admin/coupons/claimrelease/{release.pk}/change/", {"reason": "rewritten"})
        self.client.post(f"/admin/coupons/claimrelease/{release.pk}/delete/", {"post": "yes"})
        self.assertEqual(ClaimRelease.objects.get().reason, "test")


class ViewOnlyOperatorSalesTests(TestCase):
    def test_a_viewer_can_neither_schedule_nor_release(self):
        viewer = get_user_model().objects.create_user("viewer", password="secret-password", is_staff=True)
        viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_coupon", "view_claim"]))
        self.client.force_login(viewer)
        coupon = create_coupon(name="PROMO", amount=3)
        claim_coupon(user_id="alice", coupon_name="PROMO")

        self.assertNotContains(self.client.get(change_page(coupon)), "/schedule/")
        self.assertEqual(self.client.get(f"{CHANGELIST}{coupon.pk}/schedule/").status_code, 403)
        # No action the viewer may run: no action form at all.
        self.assertIsNone(self.client.get(CLAIMS).context["action_form"])


class ClaimStatusesInTheAdminTests(OperatorTestCase):
    def setUp(self):
        super().setUp()
        self.coupon = create_coupon(name="PROMO", amount=4, hold_seconds=60)
        self.codes = {user: claim_coupon(user_id=user, coupon_name="PROMO").code for user in ["ann", "bob", "cat"]}
        redeem_claim(code=self.codes["ann"], order_id="order-1")
        release_claim(coupon_name="PROMO", user_id="bob", released_by="operator")

    def listed(self, **query):
        response = self.client.get(CLAIMS, query)
        return sorted(claim.user_id for claim in response.context["cl"].result_list)

    def test_the_coupon_page_counts_claims_by_status_and_shows_codes(self):
        page = self.client.get(change_page(self.coupon))
        self.assertEqual(page.context["claim_counts"], [("Held", 1), ("Redeemed", 1), ("Released", 1), ("Expired", 0)])
        self.assertContains(page, format_code(self.codes["ann"]))
        self.assertContains(page, '<td class="claim-status">Redeemed</td>', html=True)

    def test_the_claims_list_filters_by_status_and_finds_a_code_as_typed(self):
        self.assertEqual(self.listed(status="live"), ["ann", "cat"])
        self.assertEqual(self.listed(status="released"), ["bob"])
        self.assertEqual(self.listed(q=format_code(self.codes["cat"]).lower()), ["cat"])
        self.assertEqual(self.listed(q=self.codes["cat"].lower().replace("0", "o")), ["cat"])
        self.assertEqual(self.listed(q="bob"), ["bob"])

    def test_a_coupon_whose_claims_all_ended_still_cannot_be_deleted(self):
        release_claim(coupon_name="PROMO", user_id="ann", released_by="operator")
        release_claim(coupon_name="PROMO", user_id="cat", released_by="operator")
        self.coupon.refresh_from_db()
        self.assertEqual(self.coupon.claimed_amount, 0)
        self.assertEqual(self.client.post(f"{CHANGELIST}{self.coupon.pk}/delete/", {"post": "yes"}).status_code, 403)
        self.assertTrue(Coupon.objects.filter(pk=self.coupon.pk).exists())

    def test_undone_redemptions_are_read_only(self):
        undo_redemption(code=self.codes["ann"], undone_by="shop", reason="order cancelled")
        listing = self.client.get("/admin/coupons/redemptionundo/")
        self.assertContains(listing, "order-1")
        self.assertContains(listing, "order cancelled")
        undo = RedemptionUndo.objects.get()
        self.assertEqual(self.client.get(f"/admin/coupons/redemptionundo/{undo.pk}/delete/").status_code, 403)
