"""Campaigns (campaigns/): caps across coupons and per customer, judged in the claim group's transaction."""

from django.db import IntegrityError, connection, transaction
from django.test import TestCase
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from campaigns.extension import CampaignExtension
from campaigns.models import Campaign, CampaignCoupon
from campaigns.services import create_campaign
from coupons import extensions
from coupons.claim_groups import grant_claims
from coupons.holds import expire_holds
from coupons.models import Claim, Coupon, Event
from coupons.services import create_coupon, release_claim


class CampaignApiTests(TestCase):
    def setUp(self):
        self.client = APIClient()

    def post(self, path, body):
        return self.client.post(path, body, format="json")

    def claim(self, user_id, coupon_name):
        return self.post("/api/coupons/claim", {"user_id": user_id, "coupon_name": coupon_name})

    def test_create_read_and_list(self):
        answer = self.post("/api/campaigns", {"name": "Black Friday", "max_claims": 3, "max_claims_per_user": 1})

        self.assertEqual(answer.status_code, 201, answer.content)
        expected = {
            "name": "Black Friday",
            "max_claims": 3,
            "max_claims_per_user": 1,
            "claimed": 0,
            "remaining_claims": 3,
            "coupons": [],
        }
        self.assertEqual(answer.json(), expected)
        self.assertEqual(self.client.get("/api/campaigns/Black Friday").json(), expected)
        self.assertEqual(self.client.get("/api/campaigns").json(), {"campaigns": [expected]})

    def test_bad_input_is_refused_and_changes_nothing(self):
        for body in (
            {"name": ""},
            {"name": 5},
            {"name": "X", "max_claims": 0},
            {"name": "X", "max_claims_per_user": "1"},
            {"name": "X", "max_claims": True},
        ):
            with self.subTest(body=body):
                answer = self.post("/api/campaigns", body)
                self.assertEqual((answer.status_code, answer.json()["code"]), (400, "invalid"))
        self.assertFalse(Campaign.objects.exists())

    def test_a_duplicate_name_is_409_and_an_unknown_one_404(self):
        self.post("/api/campaigns", {"name": "BF"})

        answer = self.post("/api/campaigns", {"name": "BF", "max_claims": 5})
        self.assertEqual((answer.status_code, answer.json()["code"]), (409, "campaign_exists"))
        answer = self.client.get("/api/campaigns/nope")
        self.assertEqual((answer.status_code, answer.json()["code"]), (404, "campaign_not_found"))

    def test_a_coupon_joins_when_created_and_shows_it(self):
        self.post("/api/campaigns", {"name": "BF"})

        answer = self.post("/api/coupons", {"name": "TV", "amount": 5, "campaign": "BF"})

        self.assertEqual(answer.status_code, 201, answer.content)
        self.assertEqual(answer.json()["campaign"], "BF")
        self.assertEqual(self.client.get("/api/coupons/TV").json()["campaign"], "BF")
        self.assertEqual(self.client.get("/api/campaigns/BF").json()["coupons"], ["TV"])
        self.post("/api/coupons", {"name": "ALONE", "amount": 5})
        self.assertIsNone(self.client.get("/api/coupons/ALONE").json()["campaign"])

    def test_an_unknown_campaign_creates_no_coupon(self):
        answer = self.post("/api/coupons", {"name": "TV", "amount": 5, "campaign": "nope"})

        self.assertEqual((answer.status_code, answer.json()["code"]), (404, "campaign_not_found"))
        self.assertFalse(Coupon.objects.exists())
        self.assertFalse(Event.objects.exists())

    def test_per_user_limit_is_409_after_the_coupons_own_answers(self):
        create_campaign(name="BF", max_claims_per_user=1)
        for name in ("A", "B"):
            create_coupon(name=name, amount=5, options={"campaign": "BF"})
        create_coupon(name="SOLD", amount=1, options={"campaign": "BF"})
        self.assertEqual(self.claim("other", "SOLD").status_code, 201)

        self.assertEqual(self.claim("ann", "A").status_code, 201)
        answer = self.claim("ann", "B")
        self.assertEqual((answer.status_code, answer.json()["code"]), (409, "campaign_limit_reached"))
        # The coupon's own refusals come first.
        self.assertEqual(self.claim("ann", "A").json()["code"], "already_claimed")
        self.assertEqual(self.claim("ann", "SOLD").json()["code"], "out_of_stock")
        self.assertEqual(Claim.objects.filter(user_id="ann").count(), 1)

        # A release gives the user her place back.
        release_claim(coupon_name="A", user_id="ann", released_by="op")
        self.assertEqual(self.claim("ann", "B").status_code, 201)

    def test_max_claims_across_coupons_is_400_and_writes_its_event(self):
        create_campaign(name="BF", max_claims=3)
        create_coupon(name="A", amount=2, options={"campaign": "BF"})
        create_coupon(name="B", amount=2, options={"campaign": "BF"})

        outcomes = [self.claim(user, coupon).status_code for user, coupon in [("u1", "A"), ("u2", "B"), ("u3", "A")]]
        answer = self.claim("u4", "B")

        self.assertEqual(outcomes, [201, 201, 201])
        self.assertEqual((answer.status_code, answer.json()["code"]), (400, "campaign_exhausted"))
        detail = self.client.get("/api/campaigns/BF").json()
        self.assertEqual((detail["claimed"], detail["remaining_claims"]), (3, 0))
        self.assertEqual(
            list(Event.objects.filter(type="campaign.exhausted").values_list("coupon_name", "data")),
            [("A", {"campaign": "BF", "max_claims": 3})],
        )
        # A per-user limit is answered before exhaustion (409 before 400, as coupons' own).
        Campaign.objects.filter(name="BF").update(max_claims_per_user=1)
        self.assertEqual(self.claim("u1", "B").json()["code"], "campaign_limit_reached")

    def test_releases_and_expiries_give_units_back_to_the_campaign(self):
        create_campaign(name="BF", max_claims=2)
        create_coupon(name="A", amount=5, hold_seconds=60, options={"campaign": "BF"})
        self.claim("ann", "A")
        self.claim("bob", "A")
        self.assertEqual(self.claim("cat", "A").json()["code"], "campaign_exhausted")

        release_claim(coupon_name="A", user_id="ann", released_by="op")
        self.assertEqual(Campaign.objects.get().taken, 1)
        bob = Claim.objects.filter(user_id="bob")
        bob.update(expires_at=bob.get().created_at)
        self.assertEqual(expire_holds(), 1)

        self.assertEqual(Campaign.objects.get().taken, 0)
        self.assertEqual(self.claim("cat", "A").status_code, 201)
        self.assertEqual(self.claim("dan", "A").status_code, 201)

    def test_a_group_is_judged_in_order_and_counts_its_own_grants(self):
        create_campaign(name="BF", max_claims=2, max_claims_per_user=1)
        coupon = create_coupon(name="A", amount=10, options={"campaign": "BF"})
        judges = extensions.applying_to(coupon.pk)

        outcomes = grant_claims(
            coupon_id=coupon.pk, user_ids=["ann", "ann", "bob", "cat"], extensions=judges, prepared=[(None,)] * 4
        )

        self.assertEqual(
            [type(o).__name__ for o in outcomes], ["Claim", "AlreadyClaimed", "Claim", "CampaignExhausted"]
        )
        self.assertEqual(Campaign.objects.get().taken, 2)

    def test_a_coupon_without_a_campaign_is_not_judged(self):
        create_campaign(name="BF", max_claims=1)
        alone = create_coupon(name="ALONE", amount=5)
        member = create_coupon(name="MEMBER", amount=5, options={"campaign": "BF"})

        self.assertEqual(extensions.applying_to(alone.pk), ())
        self.assertEqual([type(e) for e in extensions.applying_to(member.pk)], [CampaignExtension])
        alone_judges, member_judges = extensions.applying_to(alone.pk), extensions.applying_to(member.pk)
        with CaptureQueriesContext(connection) as alone_queries:
            grant_claims(coupon_id=alone.pk, user_ids=["ann"], extensions=alone_judges)
        with CaptureQueriesContext(connection) as member_queries:
            grant_claims(coupon_id=member.pk, user_ids=["ann"], extensions=member_judges, prepared=[(None,)])

        self.assertFalse([q for q in alone_queries.captured_queries if "campaigns_" in q["sql"]])
        # The member pays the lock of the counter row and its move (no per-user limit here: no holdings read).
        self.assertEqual(len(member_queries), len(alone_queries) + 2)


class CampaignConstraintTests(TestCase):
    def test_the_database_refuses_a_counter_over_the_cap_or_below_zero(self):
        campaign = create_campaign(name="BF", max_claims=1)
        for taken in (2, -1):
            with self.subTest(taken=taken), self.assertRaises(IntegrityError), transaction.atomic():
                Campaign.objects.filter(pk=campaign.pk).update(taken=taken)

    def test_a_coupon_belongs_to_one_campaign_at_most(self):
        create_campaign(name="BF")
        other = create_campaign(name="CM")
        coupon = create_coupon(name="A", amount=1, options={"campaign": "BF"})

        with self.assertRaises(IntegrityError), transaction.atomic():
            CampaignCoupon.objects.create(coupon=coupon, campaign=other)
