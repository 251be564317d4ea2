"""Reads: queries the API and the admin render."""

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from django.db import connection

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


@dataclass(frozen=True)
class ClaimEligibility:
    coupon_id: int
    remaining_amount: int
    already_claimed: bool


@functools.cache
def _eligibility_sql():
    quote = connection.ops.quote_name
    return (
        f"SELECT c.id, c.remaining_amount, EXISTS ("  # noqa: S608 - only model table names are interpolated
        f"SELECT 1 FROM {quote(Claim._meta.db_table)} u WHERE u.coupon_id = c.id AND u.user_id = %s"
        f") FROM {quote(Coupon._meta.db_table)} c WHERE c.name = %s"
    )


def get_claim_eligibility(*, coupon_name: str, user_id: str) -> ClaimEligibility:
    """The coupon's stock and whether the user holds it, in one lock-free read.

    It sees committed state: a claim shown is never undone, and an empty
    stock was empty at that moment, so either proves a refusal without the
    row lock.

    Every claim request makes this read, so it is written in SQL (portable
    to PostgreSQL and SQLite): building the same query with the ORM's
    Exists(OuterRef) costs several times the database round trip itself.
    """
    with connection.cursor() as cursor:
        cursor.execute(_eligibility_sql(), [user_id, coupon_name])
        row = cursor.fetchone()
    if row is None:
        raise CouponNotFound()
    coupon_id, remaining_amount, already_claimed = row
    return ClaimEligibility(coupon_id, remaining_amount, bool(already_claimed))


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
