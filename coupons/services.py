"""Writes: every change to coupons and claims goes through these functions."""

from datetime import datetime

from django.db import IntegrityError, transaction

from coupons.claim_groups import claim_groups
from coupons.exceptions import (
    AlreadyClaimed,
    AmountBelowClaimed,
    ClaimNotFound,
    CouponAlreadyExists,
    CouponNotFound,
    OutOfStock,
)
from coupons.idempotency import Attempt
from coupons.models import Claim, ClaimRelease, Coupon
from coupons.outbox import CLAIM_RELEASED, COUPON_CREATED, COUPON_RESTOCKED, COUPON_SOLD_OUT, NewEvent, record_events
from coupons.sale_windows import format_utc
from coupons.selectors import get_claim_eligibility


def create_coupon(
    *, name: str, amount: int, starts_at: datetime | None = None, ends_at: datetime | None = None
) -> Coupon:
    """Create a coupon whose whole amount is still to be claimed, on sale within [starts_at, ends_at); with its
    `coupon.created` event."""
    try:
        # A savepoint, so that a duplicate name leaves any caller's
        # transaction usable.
        with transaction.atomic():
            coupon = Coupon.objects.create(name=name, amount=amount, starts_at=starts_at, ends_at=ends_at)
            window = {"starts_at": format_utc(starts_at), "ends_at": format_utc(ends_at)}
            record_events(
                coupon_id=coupon.pk,
                coupon_name=name,
                events=[NewEvent(COUPON_CREATED, {"amount": amount, **window})],
            )
            return coupon
    except IntegrityError as exc:
        if Coupon.objects.filter(name=name).exists():
            raise CouponAlreadyExists() from exc
        raise


def claim_coupon(*, user_id: str, coupon_name: str, idempotency: Attempt | None = None) -> Claim:
    """Give `user_id` one unit of the coupon, at most once per user.

    Most requests of a flash sale are refused, so refusals come first, from
    one lock-free read: a user who already holds the coupon (409, checked
    before stock, so that a repeat click after the sell-out still hears
    "already claimed"), a sale window closed at the database's clock (403),
    or an empty stock (400). The read sees committed state, so the refusal
    is true of a moment within the request: a claim shown was committed, an
    empty stock was empty then, a window closed then (a release or restock
    after that moment is a later event).

    The rest is granted under the coupon row lock, together with the other
    claims of the coupon waiting in this process (coupons/claim_groups.py):
    `select_for_update()`, the holders, the window (on the database's clock)
    and the stock re-checked, the winners inserted, a relative decrement in
    the database (`remaining_amount - n`), one commit. Claims of one coupon pass the lock one group at a time, each
    seeing the previous one's result: stock is never oversold, and the
    unique (coupon, user_id) index backs the one-claim-per-user rule in the
    database itself. The group's transaction also writes a `claim.granted`
    event per winner (and `coupon.sold_out` when the last unit goes), and
    the answer of a claim sent with an Idempotency-Key (`idempotency`).
    """
    eligibility = get_claim_eligibility(coupon_name=coupon_name, user_id=user_id)
    if eligibility.already_claimed:
        raise AlreadyClaimed()
    eligibility.window.check_open(eligibility.now)
    if eligibility.remaining_amount <= 0:
        raise OutOfStock()
    return claim_groups.claim(coupon_id=eligibility.coupon_id, user_id=user_id, attempt=idempotency)


def restock_coupon(*, coupon_name: str, amount: int) -> Coupon:
    """Set the coupon's amount, moving its remaining stock by the same difference.

    Raising the amount from 100 to 150 adds 50 units to what is left to claim;
    lowering it takes units away, but never below what has already been
    claimed, so `remaining_amount` stays within 0..amount. The coupon row is
    locked as claim_coupon locks it, so a restock and concurrent claims apply
    one after the other and none of their changes is lost. `amount` must
    already have passed the model field's validators (1..MAX_AMOUNT). Writes
    `coupon.restocked` (and `coupon.sold_out` if no stock is left now).
    """
    with transaction.atomic():
        try:
            coupon = Coupon.objects.select_for_update().get(name=coupon_name)
        except Coupon.DoesNotExist:
            raise CouponNotFound() from None
        claimed = coupon.claimed_amount
        if amount < claimed:
            raise AmountBelowClaimed(f"The amount cannot be lower than the {claimed} units already claimed.")
        remaining_before, amount_before = coupon.remaining_amount, coupon.amount
        coupon.remaining_amount = amount - claimed
        coupon.amount = amount
        coupon.save(update_fields=["amount", "remaining_amount"])
        events = [
            NewEvent(
                COUPON_RESTOCKED,
                {"amount_before": amount_before, "amount": amount, "remaining_amount": coupon.remaining_amount},
            )
        ]
        if remaining_before > 0 and coupon.remaining_amount == 0:
            events.append(NewEvent(COUPON_SOLD_OUT, {"amount": amount}))
        record_events(coupon_id=coupon.pk, coupon_name=coupon.name, events=events)
    return coupon


def release_claim(*, coupon_name: str, user_id: str, released_by: str, reason: str = "") -> ClaimRelease:
    """Give the user's claim back to stock (an order cancelled, a fraudulent claim), and record who did it and why.

    Under the coupon row lock, taken as claim_coupon takes it: the claim is
    deleted, `remaining_amount` goes up by one (a relative update in the database), and
    the release is recorded, with its `claim.released` event, all in one transaction. Claims, releases and
    restocks of one coupon thus apply one after the other, and
    `remaining_amount = amount - claims` holds between them. The user may
    then claim again while the sale is live.
    """
    with transaction.atomic():
        try:
            coupon_id = Coupon.objects.select_for_update(no_key=True).values_list("pk", flat=True).get(name=coupon_name)
        except Coupon.DoesNotExist:
            raise CouponNotFound() from None
        claim = Claim.objects.filter(coupon_id=coupon_id, user_id=user_id).values_list("pk", "created_at").first()
        if claim is None:
            raise ClaimNotFound()
        claim_id, claimed_at = claim
        Claim.objects.filter(pk=claim_id).delete()
        record_events(  # and remaining_amount + 1
            coupon_id=coupon_id,
            coupon_name=coupon_name,
            events=[NewEvent(CLAIM_RELEASED, {"user_id": user_id, "reason": reason})],
            remaining_amount_change=1,
        )
        return ClaimRelease.objects.create(
            coupon_id=coupon_id, user_id=user_id, claimed_at=claimed_at, released_by=released_by, reason=reason
        )


def schedule_sale(*, coupon_name: str, starts_at: datetime | None, ends_at: datetime | None) -> Coupon:
    """Set the coupon's sale window [starts_at, ends_at) (None: no bound).

    Only the window's two columns are written, under the coupon row lock, so
    concurrent claims' stock changes are never overwritten; a claim checks
    the window again under that same lock. The database refuses an end that
    is not after the start.
    """
    with transaction.atomic():
        try:
            coupon = Coupon.objects.select_for_update(no_key=True).get(name=coupon_name)
        except Coupon.DoesNotExist:
            raise CouponNotFound() from None
        coupon.starts_at, coupon.ends_at = starts_at, ends_at
        coupon.save(update_fields=["starts_at", "ends_at"])
    return coupon
