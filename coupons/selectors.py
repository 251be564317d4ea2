"""Reads: queries the API and the admin render."""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from coupons.exceptions import CouponNotFound
from coupons.models import Claim, Coupon


@dataclass(frozen=True)
class CouponDetail:
    name: str
    amount: int
    remaining_amount: int
    claimed_by: list[str]


def get_coupon_detail(*, name: str) -> CouponDetail:
    """The coupon with the ids of its claimers, in the order they claimed.

    One statement (coupon LEFT JOIN claims) reads one snapshot, so
    `claimed_by` always holds exactly `amount - remaining_amount` users, even
    while claims are committing.
    """
    rows = list(
        Coupon.objects.filter(name=name)
        .order_by("claims__id")
        .values_list("amount", "remaining_amount", "claims__user_id")
    )
    if not rows:
        raise CouponNotFound()
    amount, remaining_amount, first_claimer = rows[0]
    return CouponDetail(
        name=name,
        amount=amount,
        remaining_amount=remaining_amount,
        claimed_by=[] if first_claimer is None else [user_id for _, _, user_id in rows],
    )


def has_claimed(*, coupon_id: int, user_id: str) -> bool:
    return Claim.objects.filter(coupon_id=coupon_id, user_id=user_id).exists()


def coupon_claims(*, coupon_id: int):
    """The coupon's claims, newest first, as rows of user id and claim time (to be sliced into pages)."""
    return Claim.objects.filter(coupon_id=coupon_id).order_by("-id").values("user_id", "created_at")


# Rows fetched per round trip when streaming claims out.
EXPORT_CHUNK_SIZE = 2000


def iter_claims_for_export(*, coupon_ids: Iterable[int]) -> Iterator[tuple[str, str, datetime]]:
    """(coupon name, user id, claim time) for every claim of the coupons, in claim order.

    Streamed in chunks (a server-side cursor on PostgreSQL): memory stays
    flat however many claims there are.
    """
    return (
        Claim.objects.filter(coupon_id__in=list(coupon_ids))
        .order_by("coupon_id", "id")
        .values_list("coupon__name", "user_id", "created_at")
        .iterator(chunk_size=EXPORT_CHUNK_SIZE)
    )
