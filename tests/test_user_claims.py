"""GET /api/users/{user_id}/claims: a user's claims, newest first, a page at a time (keyset pagination)."""

from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from django.test import TestCase

from coupons.claim_codes import format_code
from coupons.models import Claim
from coupons.services import claim_coupon, create_coupon
from tests.helpers import JsonApiAssertions


class UserClaimsApiTests(JsonApiAssertions, TestCase):
    def claims_of(self, user_id, **query):
        return self.client.get(f"/api/users/{quote(user_id, safe='')}/claims", query)

    def give(self, user_id, count, *, same_instant=None):
        """`count` claims for the user, each a second after the previous (or all at `same_instant`)."""
        start = datetime(2026, 12, 1, 12, tzinfo=UTC)
        for i in range(count):
            name = f"{user_id} coupon {i}"
            create_coupon(name=name, amount=1)
            claim = claim_coupon(user_id=user_id, coupon_name=name)
            Claim.objects.filter(pk=claim.pk).update(created_at=same_instant or start + timedelta(seconds=i))

    def all_pages(self, user_id, limit):
        names, pages, cursor = [], 0, None
        while True:
            query = {"limit": limit} | ({"cursor": cursor} if cursor else {})
            response = self.claims_of(user_id, **query)
            self.assertEqual(response.status_code, 200, response.content)
            body = response.json()
            self.assertLessEqual(len(body["claims"]), limit)
            names += [claim["coupon_name"] for claim in body["claims"]]
            pages += 1
            cursor = body["next"]
            if cursor is None:
                return names, pages

    def test_a_user_without_claims(self):
        response = self.claims_of("nobody")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.json(), {"user_id": "nobody", "claims": [], "next": None})

    def test_newest_first_in_utc(self):
        self.give("alice", 2)
        self.give("bob", 1)

        response = self.claims_of("alice")

        codes = {
            name: format_code(code)
            for name, code in Claim.objects.filter(user_id="alice").values_list("coupon__name", "code")
        }
        self.assertEqual(
            response.json(),
            {
                "user_id": "alice",
                "claims": [
                    {
                        "coupon_name": f"alice coupon {i}",
                        "claimed_at": f"2026-12-01T12:00:0{i}Z",
                        "code": codes[f"alice coupon {i}"],
                        "status": "held",
                        "expires_at": None,
                        "redeemed_at": None,
                    }
                    for i in (1, 0)
                ],
                "next": None,
            },
        )

    def test_pages_cover_every_claim_once(self):
        self.give("alice", 7)
        names, pages = self.all_pages("alice", limit=3)
        self.assertEqual(names, [f"alice coupon {i}" for i in reversed(range(7))])
        self.assertEqual(pages, 3)

    def test_claims_made_in_the_same_instant_are_neither_skipped_nor_repeated(self):
        self.give("alice", 5, same_instant=datetime(2026, 12, 1, 12, tzinfo=UTC))
        names, _ = self.all_pages("alice", limit=2)
        self.assertEqual(sorted(names), [f"alice coupon {i}" for i in range(5)])
        self.assertEqual(len(names), 5)

    def test_a_page_holds_fifty_by_default_and_a_hundred_at_most(self):
        self.give("alice", 101)
        first = self.claims_of("alice").json()
        self.assertEqual(len(first["claims"]), 50)
        self.assertIsNotNone(first["next"])
        self.assertEqual(len(self.claims_of("alice", limit=100).json()["claims"]), 100)
        self.assertEqual(len(self.claims_of("alice", limit=100, cursor=first["next"]).json()["claims"]), 51)

    def test_invalid_queries(self):
        for query in [
            {"limit": 0},
            {"limit": 101},
            {"limit": "ten"},
            {"limit": "1.5"},
            {"cursor": "nonsense"},
            {"cursor": "bm90fGE"},  # base64 of "not|a"
        ]:
            with self.subTest(query=query):
                self.assert_error(self.claims_of("alice", **query), 400, "invalid")
        # Present but empty: refused, as the schema says (a cursor of one character or more, an integer), where
        # DRF would read it as absent.
        for query in [{"cursor": ""}, {"limit": ""}, {"status": ""}, {"limit": "", "cursor": ""}]:
            with self.subTest(query=query):
                self.assertIn("Must not be empty", self.assert_error(self.claims_of("alice", **query), 400, "invalid"))

    def test_user_ids_with_slashes_and_spaces(self):
        self.give("a/b c", 1)
        body = self.claims_of("a/b c").json()
        self.assertEqual((body["user_id"], len(body["claims"])), ("a/b c", 1))
