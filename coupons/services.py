"""Writes: every change to coupons and claims goes through these functions."""

import dataclasses
from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.functions import Now

from coupons import extensions, imported_codes
from coupons.claim_codes import format_code
from coupons.claim_groups import claim_groups
from coupons.coupon_states import coupon_changed, coupon_states
from coupons.exceptions import (
    AlreadyRedeemed,
    AmountBelowClaimed,
    ClaimExpired,
    ClaimNotFound,
    CodeNotFound,
    CouponAlreadyExists,
    CouponNotFound,
    ImportRejected,
    NotRedeemed,
    RedemptionClosed,
)
from coupons.idempotency import Attempt
from coupons.models import LIVE_STATUSES, Claim, ClaimRelease, ClaimStatus, Coupon, RedemptionUndo
from coupons.outbox import (
    CLAIM_RELEASED,
    COUPON_CREATED,
    COUPON_RESTOCKED,
    COUPON_SOLD_OUT,
    REDEMPTION_REDEEMED,
    REDEMPTION_UNDONE,
    NewEvent,
    record_events,
)
from coupons.sale_windows import format_utc
from coupons.selectors import REDEMPTION_COLUMNS, Redemption


def create_coupon(
    *,
    name: str,
    amount: int,
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
    hold_seconds: int | None = None,
    redeem_until: datetime | None = None,
    options: dict | None = None,
) -> Coupon:
    """Create a coupon whose whole amount is still to be claimed, on sale within [starts_at, ends_at), with its
    `coupon.created` event.

    With `hold_seconds`, a claim not redeemed that long after it was granted
    expires and gives its unit back (coupons/holds.py); with `redeem_until`,
    redemptions are refused from that instant on. `options`: the extensions'
    create fields (coupons/extensions.py), each extension given its own, in
    the same transaction.
    """
    try:
        # A savepoint, so that a duplicate name leaves any caller's
        # transaction usable.
        with transaction.atomic():
            coupon = Coupon.objects.create(
                name=name,
                amount=amount,
                starts_at=starts_at,
                ends_at=ends_at,
                hold_seconds=hold_seconds,
                redeem_until=redeem_until,
            )
            data = {
                "amount": amount,
                "starts_at": format_utc(starts_at),
                "ends_at": format_utc(ends_at),
                "hold_seconds": hold_seconds,
                "redeem_until": format_utc(redeem_until),
            }
            events = [NewEvent(COUPON_CREATED, data)]
            for extension in extensions.registered():
                fields = extension.create_fields.keys() | extension.admin_create_fields.keys()
                own = {field: value for field, value in (options or {}).items() if field in fields}
                events.extend(extension.coupon_created(coupon=coupon, options=own))
            record_events(coupon_id=coupon.pk, coupon_name=name, events=events)
            coupon_changed(coupon_id=coupon.pk, name=name)  # processes that answered 404 for the name forget it
            return coupon
    except IntegrityError as exc:
        if Coupon.objects.filter(name=name).exists():
            raise CouponAlreadyExists() from exc
        raise


def claim_coupon(
    *, user_id: str, coupon_name: str, idempotency: Attempt | None = None, claim_input: dict | None = None
) -> Claim:
    """Give `user_id` one unit of the coupon, at most once per user.

    Most requests of a flash sale are refused, so a claim this process can
    only refuse is refused from what it already knows of the coupon
    (coupons/coupon_states.py): no such coupon (404), a holder's repeat
    (409, checked before the window and the stock, so that a repeat click
    after the sell-out still hears "already claimed"), a sale window closed
    by the database's clock (403), or a stock the database has said is
    empty (400). That knowledge is stale only in the refusing direction: it
    can refuse a claim a returned unit would have served (for a bounded
    time), never grant one.

    Every other claim is judged by the database, under the coupon row lock,
    together with the other claims of the coupon waiting in this process
    (coupons/claim_groups.py): `select_for_update()`, the holders, the
    window (on the database's clock) and the stock checked, the winners
    inserted, a relative decrement (`remaining_amount - n`, as F() writes
    it), one commit. Claims of one coupon pass the lock one group at a
    time, each seeing the previous one's result: stock is never oversold,
    and the unique (coupon, user_id) index of live claims backs the
    one-claim-per-user rule in the database itself. The group's transaction
    also writes a `claim.granted` event per winner (and `coupon.sold_out`
    when the last unit goes), and the answer of a claim sent with an
    Idempotency-Key (`idempotency`).

    Extensions that judge this coupon's claims (coupons/extensions.py) see
    the request's optional fields (`claim_input`: admission_token...) first,
    then judge each member in the group's transaction.
    """
    state = coupon_states.lookup(coupon_name, user_id)
    if (refusal := coupon_states.refusal(state, user_id)) is not None:
        raise refusal
    prepared = tuple(
        extension.prepare_claim(coupon_id=state.coupon_id, user_id=user_id, claim_input=claim_input or {})
        for extension in state.extensions
    )
    return claim_groups.claim(
        coupon_id=state.coupon_id, user_id=user_id, attempt=idempotency, extensions=state.extensions, prepared=prepared
    )


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
        coupon_changed(coupon_id=coupon.pk, name=coupon.name)
    return coupon


def release_claim(*, coupon_name: str, user_id: str, released_by: str, reason: str = "") -> ClaimRelease:
    """Give the user's live claim back to stock (an order cancelled, a fraudulent claim), and record who did it and why.

    In one transaction: the user's live claim is locked (its row, as a
    redemption locks it: the two apply one after the other), becomes
    `released`, the release is recorded, and `remaining_amount` goes up by
    one with an F() expression, which takes the coupon row lock as
    claim_coupon takes it, with the `claim.released` event. Everything that
    changes whether a claim holds a unit (claims, releases, expiries) and
    restocks change the stock under that lock, so they apply one after the
    other and `remaining_amount + held + redeemed = amount` holds between
    them. The user may then claim again while the sale is live.
    """
    with transaction.atomic():
        claim = (
            Claim.objects.select_for_update(no_key=True, of=("self",))
            .filter(coupon__name=coupon_name, user_id=user_id, status__in=LIVE_STATUSES)
            .values_list("pk", "coupon_id", "created_at", "code")
            .first()
        )
        if claim is None:
            if not Coupon.objects.filter(name=coupon_name).exists():
                raise CouponNotFound()
            raise ClaimNotFound()
        claim_id, coupon_id, claimed_at, code = claim
        release = ClaimRelease.objects.create(
            coupon_id=coupon_id,
            claim_id=claim_id,
            user_id=user_id,
            claimed_at=claimed_at,
            released_by=released_by,
            reason=reason,
        )
        Claim.objects.filter(pk=claim_id).update(status=ClaimStatus.RELEASED, returned_at=release.released_at)
        Coupon.objects.filter(pk=coupon_id).update(remaining_amount=F("remaining_amount") + 1)
        for extension in extensions.registered():
            extension.units_returned(coupon_id=coupon_id, claims=[(claim_id, user_id)])
        event = NewEvent(CLAIM_RELEASED, {"user_id": user_id, "code": format_code(code), "reason": reason})
        record_events(coupon_id=coupon_id, coupon_name=coupon_name, events=[event])
        coupon_changed(coupon_id=coupon_id, name=coupon_name)  # a unit back: no process may go on refusing
        return release


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
        coupon_changed(coupon_id=coupon.pk, name=coupon.name)
    return coupon


def redeem_claim(*, code: str, order_id: str = "", coupon_name: str | None = None) -> Redemption:
    """Spend the claim whose code is `code` (bare, as normalise_code gives it) on the shop's order `order_id`.

    Exactly once: under the claim's row lock (SELECT ... FOR NO KEY UPDATE;
    on SQLite, the database's write lock), its status is read and, if it is
    held, within its hold and before the coupon's `redeem_until` by the
    database's clock, set to `redeemed` in the same transaction, with its
    `redemption.redeemed` event. Concurrent redemptions of one code queue at
    the lock and each reads what the one before it committed: one succeeds,
    the others hear AlreadyRedeemed with when and for which order. An expiry
    locks the claim too, so a redemption and an expiry of one claim end as
    exactly one of the two (and write exactly one of their events). The
    stock does not change: a redeemed claim still holds its unit. The
    event takes the coupon row lock (its `sequence` is the coupon's next),
    last, for one statement and the commit (coupons/outbox.py).

    With `coupon_name`, a code of another coupon is refused as not found.
    """
    with transaction.atomic():
        coupon_id, claim_id, claim, redeem_until, now = _lock_claim(code)
        if coupon_name is not None and claim.coupon_name != coupon_name:
            raise CodeNotFound("No claim of this coupon has this code.")
        if claim.status == ClaimStatus.REDEEMED:
            raise AlreadyRedeemed(
                f"This code was redeemed at {format_utc(claim.redeemed_at)}"
                + (f" for order {claim.order_id}." if claim.order_id else "."),
                redeemed_at=claim.redeemed_at,
                order_id=claim.order_id,
            )
        _check_holds_its_unit(claim, now)
        if redeem_until is not None and now >= redeem_until:
            raise RedemptionClosed(f"Redemptions of this coupon closed at {format_utc(redeem_until)}.")
        Claim.objects.filter(pk=claim_id).update(status=ClaimStatus.REDEEMED, redeemed_at=now, order_id=order_id)
        _record_redemption_event(coupon_id, claim, REDEMPTION_REDEEMED, order_id=order_id or None)
    return dataclasses.replace(claim, status=ClaimStatus.REDEEMED, redeemed_at=now, order_id=order_id)


def undo_redemption(*, code: str, undone_by: str, reason: str = "") -> RedemptionUndo:
    """Undo the redemption of the claim whose code is `code` (its order was cancelled): the claim is held again.

    Its unit stays taken (it goes back to stock only if the hold expires or
    an operator releases it), and its hold keeps the deadline it had: a
    claim undone after that deadline expires at the expiry worker's next
    pass. The redemption undone is recorded (RedemptionUndo) with its
    `redemption.undone` event, in the same transaction, under the claim's
    row lock as redeem_claim takes it.
    """
    with transaction.atomic():
        coupon_id, claim_id, claim, _, _ = _lock_claim(code)
        if claim.status == ClaimStatus.HELD:
            raise NotRedeemed()
        _check_holds_its_unit(claim, now=None)
        undone = RedemptionUndo.objects.create(
            claim_id=claim_id,
            order_id=claim.order_id,
            redeemed_at=claim.redeemed_at,
            undone_by=undone_by,
            reason=reason,
        )
        Claim.objects.filter(pk=claim_id).update(status=ClaimStatus.HELD, redeemed_at=None, order_id="")
        _record_redemption_event(coupon_id, claim, REDEMPTION_UNDONE, order_id=claim.order_id or None, reason=reason)
    return undone


def _lock_claim(code):
    """(coupon id, claim id, Redemption, the coupon's redeem_until, the database's clock) of the claim whose code is
    `code`, locked until the transaction ends (its row: the coupon's is locked later, only to number the event)."""
    row = (
        Claim.objects.select_for_update(no_key=True, of=("self",))
        .filter(code=code)
        .annotate(now=Now())
        .values_list("coupon_id", "id", *REDEMPTION_COLUMNS, "coupon__redeem_until", "now")
        .first()
    )
    if row is None:
        raise CodeNotFound()
    coupon_id, claim_id, *columns, redeem_until, now = row
    return coupon_id, claim_id, Redemption(*columns), redeem_until, now


def _record_redemption_event(coupon_id, claim, event_type, **data):
    event = NewEvent(event_type, {"user_id": claim.user_id, "code": format_code(claim.code), **data})
    record_events(coupon_id=coupon_id, coupon_name=claim.coupon_name, events=[event])


def _check_holds_its_unit(claim, now):
    """Raise ClaimExpired unless the claim still holds its unit: released, expired, or (at `now`) past its deadline."""
    if claim.status == ClaimStatus.RELEASED:
        raise ClaimExpired("This claim was released by an operator: its unit went back to stock.")
    if claim.status == ClaimStatus.EXPIRED or (
        now is not None and claim.expires_at is not None and now >= claim.expires_at
    ):
        raise ClaimExpired(f"This claim's hold expired at {format_utc(claim.expires_at)}: its unit goes back to stock.")


@dataclasses.dataclass(frozen=True)
class CodeImport:
    coupon_name: str
    imported: int  # codes this import added
    unused_codes: int  # the coupon's imported codes not handed out yet
    amount: int
    remaining_amount: int


def import_codes(*, coupon_name: str, stream, content_format: str, amount: int | None = None) -> CodeImport:
    """Import the shop's codes for the coupon's claims: all of them, or none (ImportRejected says which rows, by line).

    `stream` (anything with `read(size)` giving bytes) holds CSV or JSON lines
    (`content_format`: imported_codes.CSV or JSON_LINES), read as it comes
    (coupons/imported_codes.py: streamed into a staging table, then checked
    and inserted set-wise). Refused: malformed codes, a code
    twice in the rows, a code already in use (imported before, by any
    coupon, or a claim's). Then, under the coupon row lock, its claims draw
    imported codes, and its stock is what its codes can serve: `amount` =
    the units its live claims hold + its unused codes, or the operator's
    `amount` if lower (never below what is claimed); `remaining_amount`
    moves with it, with a `coupon.restocked` event.
    """
    if not Coupon.objects.filter(name=coupon_name).exists():
        raise CouponNotFound()  # before a byte of the body is read
    with transaction.atomic():
        imported_codes.lock_imports()
        staged = imported_codes.stage(stream=stream, content_format=content_format)
        if staged == 0:
            raise ImportRejected("No codes were sent.")
        coupon_id = imported_codes.hold_coupon(name=coupon_name)
        if coupon_id is None:
            raise CouponNotFound()  # deleted while the codes were read
        if not imported_codes.insert_staged(coupon_id=coupon_id, content_format=content_format, rows=staged):
            errors, total = imported_codes.staged_errors(
                content_format=content_format, room=imported_codes.MAX_REPORTED_ERRORS
            )
            raise ImportRejected(
                f"{total} rows were refused (the first {len(errors)} are listed by line): nothing was imported.",
                errors=errors,
                error_count=total,
            )
        # Last, and briefly: claims of the coupon went on while the codes were read.
        coupon = Coupon.objects.select_for_update(no_key=True).get(pk=coupon_id)
        claimed = coupon.claimed_amount
        unused = imported_codes.unused_count(coupon_id=coupon_id)
        most = claimed + unused
        if amount is not None and amount > most:
            raise ImportRejected(f"The amount cannot be more than the {most} units the coupon's codes can serve.")
        if amount is not None and amount < claimed:
            raise AmountBelowClaimed(f"The amount cannot be lower than the {claimed} units already claimed.")
        amount_before, remaining_before = coupon.amount, coupon.remaining_amount
        coupon.amount = most if amount is None else amount
        coupon.remaining_amount = coupon.amount - claimed
        coupon.imported_codes = True
        coupon.save(update_fields=["amount", "remaining_amount", "imported_codes"])
        events = [
            NewEvent(
                COUPON_RESTOCKED,
                {"amount_before": amount_before, "amount": coupon.amount, "remaining_amount": coupon.remaining_amount},
            )
        ]
        if remaining_before > 0 and coupon.remaining_amount == 0:
            events.append(NewEvent(COUPON_SOLD_OUT, {"amount": coupon.amount}))
        record_events(coupon_id=coupon_id, coupon_name=coupon_name, events=events)
    return CodeImport(coupon_name, staged, unused, coupon.amount, coupon.remaining_amount)
