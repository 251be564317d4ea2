"""Writes: every change to coupons and claims goes through these functions."""

from django.db import IntegrityError, transaction
from django.db.models import F

from coupons.exceptions import AlreadyClaimed, AmountBelowClaimed, CouponAlreadyExists, CouponNotFound, OutOfStock
from coupons.models import Claim, Coupon
from coupons.selectors import has_claimed


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

    The coupon row is locked for the whole transaction, so claims of one
    coupon run one at a time and each sees the previous one's result: stock
    can never be oversold and a user's second claim always sees the first.
    On PostgreSQL the lock is `SELECT ... FOR UPDATE`. On SQLite
    `select_for_update()` does nothing; there the transaction itself starts
    with BEGIN IMMEDIATE (settings: transaction_mode), taking the database's
    write lock before the first read, which serialises claims just the same.

    A repeat claimer is refused before the stock check, so that a user who
    already holds the coupon hears "already claimed" (409) rather than "sold
    out" (400) once stock runs out.
    """
    try:
        with transaction.atomic():
            try:
                coupon = Coupon.objects.select_for_update().get(name=coupon_name)
            except Coupon.DoesNotExist:
                raise CouponNotFound() from None
            if has_claimed(coupon_id=coupon.pk, user_id=user_id):
                raise AlreadyClaimed()
            if coupon.remaining_amount <= 0:
                raise OutOfStock()
            claim = Claim.objects.create(coupon=coupon, user_id=user_id)
            Coupon.objects.filter(pk=coupon.pk).update(remaining_amount=F("remaining_amount") - 1)
    except IntegrityError as exc:
        # The unique (coupon, user_id) constraint is the last line of defence
        # should a duplicate ever get past the locked check. The error is
        # caught outside atomic(): the whole transaction has been rolled
        # back, so nothing was claimed and no connection is left broken.
        if has_claimed(coupon_id=coupon.pk, user_id=user_id):
            raise AlreadyClaimed() from exc
        raise
    return claim


def restock_coupon(*, coupon_name: str, amount: int) -> Coupon:
    """Set the coupon's amount, moving its remaining stock by the same difference.

    Raising the amount from 100 to 150 adds 50 units to what is left to claim;
    lowering it takes units away, but never below what has already been
    claimed, so `remaining_amount` stays within 0..amount. The coupon row is
    locked as claim_coupon locks it, so a restock and concurrent claims apply
    one after the other and none of their changes is lost. `amount` must
    already have passed the model field's validators (1..MAX_AMOUNT).
    """
    with transaction.atomic():
        try:
            coupon = Coupon.objects.select_for_update().get(name=coupon_name)
        except Coupon.DoesNotExist:
            raise CouponNotFound() from None
        claimed = coupon.claimed_amount
        if amount < claimed:
            raise AmountBelowClaimed(f"The amount cannot be lower than the {claimed} units already claimed.")
        coupon.remaining_amount = amount - claimed
        coupon.amount = amount
        coupon.save(update_fields=["amount", "remaining_amount"])
    return coupon
