"""The transactional outbox: every change a subscriber may care about is written as an event row in the
transaction that makes the change, so an event exists exactly when its change was committed.

Services call `record_events()` inside the transaction of their change
(claim groups, releases, restocks, redemptions and their undoing, hold
expiries); it numbers the events under the coupon row lock.
The claim group moves the coupon's event counter in its own stock UPDATE
and sends its events' INSERT (`events_insert()`) in the same statement, so
its events cost it no statement of their own (coupons/claim_groups.py).
Nothing is sent from here: the webhook worker (coupons/webhooks.py) and
`GET /api/events` read the log afterwards.

Reading in order without missing anything: events are numbered by
`position` as they are inserted, but transactions commit in another order,
so a reader at position 100 could later see 99 commit. PostgreSQL says
which transactions may still commit: every one whose id is at least the
oldest running one (`pg_snapshot_xmin`). Readers list events by
(transaction id, position) and stop before that horizon; what lies behind
it can no longer change, so a reader's cursor never skips an event. A
transaction's id is given at its first write, which is not always the
coupon row lock (a redemption locks its claim first), so one coupon's
events may reach the log in another order than their `sequence`: the
webhook worker sends each coupon's in `sequence` order all the same
(coupons/webhook_delivery.py). SQLite has one writer at a time: position
order is commit order there.
"""

import functools
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.db.models import Q
from django.db.models.expressions import RawSQL

from coupons.models import Event
from coupons.sale_windows import as_utc_datetime, format_utc
from coupons.selectors import DATABASE_NOW_SQL

COUPON_CREATED = "coupon.created"
CLAIM_GRANTED = "claim.granted"
CLAIM_RELEASED = "claim.released"
COUPON_SOLD_OUT = "coupon.sold_out"
COUPON_RESTOCKED = "coupon.restocked"
CLAIM_EXPIRED = "claim.expired"
REDEMPTION_REDEEMED = "redemption.redeemed"
REDEMPTION_UNDONE = "redemption.undone"
# Written by the campaigns app (campaigns/extension.py) in a claim group's transaction; named here so that
# webhook subscriptions and GET /api/events may filter on it.
CAMPAIGN_EXHAUSTED = "campaign.exhausted"
# Written by fair admission (admission/services.py, an extension: coupons/extensions.py); named here so that
# webhook subscriptions and the schema know every type the log can hold.
ENTRY_ADMITTED = "entry.admitted"
ADMISSION_LAPSED = "admission.lapsed"
DRAW_COMPLETED = "draw.completed"
EVENT_TYPES = (
    COUPON_CREATED,
    CLAIM_GRANTED,
    CLAIM_RELEASED,
    COUPON_SOLD_OUT,
    COUPON_RESTOCKED,
    CLAIM_EXPIRED,
    REDEMPTION_REDEEMED,
    REDEMPTION_UNDONE,
    CAMPAIGN_EXHAUSTED,
    ENTRY_ADMITTED,
    ADMISSION_LAPSED,
    DRAW_COMPLETED,
)

# The id of the writing transaction, as a plain integer (xid8 has no cast to bigint but through text).
TRANSACTION_ID_SQL = {"postgresql": "pg_current_xact_id()::text::bigint", "sqlite": "0"}
# Transactions with an id below this have all ended: their events are all visible, and no new one can appear.
HORIZON_SQL = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"


@dataclass(frozen=True)
class NewEvent:
    type: str
    data: dict


# Where a reader is in the log: (transaction_id, position) of the last event it has.
LogPosition = tuple[int, int]


def record_events(*, coupon_id: int, coupon_name: str, events: Sequence[NewEvent]) -> None:
    """Write `events` of the coupon in the caller's transaction, numbered after its latest event.

    Call it inside the transaction that makes the change. It moves the
    coupon's event counter by one per event, which takes the coupon row
    lock (if the caller does not hold it yet) until the transaction ends:
    that lock is what numbers a coupon's events without a gap. On
    PostgreSQL the counter's UPDATE and the events' INSERT are one
    statement (a writable CTE), so a caller that takes the lock here (a
    redemption) holds it for that statement and its commit only. On SQLite
    (one writer at a time) they are two.
    """
    if not events:
        return
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            count = len(events)
            cursor.execute(
                POSTGRESQL_MOVE_AND_INSERT_SQL, [count, coupon_id, coupon_id, coupon_name, count, *_as_arrays(events)]
            )
            return
        cursor.execute(SQLITE_MOVE_COUNTER_SQL, [len(events), coupon_id])
        last, now = cursor.fetchone()
        cursor.execute(
            *events_insert(
                coupon_id=coupon_id,
                coupon_name=coupon_name,
                events=events,
                last_sequence=last - len(events),
                occurred_at=as_utc_datetime(now),
            )
        )


def events_insert(
    *, coupon_id: int, coupon_name: str, events: Sequence[NewEvent], last_sequence: int, occurred_at: datetime
) -> tuple[str, list]:
    """The INSERT of `events`, numbered from `last_sequence` + 1, as (SQL, parameters), for a caller that moves the
    coupon's event counter by len(events) itself, under the coupon row lock (the claim group, in its stock UPDATE).

    On PostgreSQL, six parameters whatever the number of events (two arrays,
    ids made by gen_random_uuid()): the claim group sends it as the body of
    a writable CTE, and a statement's cost under the lock grows with its
    text and parameters.
    """
    occurred = connection.ops.adapt_datetimefield_value(occurred_at)
    if connection.vendor == "postgresql":
        return POSTGRESQL_INSERT_SQL, [coupon_id, coupon_name, last_sequence, occurred, *_as_arrays(events)]
    uuid_field, data_field = Event._meta.get_field("uuid"), Event._meta.get_field("data")
    params = []
    for number, event in enumerate(events, start=last_sequence + 1):
        params += [
            uuid_field.get_db_prep_value(uuid.uuid4(), connection),
            event.type,
            coupon_id,
            coupon_name,
            number,
            occurred,
            data_field.get_db_prep_value(event.data, connection),
        ]
    return _sqlite_insert_sql(len(events)), params


INSERT_SQL = (
    "INSERT INTO coupons_event (uuid, type, coupon_id, coupon_name, sequence, occurred_at, data, transaction_id)"
)
EVENTS_UNNEST_SQL = "unnest(%s::text[], %s::text[]) WITH ORDINALITY AS e(type, data, number)"
POSTGRESQL_INSERT_SQL = (
    f"{INSERT_SQL} SELECT gen_random_uuid(), e.type, %s, %s, %s + e.number, %s, e.data::jsonb,"  # noqa: S608
    f" {TRANSACTION_ID_SQL['postgresql']} FROM {EVENTS_UNNEST_SQL} ORDER BY e.number"
)
# The counter moved and the events numbered from it, with the clock read then, in one statement.
POSTGRESQL_MOVE_AND_INSERT_SQL = (
    "WITH moved AS (UPDATE coupons_coupon SET last_event_sequence = last_event_sequence + %s WHERE id = %s"  # noqa: S608
    f" RETURNING last_event_sequence, {DATABASE_NOW_SQL['postgresql']} AS now)"
    f" {INSERT_SQL} SELECT gen_random_uuid(), e.type, %s, %s,"
    " moved.last_event_sequence - %s + e.number, moved.now, e.data::jsonb,"
    f" {TRANSACTION_ID_SQL['postgresql']} FROM moved, {EVENTS_UNNEST_SQL} ORDER BY e.number"
)


SQLITE_MOVE_COUNTER_SQL = (
    "UPDATE coupons_coupon SET last_event_sequence = last_event_sequence + %s"  # noqa: S608 - constants
    f" WHERE id = %s RETURNING last_event_sequence, {DATABASE_NOW_SQL['sqlite'].replace('%', '%%')}"
)


def _as_arrays(events):
    """The events' types and data (JSON text) as two arrays: two parameters however many events there are."""
    return [event.type for event in events], [json.dumps(event.data) for event in events]


@functools.lru_cache(maxsize=256)
def _sqlite_insert_sql(count):
    return f"{INSERT_SQL} VALUES {', '.join(['(%s, %s, %s, %s, %s, %s, %s, 0)'] * count)}"


def events_after(*, after: LogPosition | None, limit: int) -> list[Event]:
    """Up to `limit` events following `after` in the log (from its start when None), oldest first.

    Only events behind the horizon are listed (see the module's docstring):
    an event shows up once every transaction older than its own has ended.
    """
    events = Event.objects.all()
    if after is not None:
        transaction_id, position = after
        events = events.filter(
            Q(transaction_id__gt=transaction_id) | Q(transaction_id=transaction_id, position__gt=position)
        )
    if connection.vendor == "postgresql":
        events = events.filter(transaction_id__lt=RawSQL(HORIZON_SQL, []))  # noqa: S611 - a constant
    return list(events.order_by("transaction_id", "position")[:limit])


def log_position_of(*, event_id: uuid.UUID) -> LogPosition | None:
    """Where the event is in the log, or None if no event has this id (never did, or purged)."""
    return Event.objects.filter(uuid=event_id).values_list("transaction_id", "position").first()


def log_end() -> LogPosition:
    """A position from which a new reader sees every event not yet behind the horizon, and no older one."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {HORIZON_SQL}")
            return cursor.fetchone()[0] - 1, 2**63 - 1
    last = Event.objects.order_by("-position").values_list("position", flat=True).first()
    return 0, last or 0


def purge_events_before(moment: datetime, *, batch_size: int = 1000) -> int:
    """Delete the events that occurred before `moment`, `batch_size` at a time (their delivery records with them)."""
    purged = 0
    while True:
        batch = list(Event.objects.filter(occurred_at__lt=moment).values_list("pk", flat=True)[:batch_size])
        if not batch:
            return purged
        purged += Event.objects.filter(pk__in=batch).delete()[1].get(Event._meta.label, 0)
        if len(batch) < batch_size:
            return purged


def as_message(event: Event) -> dict:
    """The event as subscribers get it: a webhook's body, an item of GET /api/events."""
    return {
        "id": str(event.uuid),
        "type": event.type,
        "occurred_at": format_utc(as_utc_datetime(event.occurred_at)),
        "coupon": event.coupon_name,
        "sequence": event.sequence,
        # In key order: jsonb (PostgreSQL) keeps keys in an order of its own, SQLite as written; sorted, a
        # body is the same on either.
        "data": dict(sorted(event.data.items())),
    }
