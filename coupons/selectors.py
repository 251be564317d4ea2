"""Reads: queries the API and the admin render."""

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.db.models import Count, Q, QuerySet
from django.db.models.functions import Now

from coupons.exceptions import CodeNotFound, CouponNotFound
from coupons.models import LIVE_STATUSES, Claim, ClaimStatus, Coupon
from coupons.sale_windows import SaleStatus, SaleWindow, as_utc_datetime

# The database's clock, as django.db.models.functions.Now reads it, in the
# hand-written SQL of the claim path (here and in coupons/claim_groups.py).
DATABASE_NOW_SQL = {
    "postgresql": "STATEMENT_TIMESTAMP()",
    "sqlite": "STRFTIME('%Y-%m-%d %H:%M:%f', 'now')",
}


# The statuses of claims that hold a unit (held, redeemed), for hand-written SQL.
LIVE_STATUSES_SQL = ", ".join(f"'{status}'" for status in LIVE_STATUSES)


def database_now_sql():
    """DATABASE_NOW_SQL for this connection, for a query that has parameters (its "%" doubled)."""
    return DATABASE_NOW_SQL[connection.vendor].replace("%", "%%")


@dataclass(frozen=True)
class CouponDetail:
    name: str
    amount: int
    remaining_amount: int
    starts_at: datetime | None
    ends_at: datetime | None
    hold_seconds: int | None
    redeem_until: datetime | None
    status: SaleStatus
    claimed_by: list[str]
    held_amount: int
    redeemed_amount: int


def get_coupon_detail(*, name: str) -> CouponDetail:
    """The coupon with the ids of its claimers, in the order they claimed, and its sale status.

    The claimers are the users whose claim holds a unit (held or redeemed);
    a released or expired claim gave its unit back. One statement reads one
    snapshot, and every change of a claim's liveness changes the stock in
    the same transaction, so `claimed_by` always holds exactly
    `amount - remaining_amount` users, and `remaining_amount + held_amount +
    redeemed_amount = amount`, even while claims commit; the
    status is computed with the database's clock, read by the same
    statement. It is hand-written SQL, the coupon's row first, then one short
    row per claim: a coupon may have 100,000 claimers, and a join repeating
    the coupon's columns on every claim's row (its three timestamps parsed
    each time) cost eight times the rest of the read.
    """
    with connection.cursor() as cursor:
        cursor.execute(_detail_sql(), [name, name])
        rows = cursor.fetchall()
    if not rows:
        raise CouponNotFound()
    _, amount, remaining_amount, starts_at, ends_at, now, hold_seconds, redeem_until, _, _ = rows[0]
    window = SaleWindow(as_utc_datetime(starts_at), as_utc_datetime(ends_at))
    claimers = rows[1:]
    # A flag per claim, counted by list.count(): comparing each row with the
    # ClaimStatus member cost 2.4 ms of a 10,000-claim read (Python 3.11's enum
    # attribute lookup), and decoding the status text about 1 ms more.
    redeemed_amount = [row[-1] for row in claimers].count(True)
    return CouponDetail(
        name=name,
        amount=amount,
        remaining_amount=remaining_amount,
        starts_at=window.starts_at,
        ends_at=window.ends_at,
        hold_seconds=hold_seconds,
        redeem_until=as_utc_datetime(redeem_until),
        status=window.status(now=as_utc_datetime(now), remaining_amount=remaining_amount),
        claimed_by=[row[-2] for row in claimers],
        held_amount=len(claimers) - redeemed_amount,
        redeemed_amount=redeemed_amount,
    )


@functools.cache
def _detail_sql():
    quote = connection.ops.quote_name
    coupons, claims = quote(Coupon._meta.db_table), quote(Claim._meta.db_table)
    now = database_now_sql()
    return (
        # Claim ids are positive: the coupon's row (0) comes first, then the live claims in claim order.
        "SELECT 0, c.amount, c.remaining_amount, c.starts_at, c.ends_at,"  # noqa: S608 - table names
        f" {now}, c.hold_seconds, c.redeem_until, NULL, NULL FROM {coupons} c WHERE c.name = %s"
        " UNION ALL"
        f" SELECT u.id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, u.user_id, u.status = '{ClaimStatus.REDEEMED}'"
        f" FROM {coupons} c JOIN {claims} u ON u.coupon_id = c.id AND u.status IN ({LIVE_STATUSES_SQL})"
        " WHERE c.name = %s ORDER BY 1"
    )


def database_now() -> datetime:
    """The database's clock: the one every sale window is checked against."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {DATABASE_NOW_SQL[connection.vendor]}")
        return as_utc_datetime(cursor.fetchone()[0])


@dataclass(frozen=True)
class UserClaim:
    coupon_name: str
    claimed_at: datetime
    code: str
    status: ClaimStatus
    expires_at: datetime | None
    redeemed_at: datetime | None


# Where a page of a user's claims ends: the last claim's (created_at, id).
ClaimPosition = tuple[datetime, int]


@dataclass(frozen=True)
class UserClaimsPage:
    user_id: str
    claims: list[UserClaim]
    next_position: ClaimPosition | None  # None: this is the last page


def get_user_claims_page(
    *,
    user_id: str,
    limit: int,
    after: ClaimPosition | None = None,
    statuses: Iterable[ClaimStatus] = LIVE_STATUSES,
) -> UserClaimsPage:
    """A page of the user's claims with one of `statuses` (by default the live ones), newest first, from just after
    `after` (keyset pagination).

    The (user_id, created_at, id) index gives the page as one short range
    scan, however deep it is and however many claims the user holds: no
    OFFSET to skip through, no COUNT.
    """
    claims = Claim.objects.filter(user_id=user_id, status__in=list(statuses))
    if after is not None:
        created_at, claim_id = after
        # (created_at, id) < after, with the bound on created_at alone
        # stated too, so that the index scan starts there.
        claims = claims.filter(created_at__lte=created_at).filter(Q(created_at__lt=created_at) | Q(id__lt=claim_id))
    columns = ("coupon__name", "created_at", "code", "status", "expires_at", "redeemed_at", "id")
    rows = list(claims.order_by("-created_at", "-id").values_list(*columns)[: limit + 1])
    page = rows[:limit]
    has_more = len(rows) > limit
    return UserClaimsPage(
        user_id=user_id,
        claims=[UserClaim(*row[:-1]) for row in page],
        next_position=(page[-1][1], page[-1][-1]) if has_more else None,
    )


def coupon_claims(*, coupon_id: int):
    """The coupon's claims, newest first, as rows of user id, claim time, code and status (to be sliced into pages)."""
    return Claim.objects.filter(coupon_id=coupon_id).order_by("-id").values("user_id", "created_at", "code", "status")


def count_claims_by_status(*, coupon_id: int) -> dict[ClaimStatus, int]:
    """How many of the coupon's claims are in each status (every status present, 0 included)."""
    counts = dict.fromkeys(ClaimStatus, 0)
    rows = Claim.objects.filter(coupon_id=coupon_id).values_list("status").annotate(count=Count("*")).order_by()
    counts.update({ClaimStatus(status): count for status, count in rows})
    return counts


# Rows fetched per round trip when streaming claims out.
EXPORT_CHUNK_SIZE = 2000


def iter_claims_for_export(*, coupon_ids: Iterable[int]) -> Iterator[tuple]:
    """(coupon name, user id, claim time, code, status, redeemed at, order id) for every claim of the coupons, in
    claim order, whatever its status.

    Streamed in chunks (a server-side cursor on PostgreSQL): memory stays
    flat however many claims there are.
    """
    return (
        Claim.objects.filter(coupon_id__in=list(coupon_ids))
        .order_by("coupon_id", "id")
        .values_list("coupon__name", "user_id", "created_at", "code", "status", "redeemed_at", "order_id")
        .iterator(chunk_size=EXPORT_CHUNK_SIZE)
    )


def filter_by_sale_status(coupons: QuerySet[Coupon], status: SaleStatus) -> QuerySet[Coupon]:
    """The coupons whose status (SaleWindow.status, in SQL) is `status` by the database's clock."""
    now = Now()
    started = Q(starts_at__isnull=True) | Q(starts_at__lte=now)
    not_ended = Q(ends_at__isnull=True) | Q(ends_at__gt=now)
    return coupons.filter(
        {
            SaleStatus.SCHEDULED: Q(starts_at__gt=now),  # and so not ended: the window ends after it starts
            SaleStatus.LIVE: started & not_ended & Q(remaining_amount__gt=0),
            SaleStatus.SOLD_OUT: started & not_ended & Q(remaining_amount=0),
            SaleStatus.ENDED: Q(ends_at__lte=now),
        }[status]
    )


@dataclass(frozen=True)
class Redemption:
    """A claim as the redemption endpoints show it: its state, and its redemption if it has one."""

    coupon_name: str
    user_id: str
    code: str  # bare, as stored
    status: ClaimStatus
    claimed_at: datetime
    expires_at: datetime | None
    redeemed_at: datetime | None
    order_id: str


REDEMPTION_COLUMNS = (
    "coupon__name",
    "user_id",
    "code",
    "status",
    "created_at",
    "expires_at",
    "redeemed_at",
    "order_id",
)


def get_redemption(*, code: str) -> Redemption:
    """The claim whose code is `code` (bare: coupons/claim_codes.normalise_code), in its current state."""
    row = Claim.objects.filter(code=code).values_list(*REDEMPTION_COLUMNS).first()
    if row is None:
        raise CodeNotFound()
    return Redemption(*row)
