"""Property: random interleavings of claim, redeem, undo, release, deadline passing, expire and restock.

A Hypothesis state machine keeps a model of one coupon (who holds a live
claim, redeemed or not, which holds are past their deadline) and runs each
step through the services on the real database. Every answer must be the
one the model predicts, and after every step the database must agree with
the model: remaining_amount + held + redeemed = amount, the statuses, the
API's detail.
"""

import itertools
from datetime import timedelta

from django.db.models import F
from django.test import TestCase
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from coupons.exceptions import (
    AlreadyClaimed,
    AlreadyRedeemed,
    AmountBelowClaimed,
    ClaimExpired,
    ClaimNotFound,
    NotRedeemed,
    OutOfStock,
)
from coupons.holds import expire_holds
from coupons.models import Claim, ClaimStatus, Coupon
from coupons.selectors import database_now, get_coupon_detail
from coupons.services import (
    claim_coupon,
    create_coupon,
    redeem_claim,
    release_claim,
    restock_coupon,
    undo_redemption,
)

USERS = ("ann", "bob", "cat", "dan")
COUPONS = itertools.count()


def check(condition, why=None):
    """An assertion that survives `python -O` (and ruff's S101): a state machine's checks are plain functions."""
    if not condition:
        raise AssertionError(why)


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        # A coupon of its own per run: runs share the test's database.
        self.name = f"MACHINE {next(COUPONS)}"
        self.amount = 2
        create_coupon(name=self.name, amount=self.amount, hold_seconds=3600)
        self.live = {}  # user -> {"code", "redeemed": bool, "overdue": bool}
        self.ended = {}  # code -> "released" | "expired"
        self.order = []  # live users, in claim order

    @property
    def remaining(self):
        return self.amount - len(self.live)

    def expect(self, error, call):
        try:
            call()
        except error:
            return
        raise AssertionError(f"expected {error.__name__}")

    @rule(user=st.sampled_from(USERS))
    def claim(self, user):
        if user in self.live:
            self.expect(AlreadyClaimed, lambda: claim_coupon(user_id=user, coupon_name=self.name))
        elif self.remaining == 0:
            self.expect(OutOfStock, lambda: claim_coupon(user_id=user, coupon_name=self.name))
        else:
            claim = claim_coupon(user_id=user, coupon_name=self.name)
            check(claim.code not in self.ended and all(c["code"] != claim.code for c in self.live.values()))
            self.live[user] = {"code": claim.code, "redeemed": False, "overdue": False}
            self.order.append(user)

    @rule(user=st.sampled_from(USERS), order=st.sampled_from(["", "order-1", "order-2"]))
    def redeem(self, user, order):
        claim = self.live.get(user)
        if claim is None:
            return
        if claim["redeemed"]:
            self.expect(AlreadyRedeemed, lambda: redeem_claim(code=claim["code"], order_id=order))
        elif claim["overdue"]:
            self.expect(ClaimExpired, lambda: redeem_claim(code=claim["code"], order_id=order))
        else:
            check(redeem_claim(code=claim["code"], order_id=order).order_id == order)
            claim["redeemed"] = True

    @rule(data=st.data())
    def redeem_an_ended_claim(self, data):
        if self.ended:
            code = data.draw(st.sampled_from(sorted(self.ended)))
            self.expect(ClaimExpired, lambda: redeem_claim(code=code))
            self.expect(ClaimExpired, lambda: undo_redemption(code=code, undone_by="machine"))

    @rule(user=st.sampled_from(USERS))
    def undo(self, user):
        claim = self.live.get(user)
        if claim is None:
            return
        if not claim["redeemed"]:
            self.expect(NotRedeemed, lambda: undo_redemption(code=claim["code"], undone_by="machine"))
        else:
            undo_redemption(code=claim["code"], undone_by="machine")
            claim["redeemed"] = False

    @rule(user=st.sampled_from(USERS))
    def release(self, user):
        if user not in self.live:
            self.expect(ClaimNotFound, lambda: release_claim(coupon_name=self.name, user_id=user, released_by="m"))
            return
        release_claim(coupon_name=self.name, user_id=user, released_by="machine")
        self.ended[self.live.pop(user)["code"]] = "released"
        self.order.remove(user)

    @rule(user=st.sampled_from(USERS))
    def pass_the_deadline(self, user):
        """The hold's deadline passes (it is moved into the past; redeemed claims keep theirs after redemption)."""
        claim = self.live.get(user)
        if claim is None or claim["redeemed"]:
            return
        Claim.objects.filter(code=claim["code"]).update(expires_at=database_now() - timedelta(milliseconds=1))
        claim["overdue"] = True

    @rule()
    def expire(self):
        due = [user for user, claim in self.live.items() if claim["overdue"] and not claim["redeemed"]]
        check(expire_holds() == len(due), "each overdue hold expires once, and only those")
        for user in due:
            self.ended[self.live.pop(user)["code"]] = "expired"
            self.order.remove(user)

    @rule(amount=st.integers(1, 5))
    def restock(self, amount):
        if amount < len(self.live):
            self.expect(AmountBelowClaimed, lambda: restock_coupon(coupon_name=self.name, amount=amount))
        else:
            restock_coupon(coupon_name=self.name, amount=amount)
            self.amount = amount

    @precondition(lambda self: any(c["redeemed"] for c in self.live.values()))
    @rule()
    def undo_a_redemption_whose_hold_deadline_has_passed(self):
        # An undone claim whose deadline passed while it was redeemed: its deadline set just after the
        # redemption (the database refuses one before it), then found overdue like any other.
        user = next(u for u, c in self.live.items() if c["redeemed"])
        Claim.objects.filter(code=self.live[user]["code"]).update(
            expires_at=F("redeemed_at") + timedelta(microseconds=1)
        )
        undo_redemption(code=self.live[user]["code"], undone_by="machine")
        self.live[user].update(redeemed=False, overdue=True)

    def teardown(self):
        # expire_holds() works on every coupon: leave no overdue hold to the next run's count.
        expire_holds()

    @invariant()
    def the_database_agrees_with_the_model(self):
        coupon = Coupon.objects.get(name=self.name)
        rows = {code: status for code, status in Claim.objects.filter(coupon=coupon).values_list("code", "status")}
        held = sum(1 for s in rows.values() if s == ClaimStatus.HELD)
        redeemed = sum(1 for s in rows.values() if s == ClaimStatus.REDEEMED)
        check(coupon.amount == self.amount)
        check(coupon.remaining_amount + held + redeemed == coupon.amount)
        check(coupon.remaining_amount == self.remaining)
        expected = {c["code"]: "redeemed" if c["redeemed"] else "held" for c in self.live.values()} | self.ended
        check(rows == expected, (rows, expected))
        detail = get_coupon_detail(name=self.name)
        check(detail.claimed_by == self.order)
        check((detail.held_amount, detail.redeemed_amount) == (held, redeemed))


class LifecycleMachineTests(TestCase):
    def test_random_interleavings_keep_the_invariant_and_every_answer(self):
        run_state_machine_as_test(
            LifecycleMachine,
            settings=settings(
                max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
            ),
        )
