"""Property: random interleavings of claims, releases, deadlines passing and expiries across a campaign's coupons.

A Hypothesis state machine keeps a model of one campaign (max_claims 3, max_claims_per_user 2) over three
coupons of 2 units with holds: who holds which coupon, which holds are past their deadline. Each step runs
through the services on the real database; every answer must be the one the model predicts (in the documented
order: already_claimed, out_of_stock, campaign_limit_reached, campaign_exhausted), and after every step the
campaign's counter must equal its coupons' live claims, and each coupon's stock its own.
"""

import itertools
from datetime import timedelta

from django.test import TestCase
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from campaigns.exceptions import CampaignExhausted, CampaignLimitReached
from campaigns.models import Campaign
from campaigns.services import create_campaign
from coupons.exceptions import AlreadyClaimed, ClaimNotFound, OutOfStock
from coupons.holds import expire_holds
from coupons.models import LIVE_STATUSES, Claim, Coupon
from coupons.selectors import database_now
from coupons.services import claim_coupon, create_coupon, release_claim
from tests.test_redemption_machine import check

USERS = ("ann", "bob", "cat")
RUNS = itertools.count()
MAX_CLAIMS, PER_USER, STOCK = 3, 2, 2


class CampaignMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        run = next(RUNS)
        self.campaign = f"CAMPAIGN {run}"
        create_campaign(name=self.campaign, max_claims=MAX_CLAIMS, max_claims_per_user=PER_USER)
        self.coupons = [f"{self.campaign}/{i}" for i in range(3)]
        for name in self.coupons:
            create_coupon(name=name, amount=STOCK, hold_seconds=3600, options={"campaign": self.campaign})
        self.live = {}  # (user, coupon) -> overdue?

    def expected_refusal(self, user, coupon):
        if (user, coupon) in self.live:
            return AlreadyClaimed
        if sum(1 for _, c in self.live if c == coupon) >= STOCK:
            return OutOfStock
        if sum(1 for u, _ in self.live if u == user) >= PER_USER:
            return CampaignLimitReached
        if len(self.live) >= MAX_CLAIMS:
            return CampaignExhausted
        return None

    @rule(user=st.sampled_from(USERS), index=st.integers(0, 2))
    def claim(self, user, index):
        coupon = self.coupons[index]
        expected = self.expected_refusal(user, coupon)
        try:
            claim_coupon(user_id=user, coupon_name=coupon)
        except (AlreadyClaimed, OutOfStock, CampaignLimitReached, CampaignExhausted) as exc:
            check(type(exc) is expected, (type(exc), expected))
            return
        check(expected is None, f"granted, expected {expected}")
        self.live[(user, coupon)] = False

    @rule(user=st.sampled_from(USERS), index=st.integers(0, 2))
    def release(self, user, index):
        coupon = self.coupons[index]
        try:
            release_claim(coupon_name=coupon, user_id=user, released_by="machine")
        except ClaimNotFound:
            check((user, coupon) not in self.live)
            return
        del self.live[(user, coupon)]

    @rule(user=st.sampled_from(USERS), index=st.integers(0, 2))
    def pass_the_deadline(self, user, index):
        coupon = self.coupons[index]
        if (user, coupon) not in self.live:
            return
        Claim.objects.filter(coupon__name=coupon, user_id=user, status__in=LIVE_STATUSES).update(
            expires_at=database_now() - timedelta(milliseconds=1)
        )
        self.live[(user, coupon)] = True

    @rule()
    def expire(self):
        due = [key for key, overdue in self.live.items() if overdue]
        check(expire_holds() == len(due))
        for key in due:
            del self.live[key]

    def teardown(self):
        expire_holds()

    @invariant()
    def the_counter_and_the_stocks_agree_with_the_model(self):
        check(Campaign.objects.get(name=self.campaign).taken == len(self.live))
        for coupon in self.coupons:
            holders = sorted(u for u, c in self.live if c == coupon)
            rows = sorted(
                Claim.objects.filter(coupon__name=coupon, status__in=LIVE_STATUSES).values_list("user_id", flat=True)
            )
            check(rows == holders, (coupon, rows, holders))
            check(Coupon.objects.get(name=coupon).remaining_amount == STOCK - len(holders))


class CampaignMachineTests(TestCase):
    def test_random_interleavings_keep_both_caps_and_the_counter_exact(self):
        run_state_machine_as_test(
            CampaignMachine,
            settings=settings(
                max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
            ),
        )
