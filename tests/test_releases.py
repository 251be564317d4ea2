"""Releasing a claim back to stock: DELETE /api/coupons/{name}/claims/{user_id}, never anonymous, always audited."""

import json
from datetime import timedelta
from urllib.parse import quote

from django.test import Client, TestCase, TransactionTestCase

from coupons.api_keys import create_api_key
from coupons.exceptions import AmountBelowClaimed, ClaimNotFound, OutOfStock
from coupons.models import LIVE_STATUSES, Claim, ClaimRelease, ClaimStatus, Coupon
from coupons.selectors import database_now
from coupons.services import claim_coupon, create_coupon, release_claim, restock_coupon
from tests.helpers import JsonApiAssertions
from tests.stress.base import run_simultaneously
from tests.test_access import make_user, token_header
from tests.test_api_keys import api_key_header, new_key
from tests.test_services import done_or_refused


def live_claims():
    return Claim.objects.filter(status__in=LIVE_STATUSES)


def release_path(name, user_id):
    return f"/api/coupons/{quote(name, safe='')}/claims/{quote(user_id, safe='')}"


class ReleaseApiTests(JsonApiAssertions, TestCase):
    def setUp(self):
        create_coupon(name="PROMO", amount=2)
        claim_coupon(user_id="alice", coupon_name="PROMO")
        self.staff = token_header(make_user("operator", is_staff=True))

    def release(self, name="PROMO", user_id="alice", body=None, **extra):
        data = json.dumps(body) if body is not None else ""
        return self.client.delete(release_path(name, user_id), data=data, content_type="application/json", **extra)

    def assert_unchanged(self):
        self.assertEqual(list(live_claims().values_list("user_id", flat=True)), ["alice"])
        self.assertEqual(Coupon.objects.get(name="PROMO").remaining_amount, 1)
        self.assertFalse(ClaimRelease.objects.exists())

    def test_staff_token_releases_and_the_release_is_recorded(self):
        response = self.release(body={"reason": "order cancelled"}, **self.staff)

        self.assertEqual(response.status_code, 204, response.content)
        self.assertEqual(response.content, b"")
        self.assertFalse(live_claims().exists())
        # The claim is kept, released, with its code: the audit row points at it.
        claim = Claim.objects.get()
        self.assertEqual(claim.status, ClaimStatus.RELEASED)
        self.assertEqual(Coupon.objects.get(name="PROMO").remaining_amount, 2)
        release = ClaimRelease.objects.get()
        self.assertEqual(
            (release.coupon.name, release.user_id, release.released_by, release.reason),
            ("PROMO", "alice", "operator", "order cancelled"),
        )
        self.assertEqual(release.claim, claim)
        self.assertEqual(claim.returned_at, release.released_at)
        self.assertIsNotNone(release.claimed_at)
        self.assertGreaterEqual(release.released_at, release.claimed_at)
        self.assertEqual(self.get_coupon("PROMO").json()["claimed_by"], [])

    def test_the_reason_is_optional(self):
        self.assertEqual(self.release(**self.staff).status_code, 204)
        self.assertEqual(ClaimRelease.objects.get().reason, "")

    def test_a_released_user_may_claim_again(self):
        self.release(**self.staff)
        response = self.post_json("/api/coupons/claim", {"user_id": "alice", "coupon_name": "PROMO"})
        self.assertEqual(response.status_code, 201)
        self.assertEqual(Coupon.objects.get(name="PROMO").remaining_amount, 1)

    def test_never_anonymous(self):
        for label, extra, status, code in [
            ("no credentials", {}, 401, "unauthorized"),
            ("bogus token", {"HTTP_AUTHORIZATION": "Token not-a-token"}, 401, "unauthorized"),
            ("non-staff token", token_header(make_user("shopper")), 403, "forbidden"),
        ]:
            with self.subTest(label):
                self.assert_error(self.release(**extra), status, code)
                self.assert_unchanged()

    def test_a_key_with_the_release_scope_releases_whether_or_not_keys_are_required(self):
        for required in [False, True]:
            with self.subTest(API_KEYS_REQUIRED=required), self.settings(API_KEYS_REQUIRED=required):
                if not live_claims().exists():  # released by the previous round
                    claim_coupon(user_id="alice", coupon_name="PROMO")

                row, key = create_api_key(name="shop backend", scopes={"release"})

                response = self.release(**api_key_header(key))

                self.assertEqual(response.status_code, 204, response.content)
                self.assertFalse(live_claims().exists())
                self.assertEqual(ClaimRelease.objects.latest("id").released_by, f"API key {row.prefix}")

    def test_a_key_without_the_release_scope_is_refused(self):
        for required in [False, True]:
            with self.subTest(API_KEYS_REQUIRED=required), self.settings(API_KEYS_REQUIRED=required):
                self.assert_error(self.release(**api_key_header(new_key("claim", "read", "create"))), 403, "forbidden")
                self.assert_error(self.release(HTTP_AUTHORIZATION="Api-Key not.a-key"), 401, "unauthorized")
                self.assert_unchanged()

    def test_admin_session_needs_its_csrf_token(self):
        self.client = Client(enforce_csrf_checks=True)
        self.client.force_login(make_user("admin-operator", is_staff=True))

        self.assert_error(self.release(), 403, "forbidden")
        self.assert_unchanged()

        self.client.get("/admin/")  # sets the CSRF cookie, as the admin's pages do
        response = self.release(HTTP_X_CSRFTOKEN=self.client.cookies["csrftoken"].value)
        self.assertEqual(response.status_code, 204, response.content)
        self.assertEqual(ClaimRelease.objects.get().released_by, "admin-operator")

    def test_unknown_coupon_and_unknown_claim(self):
        self.assert_error(self.release(name="NOPE", **self.staff), 404, "not_found")
        self.assert_error(self.release(user_id="bob", **self.staff), 404, "claim_not_found")
        self.assert_unchanged()

    def test_released_twice(self):
        self.release(**self.staff)
        self.assert_error(self.release(**self.staff), 404, "claim_not_found")
        self.assertEqual(ClaimRelease.objects.count(), 1)
        self.assertEqual(Coupon.objects.get(name="PROMO").remaining_amount, 2)

    def test_invalid_bodies_change_nothing(self):
        for body in [{"reason": 5}, {"reason": ""}, {"reason": "x" * 256}, ["reason"]]:
            with self.subTest(body=body):
                self.assert_error(self.release(body=body, **self.staff), 400, "invalid")
                self.assert_unchanged()
        response = self.client.delete(release_path("PROMO", "alice"), data="{", content_type="text/plain", **self.staff)
        self.assert_error(response, 415, "unsupported_media_type")
        self.assert_unchanged()

    def test_names_and_user_ids_with_slashes(self):
        create_coupon(name="a/b", amount=1)
        claim_coupon(user_id="c/claims/d", coupon_name="a/b")
        self.assertEqual(self.release(name="a/b", user_id="c/claims/d", **self.staff).status_code, 204)
        self.assertFalse(live_claims().filter(coupon__name="a/b").exists())

    def test_reading_a_coupon_whose_name_contains_claims_stays_anonymous(self):
        create_coupon(name="x/claims/y", amount=3)
        response = self.client.get("/api/coupons/x/claims/y")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.json()["name"], "x/claims/y")
        self.assert_error(self.client.post("/api/coupons/x/claims/y"), 405, "method_not_allowed")

    def test_a_release_after_the_sale_ended_gives_the_unit_back_but_no_new_claim(self):
        Coupon.objects.filter(name="PROMO").update(ends_at=database_now() - timedelta(seconds=1))
        self.assertEqual(self.release(**self.staff).status_code, 204)
        response = self.post_json("/api/coupons/claim", {"user_id": "alice", "coupon_name": "PROMO"})
        self.assert_error(response, 403, "sale_ended")


class ReleaseRaceTests(TransactionTestCase):
    """Releases racing claims and restocks on real threads: every change lands, the stock always adds up."""

    ROUNDS = 5

    def test_releases_claims_and_restocks_at_once(self):
        for round_number in range(self.ROUNDS):
            with self.subTest(round=round_number):
                self.race(f"RELEASE RACE {round_number}")

    def race(self, name):
        create_coupon(name=name, amount=8)
        holders = [f"holder_{i}" for i in range(6)]
        for holder in holders:
            claim_coupon(user_id=holder, coupon_name=name)

        def claim(user_id):
            return done_or_refused(lambda: claim_coupon(user_id=user_id, coupon_name=name), OutOfStock)

        def release_then_claim_again(user_id):
            release_claim(coupon_name=name, user_id=user_id, released_by="race", reason="test")
            return claim(user_id)

        def release(user_id):
            return done_or_refused(
                lambda: release_claim(coupon_name=name, user_id=user_id, released_by="race"), ClaimNotFound
            )

        def restock(amount):
            return done_or_refused(lambda: restock_coupon(coupon_name=name, amount=amount), AmountBelowClaimed)

        calls = [lambda user_id=holder: release_then_claim_again(user_id) for holder in holders[:4]]
        # Two releases of one claim at once: exactly one finds it.
        calls += [lambda: release(holders[4])] * 2
        calls += [lambda user_id=f"new_{i}": claim(user_id) for i in range(6)]
        calls += [lambda: restock(10), lambda: restock(7)]

        outcomes = run_simultaneously(calls)

        coupon = Coupon.objects.get(name=name)
        claims = set(live_claims().filter(coupon=coupon).values_list("user_id", flat=True))
        self.assertEqual(sorted(outcomes[4:6]), ["done", "refused"])
        self.assertEqual(ClaimRelease.objects.filter(coupon=coupon).count(), 5, "every release is recorded, once")
        reclaimed = {holder for holder, outcome in zip(holders, outcomes[:4], strict=False) if outcome == "done"}
        new = {f"new_{i}" for i, outcome in enumerate(outcomes[6:12]) if outcome == "done"}
        self.assertEqual(claims, reclaimed | new | {holders[5]}, "every success has its row, and only those")
        self.assertEqual(coupon.remaining_amount, coupon.amount - len(claims))
        self.assertTrue(0 <= coupon.remaining_amount <= coupon.amount)
