"""The two scenarios that define "correct", through the service layer.

On PostgreSQL the coupon row lock serialises the claims; on SQLite the
BEGIN IMMEDIATE write lock does. Either way: never oversold, never twice.
"""

from coupons.exceptions import AlreadyClaimed, OutOfStock
from coupons.services import claim_coupon, create_coupon
from tests.stress.base import REPETITIONS, StressTestCase, run_simultaneously


def attempt_claim(user_id, coupon_name):
    try:
        claim_coupon(user_id=user_id, coupon_name=coupon_name)
    except AlreadyClaimed:
        return "already_claimed"
    except OutOfStock:
        return "out_of_stock"
    return "claimed"


class FlashSaleTests(StressTestCase):
    def test_fifty_users_race_for_five_coupons(self):
        for round_number in range(REPETITIONS):
            with self.subTest(round=round_number):
                name = f"FLASH_{round_number}"
                create_coupon(name=name, amount=5)
                users = [f"user_{round_number}_{i}" for i in range(50)]

                outcomes = run_simultaneously([lambda user=user: attempt_claim(user, name) for user in users])

                winners = [user for user, outcome in zip(users, outcomes, strict=True) if outcome == "claimed"]
                detail = self.assert_sale_outcome(
                    name,
                    outcomes=outcomes,
                    expected_counts={"claimed": 5, "out_of_stock": 45},
                    expected_winners=winners,
                )
                self.assertEqual(detail.remaining_amount, 0)
                self.assertEqual(sorted(detail.claimed_by), sorted(winners))


class DoubleDipTests(StressTestCase):
    def test_one_user_claims_ten_times_at_once(self):
        for round_number in range(REPETITIONS):
            with self.subTest(round=round_number):
                name = f"DIP_{round_number}"
                create_coupon(name=name, amount=100)
                user = f"dipper_{round_number}"

                outcomes = run_simultaneously([lambda: attempt_claim(user, name)] * 10)

                detail = self.assert_sale_outcome(
                    name,
                    outcomes=outcomes,
                    expected_counts={"claimed": 1, "already_claimed": 9},
                    expected_winners=[user],
                )
                self.assertEqual(detail.remaining_amount, 99)
