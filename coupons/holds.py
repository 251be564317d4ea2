"""Holds: a claim not redeemed within its coupon's `hold_seconds` expires, and its unit goes back to stock.

The expiry is a worker's job (`python manage.py expire_holds`, one per app
host, started by `make run`, the compose files and the cluster harness),
not the claim path's: a claim adds nothing under the coupon row lock for
it, and a coupon nobody claims any more still gets its units back on
time. A pass (`expire_holds`) finds the coupons with holds past their
deadline by the database's clock (a range scan of a partial index on the
deadlines of held claims), then, per coupon, in one transaction:

1. takes the coupon row lock (`FOR NO KEY UPDATE`, waiting for it as a
   claim group does), so the unit's return is ordered with claims, releases
   and restocks, and `remaining_amount + held + redeemed = amount` holds
   between them;
2. locks the claims still held and past their deadline `FOR UPDATE SKIP
   LOCKED`: a claim that a redemption or a release holds locked right now
   is skipped rather than waited for. They lock the claim's row before the
   coupon's (which they take last, for the stock or the event's number), so
   waiting would be a lock cycle; and the worker never makes the coupon's
   claims queue behind them. The next pass looks at it again;
3. marks them `expired` (returned_at: the clock read under the lock),
   adds their number to `remaining_amount` with an F() expression, and
   writes a `claim.expired` event for each (coupons/outbox.py); commit.

Exactly once: a claim is expired only while held, under its row lock, so
two workers (two app hosts, or one on each side of a failover) never
return one unit twice, nor write its event twice: the second reads it
expired and skips it; a redemption reads the claim under the same lock,
so a redemption and an expiry end as exactly one of the two, with exactly
one of their events; and the database refuses an expiry before the deadline or a
redemption at or after it (CHECK constraints on coupons_claim). A pass is
idempotent: a worker killed mid-pass, or cut off by a failover, leaves each
coupon's transaction committed or not, and the next pass, on any host,
finishes the job.

Prompt: after each pass the worker sleeps until the earliest deadline
still ahead (one index lookup) or `max_sleep` seconds, whichever is
sooner, so a hold whose deadline is known by then expires within one pass
of it (milliseconds), and one granted meanwhile with a hold shorter than
`max_sleep` within `max_sleep` of it (docs/performance.md: measured).
"""

import functools

from django.db import connection, transaction
from django.db.models import F
from django.db.models.functions import Now

from coupons import extensions
from coupons.claim_codes import format_code
from coupons.coupon_states import coupon_changed
from coupons.models import Claim, ClaimStatus, Coupon
from coupons.outbox import CLAIM_EXPIRED, NewEvent, record_events
from coupons.sale_windows import as_utc_datetime, format_utc
from coupons.selectors import database_now, database_now_sql

# Claims expired per coupon per transaction: a coupon with more due holds
# gets further transactions in the same pass, so the coupon row lock is never
# held for long.
EXPIRY_BATCH = 1000


def expire_holds(*, batch: int = EXPIRY_BATCH) -> int:
    """One pass: every claim held past its deadline (by the database's clock) expires; returns how many did."""
    due_coupons = (
        Claim.objects.filter(status=ClaimStatus.HELD, expires_at__lte=Now())
        .values_list("coupon_id", flat=True)
        .distinct()
        .order_by("coupon_id")
    )
    expired = 0
    for coupon_id in list(due_coupons):
        while True:
            count = _expire_due_holds_of(coupon_id, batch)
            expired += count
            if count < batch:
                break
    return expired


def _expire_due_holds_of(coupon_id, batch):
    """Up to `batch` of the coupon's due holds expire, under its row lock, in one transaction; returns how many."""
    with transaction.atomic():
        coupon_name = Coupon.objects.select_for_update(no_key=True).filter(pk=coupon_id).values_list("name").get()[0]
        # After the lock: the instant at which the units go back.
        now = database_now()
        due = list(
            Claim.objects.select_for_update(no_key=True, skip_locked=True)
            .filter(coupon_id=coupon_id, status=ClaimStatus.HELD, expires_at__lte=now)
            .order_by("expires_at")
            .values_list("id", "user_id", "code", "expires_at")[:batch]
        )
        if due:
            Claim.objects.filter(pk__in=[claim_id for claim_id, *_ in due]).update(
                status=ClaimStatus.EXPIRED, returned_at=now
            )
            Coupon.objects.filter(pk=coupon_id).update(remaining_amount=F("remaining_amount") + len(due))
            for extension in extensions.registered():
                extension.units_returned(coupon_id=coupon_id, claims=[(claim_id, user) for claim_id, user, *_ in due])
            events = [
                NewEvent(
                    CLAIM_EXPIRED,
                    {"user_id": user_id, "code": format_code(code), "expires_at": format_utc(expires_at)},
                )
                for _, user_id, code, expires_at in due
            ]
            record_events(coupon_id=coupon_id, coupon_name=coupon_name, events=events)
            coupon_changed(coupon_id=coupon_id, name=coupon_name)  # units back: no process may go on refusing
    return len(due)


def seconds_until_next_deadline() -> float | None:
    """Seconds from now until the earliest deadline of a held claim, by the database's clock (<= 0: one is due);
    None: no claim is on hold. One lookup in the partial index of deadlines."""
    with connection.cursor() as cursor:
        cursor.execute(_next_deadline_sql(), [ClaimStatus.HELD])
        deadline, now = cursor.fetchone()
    if deadline is None:
        return None
    return (as_utc_datetime(deadline) - as_utc_datetime(now)).total_seconds()


@functools.cache
def _next_deadline_sql():
    claims = connection.ops.quote_name(Claim._meta.db_table)
    return (
        f"SELECT MIN(expires_at), {database_now_sql()} FROM {claims}"  # noqa: S608 - only the table name
        " WHERE status = %s AND expires_at IS NOT NULL"
    )
