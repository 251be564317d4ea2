"""The stress scenarios through the service layer, one thread per caller.

On PostgreSQL the coupon row lock serialises the claims and releases; on
SQLite the BEGIN IMMEDIATE write lock does. Either way: never oversold,
never twice, every release accounted for.
"""

from dataclasses import asdict

import rest_framework.views  # noqa: F401 - first: coupons.api.errors is loaded through DRF's settings
from hypothesis.extra.django import TransactionTestCase

from coupons.api.errors import DOMAIN_ERRORS
from coupons.exceptions import CouponError
from coupons.selectors import get_coupon_detail
from coupons.services import claim_coupon, release_claim
from tests.stress.base import StressScenarios, run_simultaneously


def attempt(action, user_id, coupon_name):
    """The outcome as the API would name it: "claimed", "released" or the error code."""
    try:
        if action == "release":
            release_claim(coupon_name=coupon_name, user_id=user_id, released_by="stress test")
            return "released"
        claim_coupon(user_id=user_id, coupon_name=coupon_name)
    except CouponError as exc:
        return DOMAIN_ERRORS[type(exc)][1]
    return "claimed"


class ServiceStressTests(StressScenarios, TransactionTestCase):
    def fire_all(self, requests):
        return run_simultaneously([lambda request=request: attempt(*request) for request in requests])

    def read_detail(self, name):
        return asdict(get_coupon_detail(name=name))
