"""The claim path's statements keep an index plan whatever the statistics say (PostgreSQL's planner).

A database with history: 50 past coupons with 4,000 claims each, analyzed;
then a new coupon, claimed after the statistics were taken (as in a new sale:
autoanalyze waits for 10% of the table to change, so the planner believes
the new coupon has no claims). Each statement the claim path and the
workers send is EXPLAINed with the new coupon and must read claims only
through an index that bounds what it reads: no sequential scan of the
claims, and the per-user reads through the users' index (a written
`coupon_id = ...` let the planner scan every claim of the coupon:
coupons/claim_groups.py says why).
"""

import json
import unittest

from django.db import connection
from django.test import TestCase

from coupons import claim_groups, coupon_states
from coupons.claim_codes import new_claim_code
from coupons.exceptions import AlreadyClaimed
from coupons.holds import _next_deadline_sql
from coupons.models import Claim, ClaimStatus
from coupons.services import claim_coupon, create_coupon

PAST_COUPONS = 50
CLAIMS_EACH = 4000
NEW_CLAIMS = 3000


def plan_nodes(plan):
    yield plan
    for child in plan.get("Plans", ()):
        yield from plan_nodes(child)


@unittest.skipUnless(connection.vendor == "postgresql", "the planner under test is PostgreSQL's")
class PlansOnADatabaseWithHistoryTests(TestCase):
    @classmethod
    def setUpTestData(cls):
        with connection.cursor() as cursor:
            for number in range(PAST_COUPONS):
                create_coupon(name=f"PAST{number}", amount=CLAIMS_EACH)
            cursor.execute(
                "INSERT INTO coupons_claim (coupon_id, user_id, created_at, code, status, order_id)"
                " SELECT c.id, 'user' || g, now() - interval '30 days', upper(substr(md5(c.id || ':' || g), 1, 16)),"
                " 'held', '' FROM coupons_coupon c, generate_series(1, %s) g WHERE c.name LIKE 'PAST%%'",
                [CLAIMS_EACH],
            )
            cursor.execute("UPDATE coupons_coupon SET remaining_amount = 0 WHERE name LIKE 'PAST%'")
            cursor.execute("ANALYZE coupons_claim")
            cursor.execute("ANALYZE coupons_coupon")
        # The new sale, after the statistics: thousands of claims the planner knows nothing of.
        cls.coupon = create_coupon(name="NEW", amount=NEW_CLAIMS + 100, hold_seconds=3600)
        Claim.objects.bulk_create(
            Claim(coupon=cls.coupon, user_id=f"user{number}", code=new_claim_code()) for number in range(NEW_CLAIMS)
        )

    def explain(self, sql, params):
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
            plan = cursor.fetchone()[0]
        return list(plan_nodes((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]))

    def assert_claims_read_through(self, nodes, index_name):
        claim_reads = [node for node in nodes if node.get("Relation Name") == "coupons_claim"]
        self.assertTrue(claim_reads, nodes)
        for node in claim_reads:
            self.assertIn(node["Node Type"], ("Index Scan", "Index Only Scan", "Bitmap Heap Scan"), node)
            if node["Node Type"] != "Bitmap Heap Scan":
                self.assertEqual(node["Index Name"], index_name, node)
                self.assertIn("user_id", node["Index Cond"], node)
        bitmap_indexes = [node for node in nodes if node["Node Type"] == "Bitmap Index Scan"]
        for node in bitmap_indexes:
            self.assertEqual(node["Index Name"], index_name, node)

    def test_the_groups_holders_read_probes_each_user(self):
        users = [f"user{number}" for number in (5, 17, 2999, 4000)] + ["newcomer1", "newcomer2", "x", "y"]
        nodes = self.explain(claim_groups._holders_sql(len(users)), [*users, self.coupon.pk])

        self.assert_claims_read_through(nodes, "claim_user_newest_first")

    def test_the_holders_probe_of_a_refusal_from_memory(self):
        nodes = self.explain(coupon_states._holds_sql(), [self.coupon.pk, "user5"])

        self.assert_claims_read_through(nodes, "claim_user_newest_first")

    def test_the_redemption_lookup_uses_the_codes_index(self):
        code = Claim.objects.filter(coupon=self.coupon).values_list("code", flat=True).first()
        sql, params = Claim.objects.filter(code=code).values_list("id").query.sql_with_params()
        nodes = self.explain(sql, params)

        self.assertEqual({node.get("Index Name") for node in nodes if "Index Name" in node}, {"claim_code_unique"})

    def test_the_holds_deadline_lookup_uses_the_deadlines_index(self):
        nodes = self.explain(_next_deadline_sql(), [ClaimStatus.HELD])

        self.assertFalse([node for node in nodes if node["Node Type"] == "Seq Scan"], nodes)

    def test_a_claim_and_a_holders_repeat_there(self):
        self.assertEqual(claim_coupon(user_id="newcomer", coupon_name="NEW").user_id, "newcomer")
        with self.assertRaises(AlreadyClaimed):
            claim_coupon(user_id="user5", coupon_name="NEW")
