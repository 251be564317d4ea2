"""Writes: every change to coupons and claims goes through these functions."""

from django.db import IntegrityError, transaction
from django.db.models import F

from coupons.exceptions import AlreadyClaimed, CouponAlreadyExists, CouponNotFound, OutOfStock
from coupons.models import Claim, Coupon
from coupons.selectors import get_claim_eligibility, has_claimed


def create_coupon(*, name: str, amount: int) -> Coupon:
    """Create a coupon whose whole amount is still to be claimed."""
    try:
        # A savepoint, so that a duplicate name leaves any caller's
        # transaction usable.
        with transaction.atomic():
            return Coupon.objects.create(name=name, amount=amount)
    except IntegrityError as exc:
        if Coupon.objects.filter(name=name).exists():
            raise CouponAlreadyExists() from exc
        raise


def claim_coupon(*, user_id: str, coupon_name: str) -> Claim:
    """Give `user_id` one unit of the coupon, at most once per user.

    Most requests of a flash sale are refused, so refusals come first, from
    one lock-free read: a user who already holds the coupon (409, checked
    before stock, so that a repeat click after the sell-out still hears
    "already claimed") or an empty stock (400). Both facts only ever become
    true, never false again, so the read proves them without the lock.

    Then one transaction, which holds the coupon row lock for as little as
    possible: the claim is inserted first (the unique (coupon, user_id)
    index refuses a concurrent duplicate), then the row is locked with
    `SELECT ... FOR NO KEY UPDATE` (which, unlike FOR UPDATE, does not block
    other claims' foreign-key checks), the stock re-checked under the lock
    and decremented with an F() expression, and the transaction committed.
    Claims of one coupon thus pass the lock one at a time, each seeing the
    previous one's result: stock is never oversold.

    On SQLite `select_for_update()` does nothing; there the transaction
    starts with BEGIN IMMEDIATE (settings: transaction_mode), taking the
    database's write lock before the insert, which serialises claims just
    the same.
    """
    eligibility = get_claim_eligibility(coupon_name=coupon_name, user_id=user_id)
    if eligibility.already_claimed:
        raise AlreadyClaimed()
    if eligibility.remaining_amount <= 0:
        raise OutOfStock()
    coupon_id = eligibility.coupon_id
    try:
        with transaction.atomic():
            claim = Claim.objects.create(coupon_id=coupon_id, user_id=user_id)
            try:
                remaining_amount = (
                    Coupon.objects.select_for_update(no_key=True)
                    .values_list("remaining_amount", flat=True)
                    .get(pk=coupon_id)
                )
            except Coupon.DoesNotExist:
                raise CouponNotFound() from None  # deleted since the read
            if remaining_amount <= 0:
                raise OutOfStock()  # sold out since the read: the insert is rolled back
            Coupon.objects.filter(pk=coupon_id).update(remaining_amount=F("remaining_amount") - 1)
    except IntegrityError as exc:
        # A concurrent claim by the same user committed first. The error is
        # caught outside atomic(): the transaction was rolled back as a
        # whole (no savepoint needed), so nothing was claimed.
        if has_claimed(coupon_id=coupon_id, user_id=user_id):
            raise AlreadyClaimed() from exc
        raise
    return claim
