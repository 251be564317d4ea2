"""The stress scenarios through the service layer, one thread per caller.

On PostgreSQL the coupon row lock serialises the claims; on SQLite the
BEGIN IMMEDIATE write lock does. Either way: never oversold, never twice.
"""

from dataclasses import asdict

from hypothesis.extra.django import TransactionTestCase

from coupons.exceptions import AlreadyClaimed, CouponNotFound, OutOfStock
from coupons.selectors import get_coupon_detail
from coupons.services import claim_coupon
from tests.stress.base import StressScenarios, run_simultaneously


def attempt_claim(user_id, coupon_name):
    try:
        claim_coupon(user_id=user_id, coupon_name=coupon_name)
    except AlreadyClaimed:
        return "already_claimed"
    except OutOfStock:
        return "out_of_stock"
    except CouponNotFound:
        return "not_found"
    return "claimed"


class ServiceStressTests(StressScenarios, TransactionTestCase):
    def claim_all(self, requests):
        return run_simultaneously([lambda request=request: attempt_claim(*request) for request in requests])

    def read_detail(self, name):
        return asdict(get_coupon_detail(name=name))
