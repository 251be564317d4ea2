"""Migration 0006 on a database with claims and releases made before it: codes for all, released claims back."""

from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import TransactionTestCase

BEFORE = [("coupons", "0005_user_claims_index")]
AFTER = [("coupons", "0006_claim_lifecycle")]


class ClaimLifecycleMigrationTests(TransactionTestCase):
    def migrate(self, targets):
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(targets)
        return executor.loader.project_state(targets).apps

    def tearDown(self):
        self.migrate(executor_leaf_nodes())  # the schema as every other test expects it

    def test_existing_claims_get_codes_and_past_releases_their_claims_back(self):
        apps = self.migrate(BEFORE)
        Coupon = apps.get_model("coupons", "Coupon")
        Claim = apps.get_model("coupons", "Claim")
        ClaimRelease = apps.get_model("coupons", "ClaimRelease")
        coupon = Coupon.objects.create(name="OLD", amount=5, remaining_amount=3)
        for user in ["ann", "bob"]:
            Claim.objects.create(coupon=coupon, user_id=user)
        # cat claimed and was released; ann was released once, then claimed again (her claim above).
        for user in ["cat", "ann"]:
            ClaimRelease.objects.create(
                coupon=coupon, user_id=user, claimed_at="2026-11-01T10:00:00Z", released_by="operator"
            )

        apps = self.migrate(AFTER)
        Claim = apps.get_model("coupons", "Claim")
        ClaimRelease = apps.get_model("coupons", "ClaimRelease")

        claims = list(Claim.objects.order_by("user_id", "status").values_list("user_id", "status", "code"))
        self.assertEqual(
            [(user, status) for user, status, _ in claims],
            [("ann", "held"), ("ann", "released"), ("bob", "held"), ("cat", "released")],
        )
        codes = [code for _, _, code in claims]
        self.assertEqual(len(set(codes)), 4)
        self.assertTrue(all(len(code) == 16 for code in codes))
        for release in ClaimRelease.objects.select_related("claim"):
            self.assertEqual((release.claim.user_id, release.claim.status), (release.user_id, "released"))
            self.assertEqual(release.claim.created_at, release.claimed_at)
            self.assertEqual(release.claim.returned_at, release.released_at)
        # remaining_amount + held + redeemed = amount, as it was (3 + 2 = 5).
        self.assertEqual(Claim.objects.filter(status__in=["held", "redeemed"]).count(), 2)

        # And back: the released claims go again, as releases used to leave them.
        apps = self.migrate(BEFORE)
        self.assertEqual(
            sorted(apps.get_model("coupons", "Claim").objects.values_list("user_id", flat=True)), ["ann", "bob"]
        )


def executor_leaf_nodes():
    executor = MigrationExecutor(connection)
    return executor.loader.graph.leaf_nodes()
