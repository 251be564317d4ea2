"""Group claims: the concurrent claims of one coupon in one server process, granted in one transaction.

In a flash sale every claim of a coupon needs that coupon's row lock, so
claims of one coupon pass one at a time, and each pays for its own lock,
round trips and commit (fsync). Here, while one claim transaction of a
coupon is in flight in this process, further claims of that coupon wait;
when it ends, all of them form the next group, led by the first to arrive,
which grants them together: one `transaction.atomic()`, one
`select_for_update()` of the coupon row, one read of which of them already
hold the coupon, one INSERT of the winners (each with its code, drawn in
the transaction, and its hold's deadline), one `remaining_amount - n`
update (the F() decrement) sent with the INSERT of the group's events
(coupons/outbox.py), one commit; the members that sent an Idempotency-Key
have their answers stored in that transaction too. A claim that arrives
while nothing is in flight leads a group of one at once: a quiet service
adds no wait.

Groups need several requests in flight in one process: the web server runs
threaded workers (couponsite/serve.py says why and how many). Groups of
different processes, or of different coupons, run side by side and meet
only at the coupon row lock, which serialises them as it serialises single
claims.

Each member gets its own answer, as if the claims had run one by one in
arrival order: granted while stock lasts, AlreadyClaimed for a user who
holds the coupon (committed earlier, or granted earlier in the same group),
OutOfStock once the stock is gone, CouponNotFound if the coupon has been
deleted meanwhile. If the transaction fails (the database is away, a lock
or statement timeout), it is rolled back as a whole and every member gets
that error: no claim of the group is half-done.
"""

import functools
from collections.abc import Callable, Sequence
from datetime import timedelta

from django.db import connection, transaction
from prometheus_client import Histogram

from coupons.claim_codes import format_code, new_claim_code
from coupons.coupon_states import coupon_states
from coupons.exceptions import AlreadyClaimed, CouponNotFound, IdempotencyKeyInUse, OutOfStock
from coupons.extensions import ClaimMember, CouponExtension
from coupons.groups import Groups
from coupons.idempotency import Attempt, store_answers
from coupons.imported_codes import draw_codes, mark_handed_out
from coupons.models import Claim, ClaimStatus, Coupon
from coupons.outbox import CLAIM_GRANTED, COUPON_SOLD_OUT, NewEvent, events_insert
from coupons.sale_windows import SaleWindow, as_utc_datetime, format_utc
from coupons.selectors import LIVE_STATUSES_SQL, database_now_sql

group_sizes = Histogram(
    "coupon_claim_group_size",
    "Claims granted or refused together in one claim transaction.",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256),
)


def grant_claims(
    *,
    coupon_id: int,
    user_ids: list[str],
    attempts: Sequence[Attempt | None] | None = None,
    extensions: Sequence[CouponExtension] = (),
    prepared: Sequence[tuple] | None = None,
    on_sold_out: Callable[[], None] | None = None,
) -> list[Claim | Exception]:
    """Grant one unit each to `user_ids`, in order, in one transaction; per user, the new claim or the refusal.

    The coupon row lock is taken first: every claim (and every change to a
    coupon's stock or window) takes it before writing, so under it the
    holders read is exact and no concurrent insert can collide with ours. On
    SQLite, where select_for_update() does nothing, the transaction's BEGIN
    IMMEDIATE takes the database's write lock instead (settings:
    transaction_mode).

    The transaction also writes the group's events (coupons/outbox.py) and,
    for members that sent an Idempotency-Key (`attempts`, one per user, None
    for the others), their answers (coupons/idempotency.py), so that each is
    committed exactly with its effect. A member whose key was taken over
    meanwhile (its lease ran out) can no longer store its answer: the
    transaction is rolled back and run again without it (it hears
    IdempotencyKeyInUse).

    `extensions` judge the coupon's claims too (coupons/extensions.py), with
    what each one's prepare_claim gave per member (`prepared`, one tuple per
    user, an item per extension). `on_sold_out` is called after the commit
    of a transaction that left the coupon without stock (coupons/coupon_states.py).
    """
    attempts = list(attempts) if attempts is not None else [None] * len(user_ids)
    prepared = list(prepared) if prepared is not None else [()] * len(user_ids)
    members = list(user_ids)  # None: left out, its key taken over by a retry
    outcomes, keyed, sold_out = [None] * len(members), [], False
    while any(member is not None for member in members):
        try:
            outcomes, keyed, sold_out = _grant(coupon_id, members, attempts, extensions, prepared)
            break
        except _KeysTakenOver as taken_over:
            for position in taken_over.members:
                members[position] = attempts[position] = None
    for attempt, answer in keyed:
        attempt.stored = answer  # committed with the group
    if sold_out and on_sold_out is not None:
        on_sold_out()
    return [
        IdempotencyKeyInUse() if member is None else outcome for member, outcome in zip(members, outcomes, strict=True)
    ]


class _KeysTakenOver(Exception):
    def __init__(self, members):
        super().__init__()
        self.members = members


def _grant(coupon_id, user_ids, attempts, extensions, prepared):
    """One try of grant_claims: (outcome per member, the (attempt, answer) pairs stored). Members None are left out."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(_lock_sql(), [coupon_id])
            row = cursor.fetchone()
        if row is None:
            return [CouponNotFound() for _ in user_ids], [], False  # deleted since this process read its state
        name, amount, remaining_amount, starts_at, ends_at, hold_seconds, last_sequence, imported = row
        # A statement of its own, after the lock, for two reasons. Its
        # snapshot includes the claims committed by whoever held the lock
        # before (joined into the locking statement, they would be read from
        # the snapshot taken before the wait, and a holder who committed
        # meanwhile be missed). And its clock reads an instant at which this
        # transaction holds the lock: the sale window is judged then, so no
        # claim that waited for the lock past ends_at is granted.
        now, holders = _read_holders_and_clock(coupon_id, [user_id for user_id in user_ids if user_id is not None])
        window = SaleWindow(as_utc_datetime(starts_at), as_utc_datetime(ends_at))
        expires_at = now + timedelta(seconds=hold_seconds) if hold_seconds is not None else None
        rules = _start_rules(coupon_id, user_ids, extensions, prepared, now)
        # Imported codes (coupons/imported_codes.py): the next unused ones, read under the coupon row lock.
        codes = draw_codes(coupon_id=coupon_id, count=len(user_ids)) if imported else None
        outcomes, winners, granted = [], [], [[] for _ in rules]
        for position, user_id in enumerate(user_ids):
            if user_id is None:
                outcomes.append(None)
            elif user_id in holders:
                outcomes.append(AlreadyClaimed())  # 409 comes before the window's 403
            elif (refusal := window.refusal(now)) is not None:
                outcomes.append(refusal)
            elif len(winners) >= remaining_amount or (codes is not None and len(winners) >= len(codes)):
                outcomes.append(OutOfStock())
            elif (refusal := _rules_refusal(rules, position)) is not None:
                outcomes.append(refusal)  # an extension's (coupons/extensions.py): after the coupon's own answers
            else:
                holders.add(user_id)
                # Its code is drawn here, inside the transaction: the claim and
                # its code are committed together, or neither is.
                winners.append(
                    Claim(
                        coupon_id=coupon_id,
                        user_id=user_id,
                        created_at=now,
                        code=new_claim_code() if codes is None else codes[len(winners)][1],
                        expires_at=expires_at,
                    )
                )
                outcomes.append(winners[-1])
                for (_, members), granted_of_rule in zip(rules, granted, strict=True):
                    granted_of_rule.append((members[position], winners[-1]))
        keyed = [
            (attempt, attempt.answer_for(outcome))
            for attempt, outcome in zip(attempts, outcomes, strict=True)
            if attempt is not None
        ]
        if keyed and (lost := store_answers(keyed)):
            raise _KeysTakenOver({i for i, a in enumerate(attempts) if a is not None and a.key_id in lost})
        if winners:
            if codes is not None:
                mark_handed_out(code_ids=[code_id for code_id, _ in codes[: len(winners)]])
            _insert_claims(winners)
            expires = format_utc(expires_at)
            events = [_granted(claim, expires) for claim in winners]
            for (rule, _), granted_of_rule in zip(rules, granted, strict=True):
                events.extend(rule.written(granted_of_rule))
            if len(winners) == remaining_amount:
                events.append(NewEvent(COUPON_SOLD_OUT, {"amount": amount}))
            _take_units(coupon_id, name, len(winners), events, last_sequence, now)
    return outcomes, keyed, len(winners) == remaining_amount


@functools.lru_cache(maxsize=1)
def _lock_sql():
    """The coupon's row lock and what the group reads of it: the SQL `select_for_update(no_key=True)` writes.

    Compiled by the ORM once per process (inside a transaction, where select_for_update may be compiled), not
    once per group: compiling it was a tenth of a granted claim's instructions (docs/performance.md).
    """
    locking = Coupon.objects.select_for_update(no_key=True).filter(pk=0).order_by()  # pk: the one parameter
    sql, _ = locking.values_list(
        "name",
        "amount",
        "remaining_amount",
        "starts_at",
        "ends_at",
        "hold_seconds",
        "last_event_sequence",
        "imported_codes",
    ).query.sql_with_params()
    return sql


def _start_rules(coupon_id, user_ids, extensions, prepared, now):
    """Each extension's judge of the group, with the members as it sees them (position -> ClaimMember)."""
    rules = []
    for index, extension in enumerate(extensions):
        members = {
            position: ClaimMember(position, user_id, prepared[position][index])
            for position, user_id in enumerate(user_ids)
            if user_id is not None
        }
        rules.append((extension.start_group(coupon_id=coupon_id, members=list(members.values()), now=now), members))
    return rules


def _rules_refusal(rules, position):
    for rule, members in rules:
        if (refusal := rule.refusal(members[position])) is not None:
            return refusal
    return None


def _granted(claim, expires):
    return NewEvent(CLAIM_GRANTED, {"user_id": claim.user_id, "code": format_code(claim.code), "expires_at": expires})


# The claim's stock decrement: `remaining_amount - n`, relative, in the
# database, as F("remaining_amount") - n writes it, under the row lock taken
# by select_for_update() above; the coupon's event counter moves with it.
# Spelled in SQL rather than through the ORM so that, on PostgreSQL, the
# group's events' INSERT rides in the same statement (a writable CTE, whose
# UPDATE runs once, whatever the INSERT reads of it): the ORM's F() UPDATE
# and an INSERT of its own cost a group of 8 0.36-0.41 ms more CPU under the
# row lock (+30-34%), which every claim queued behind the lock waits for
# (docs/performance.md, bench/claim_costs.py). SQLite has no writable CTE:
# the UPDATE and the INSERT are two statements there.
_TAKE_UNITS_SQL = (
    "UPDATE coupons_coupon SET remaining_amount = remaining_amount - %s,"
    " last_event_sequence = last_event_sequence + %s WHERE id = %s"
)


def _take_units(coupon_id, coupon_name, taken, events, last_sequence, now):
    """Take `taken` units of the coupon's stock, and write the group's `events` numbered after `last_sequence`."""
    take = [taken, len(events), coupon_id]
    insert_sql, insert_params = events_insert(
        coupon_id=coupon_id, coupon_name=coupon_name, events=events, last_sequence=last_sequence, occurred_at=now
    )
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"WITH taken AS ({_TAKE_UNITS_SQL}) {insert_sql}", [*take, *insert_params])
        else:
            cursor.execute(_TAKE_UNITS_SQL, take)
            cursor.execute(insert_sql, insert_params)


# The holders read and the INSERT run under the coupon row lock, so their
# cost is paid by every claim queued behind the lock: they are hand-written
# SQL (portable to PostgreSQL and SQLite), built once per group size. Built
# by the ORM (a FilteredRelation join, bulk_create), they cost 0.8 ms of CPU
# each for a group of 8, against 0.04 ms for a database round trip
# (docs/performance.md).
#
# The holders read finds each member through the (user_id, ...) index: one
# short probe per user, whatever the statistics say. Written with
# `coupon_id = c.id`, it let the planner pick the (coupon, status) index
# whenever the statistics predated the sale (a new coupon looks empty
# until autoanalyze runs, at 10% of the table changed) and read every claim
# of the coupon once per group, under the lock: a sale in a database with
# history slowed as it went (docs/performance.md, "A sale that lasts").
# `coupon_id + 0` is not indexable, so no index on the coupon can be chosen
# for it; a user's claims are few, and are all the probe reads
# (tests/test_query_plans.py checks the plan).


@functools.lru_cache(maxsize=256)
def _holders_sql(group_size):
    quote = connection.ops.quote_name
    now = database_now_sql()
    users = ", ".join(["%s"] * group_size)
    return (
        f"SELECT {now}, u.user_id FROM {quote(Coupon._meta.db_table)} c"  # noqa: S608 - only model table names
        f" LEFT JOIN {quote(Claim._meta.db_table)} u ON u.user_id IN ({users}) AND u.coupon_id + 0 = c.id"
        f" AND u.status IN ({LIVE_STATUSES_SQL})"
        " WHERE c.id = %s"
    )


def _read_holders_and_clock(coupon_id, user_ids):
    """The database's clock, and which of `user_ids` hold a live claim of the coupon (a row per holder, or one NULL)."""
    distinct = list(dict.fromkeys(user_ids))
    with connection.cursor() as cursor:
        cursor.execute(_holders_sql(len(distinct)), [*distinct, coupon_id])
        rows = cursor.fetchall()
    return as_utc_datetime(rows[0][0]), {holder for _, holder in rows if holder is not None}


# A new claim is held, redeemed for no order yet.
_NEW_CLAIM_ROW = f"(%s, %s, %s, %s, %s, '{ClaimStatus.HELD}', '')"


@functools.lru_cache(maxsize=256)
def _insert_sql(count):
    quote = connection.ops.quote_name
    return (
        f"INSERT INTO {quote(Claim._meta.db_table)}"  # noqa: S608 - only the table
        " (coupon_id, user_id, created_at, code, expires_at, status, order_id)"
        f" VALUES {', '.join([_NEW_CLAIM_ROW] * count)} RETURNING id"
    )


def _insert_claims(claims):
    """One INSERT of the winners, each claim stamped with the database's clock under the lock; fills in their ids."""
    created_at = connection.ops.adapt_datetimefield_value(claims[0].created_at)
    expires_at = connection.ops.adapt_datetimefield_value(claims[0].expires_at)
    with connection.cursor() as cursor:
        cursor.execute(
            _insert_sql(len(claims)),
            [
                value
                for claim in claims
                for value in (claim.coupon_id, claim.user_id, created_at, claim.code, expires_at)
            ],
        )
        # Multi-row INSERT ... RETURNING gives the rows in VALUES order on both backends (bulk_create relies on it too).
        for claim, (claim_id,) in zip(claims, cursor.fetchall(), strict=True):
            claim.id = claim_id
            claim._state.adding = False


class _PendingClaim:
    __slots__ = ("user_id", "attempt", "extensions", "prepared")

    def __init__(self, user_id, attempt, extensions, prepared):
        self.user_id = user_id
        self.attempt = attempt  # its Idempotency-Key's, or None
        self.extensions = extensions  # those that judge the coupon's claims, and what each prepared for this one
        self.prepared = prepared


class ClaimGroups:
    """Forms and runs the groups of one process (coupons/groups.py). Thread-safe; one per process (`claim_groups`)."""

    def __init__(self):
        self._groups = Groups(self._run)

    def claim(
        self,
        *,
        coupon_id: int,
        user_id: str,
        attempt: Attempt | None = None,
        extensions: Sequence[CouponExtension] = (),
        prepared: tuple = (),
    ) -> Claim:
        """Claim one unit for `user_id`, with whatever other claims of the coupon are waiting; raise its refusal.

        With an idempotency `attempt`, its answer is stored in the group's transaction. `extensions` (those
        judging this coupon's claims) and what each one's prepare_claim returned (`prepared`) go to the group.
        """
        return self._groups.submit(coupon_id, _PendingClaim(user_id, attempt, extensions, prepared))

    def in_flight(self, coupon_id: int) -> bool:
        """Whether a group of this coupon is running in this process."""
        return self._groups.in_flight(coupon_id)

    def queued(self, coupon_id: int) -> int:
        """How many claims of this coupon wait for the group in flight."""
        return self._groups.queued(coupon_id)

    @staticmethod
    def _run(coupon_id, group):
        # Taken before the transaction: a change notified since makes its "sold out" worthless.
        generation = coupon_states.generation()
        group_sizes.observe(len(group))
        outcomes = grant_claims(
            coupon_id=coupon_id,
            user_ids=[claim.user_id for claim in group],
            attempts=[claim.attempt for claim in group],
            extensions=group[0].extensions,
            prepared=[claim.prepared for claim in group],
            on_sold_out=functools.partial(coupon_states.learned_sold_out, coupon_id, generation),
        )
        if isinstance(outcomes[0], CouponNotFound):
            coupon_states.forget(coupon_id=coupon_id)  # deleted: what this process kept of it is wrong
        return outcomes


# The process's groups (the server forks its workers before any request: each has its own).
claim_groups = ClaimGroups()
