"""Fair admission's reads: where a user stands (the poll), a coupon's admission details, a draw's proof.

The poll is the hottest read of a queued sale (every waiting user, every
second or so), so it is answered from a per-process cache and costs the
database no statement in the steady state:

- per coupon, a snapshot of its admission: the policy (mode, opened, sold
  out), the stock left, the admission batches (admissions go in position
  order, so each pass admits a contiguous range of positions: one row per
  pass, (first, last, admitted_at, admitted_until)), and the users whose
  entry a claim has spent. Three statements, read again when older than
  ADMISSION_POLL_REFRESH_MS (1 s by default) by the first poll that finds
  it stale (one thread reads; the others answer from the old one). At most
  SNAPSHOTS coupons are kept (least recently used dropped). The batches
  grow with the number of admission passes that admitted someone, the
  spent users with the units claimed: both bounded by the sale.
- per (coupon, user), the entry's id and position, which never change once
  the position is known (before a queue opens or a draw is made the
  position is unknown: that is read again once the snapshot says opened).
  At most ENTRIES of them are kept, least recently used dropped; a user's
  first poll in a process reads the entry (one statement).

Everything else (status, ahead, estimated wait, the admission token, which
any host mints identically without writing) is computed from those two. The
answer is at most one refresh old; the claim itself is judged in the claim
transaction by the database, never by this cache.
"""

import bisect
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import connection
from django.utils import timezone

from admission import draws
from admission.exceptions import EntryNotFound, NoAdmission, NotADraw
from admission.models import AdmissionPolicy, Entry, EntryStatus, Mode
from admission.tokens import issue_token
from coupons.exceptions import CouponNotFound
from coupons.models import Coupon
from coupons.sale_windows import as_utc_datetime, format_utc

SNAPSHOTS = 1024
ENTRIES = 200_000
# Seconds of admission history the estimated wait is measured over (without admit_per_second).
RATE_WINDOW_SECONDS = 60


@dataclass
class Snapshot:
    coupon_id: int
    coupon_name: str
    mode: str
    opened: bool
    sold_out: bool
    admit_per_second: int | None
    firsts: list = field(default_factory=list)  # each batch's first position, ascending (bisect)
    batches: list = field(default_factory=list)  # (first, last, admitted_at, admitted_until)
    spent: frozenset = frozenset()
    frontier: int = 0  # the last position admitted
    loaded: float = 0.0  # time.monotonic()


@dataclass(frozen=True)
class Standing:
    coupon_name: str
    user_id: str
    status: str
    position: int | None
    ahead: int | None
    estimated_wait_seconds: int | None
    admission_token: str | None = None
    admitted_until: datetime | None = None


class _Lru(OrderedDict):
    def __init__(self, limit):
        super().__init__()
        self.limit = limit

    def put(self, key, value):
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


_lock = threading.Lock()
_snapshots = _Lru(SNAPSHOTS)
_entries = _Lru(ENTRIES)
_reloading = set()


def clear_caches():
    """Forget every snapshot and entry (tests; a process that must re-read at once)."""
    with _lock:
        _snapshots.clear()
        _entries.clear()


def _load_snapshot(coupon_name):
    row = (
        AdmissionPolicy.objects.filter(coupon__name=coupon_name)
        .values_list("pk", "mode", "opened_at", "sold_out_at", "admit_per_second", "coupon__remaining_amount")
        .first()
    )
    if row is None:
        if Coupon.objects.filter(name=coupon_name).exists():
            raise NoAdmission()
        raise CouponNotFound()
    coupon_id, mode, opened_at, sold_out_at, rate, remaining = row
    table = connection.ops.quote_name(Entry._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT MIN(position), MAX(position), admitted_at, admitted_until"  # noqa: S608 - the table's name only
            f" FROM {table} WHERE coupon_id = %s AND admitted_at IS NOT NULL"
            " GROUP BY admitted_at, admitted_until ORDER BY 1",
            [coupon_id],
        )
        batches = [(low, high, as_utc_datetime(at), as_utc_datetime(until)) for low, high, at, until in cursor]
    spent = frozenset(Entry.objects.filter(coupon_id=coupon_id, claim__isnull=False).values_list("user_id", flat=True))
    return Snapshot(
        coupon_id=coupon_id,
        coupon_name=coupon_name,
        mode=mode,
        opened=opened_at is not None,
        sold_out=sold_out_at is not None or remaining == 0,
        admit_per_second=rate,
        firsts=[batch[0] for batch in batches],
        batches=batches,
        spent=spent,
        frontier=batches[-1][1] if batches else 0,
        loaded=time.monotonic(),
    )


def _snapshot(coupon_name):
    refresh = settings.ADMISSION_POLL_REFRESH_MS / 1000
    with _lock:
        snapshot = _snapshots.get(coupon_name)
        if snapshot is not None:
            _snapshots.move_to_end(coupon_name)
            fresh = time.monotonic() - snapshot.loaded < refresh
            if fresh or coupon_name in _reloading:
                return snapshot  # another thread is reading it again: the old one meanwhile
        _reloading.add(coupon_name)
    try:
        snapshot = _load_snapshot(coupon_name)
    finally:
        with _lock:
            _reloading.discard(coupon_name)
    with _lock:
        _snapshots.put(coupon_name, snapshot)
    return snapshot


def _entry(snapshot, user_id):
    """(entry id, position) of the user's entry, cached (a position, once known, never changes)."""
    key = (snapshot.coupon_id, user_id)
    with _lock:
        known = _entries.get(key)
    # Without a position, it is known until the queue opens or the draw is made: then read again.
    if known is not None and (known[1] is not None or not snapshot.opened):
        return known
    row = Entry.objects.filter(coupon_id=snapshot.coupon_id, user_id=user_id).values_list("pk", "position").first()
    if row is None:
        raise EntryNotFound()
    with _lock:
        _entries.put(key, row)
    return row


def get_standing(*, coupon_name: str, user_id: str) -> Standing:
    """Where the user stands in the coupon's queue or draw (see the module: no statement in the steady state)."""
    snapshot = _snapshot(coupon_name)
    entry_id, position = _entry(snapshot, user_id)
    common = {"coupon_name": coupon_name, "user_id": user_id, "position": position}
    if user_id in snapshot.spent:
        return Standing(status=EntryStatus.CLAIMED, ahead=0, estimated_wait_seconds=0, **common)
    if position is not None and position <= snapshot.frontier:
        _, _, admitted_at, admitted_until = snapshot.batches[bisect.bisect_right(snapshot.firsts, position) - 1]
        if timezone.now() >= admitted_until:
            return Standing(status=EntryStatus.EXPIRED, ahead=0, estimated_wait_seconds=0, **common)
        token = issue_token(
            coupon_name=coupon_name,
            user_id=user_id,
            entry_id=entry_id,
            admitted_at=admitted_at,
            admitted_until=admitted_until,
        )
        return Standing(
            status=EntryStatus.ADMITTED,
            ahead=0,
            estimated_wait_seconds=0,
            admission_token=token,
            admitted_until=admitted_until,
            **common,
        )
    if snapshot.sold_out:
        status = EntryStatus.NOT_SELECTED if snapshot.mode == Mode.DRAW else EntryStatus.SOLD_OUT
        return Standing(status=status, ahead=None, estimated_wait_seconds=None, **common)
    if position is None:  # the pre-queue before the opening, a draw before draw_at: no place yet
        return Standing(status=EntryStatus.WAITING, ahead=None, estimated_wait_seconds=None, **common)
    ahead = position - snapshot.frontier - 1
    return Standing(status=EntryStatus.WAITING, ahead=ahead, estimated_wait_seconds=_wait(snapshot, ahead), **common)


def _wait(snapshot, ahead):
    """Seconds until this many ahead are admitted: at admit_per_second, or at the rate of the last minute's
    admissions (None when nobody was admitted in it: the queue waits for units to come back)."""
    rate = snapshot.admit_per_second
    if rate is None:
        since = timezone.now().timestamp() - RATE_WINDOW_SECONDS
        recent = sum(high - low + 1 for low, high, at, _ in snapshot.batches if at.timestamp() >= since)
        rate = recent / RATE_WINDOW_SECONDS
    if not rate:
        return None
    return math.ceil((ahead + 1) / rate)


def admission_details(*, coupon_name: str) -> dict:
    """The coupon's admission, for its detail: {} for first_come (existing clients see nothing new)."""
    row = (
        AdmissionPolicy.objects.filter(coupon__name=coupon_name)
        .values_list("mode", "admit_per_second", "admission_seconds", "entries_open_at", "draw_at", "commitment")
        .first()
    )
    if row is None:
        return {}
    mode, rate, seconds, opens, draw_at, commitment = row
    return {
        "admission": mode,
        "admit_per_second": rate,
        "admission_seconds": seconds,
        "entries_open_at": format_utc(opens),
        "draw_at": format_utc(draw_at),
        "draw_commitment": commitment,
    }


def get_draw_proof(*, coupon_name: str) -> dict:
    """The draw's public proof (admission/draws.py says how to check it): the seed, the frozen entry list and
    its hash, the winners and the waiting list once drawn; before, the commitment and the entries so far."""
    policy = AdmissionPolicy.objects.filter(coupon__name=coupon_name).select_related("coupon").first()
    if policy is None:
        if Coupon.objects.filter(name=coupon_name).exists():
            raise NotADraw()
        raise CouponNotFound()
    if policy.mode != Mode.DRAW:
        raise NotADraw()
    drawn = policy.opened_at is not None
    entries = Entry.objects.filter(coupon_id=policy.pk)
    if not drawn:
        user_ids = sorted(entries.values_list("user_id", flat=True))
        return {
            "coupon_name": coupon_name,
            "algorithm": draws.ALGORITHM,
            "commitment": policy.commitment,
            "draw_at": policy.draw_at,
            "drawn_at": None,
            "seed": None,
            "amount": None,
            "entries_hash": None,
            "entries": user_ids,
            "winners": None,
            "waiting_list": None,
        }
    order = list(entries.order_by("position").values_list("user_id", flat=True))
    return {
        "coupon_name": coupon_name,
        "algorithm": draws.ALGORITHM,
        "commitment": policy.commitment,
        "draw_at": policy.draw_at,
        "drawn_at": policy.opened_at,
        "seed": policy.seed,
        "amount": policy.drawn_amount,
        "entries_hash": policy.entries_hash,
        "entries": sorted(order),
        "winners": order[: policy.drawn_amount],
        "waiting_list": order[policy.drawn_amount :],
    }


def queue_counts(*, coupon_id: int) -> dict:
    """The queue's live counts by entry status (the admin, metrics)."""
    from django.db.models import Count

    counts = dict(Entry.objects.filter(coupon_id=coupon_id).values_list("status").annotate(n=Count("pk")).order_by())
    return {status: counts.get(status, 0) for status in EntryStatus.values}
