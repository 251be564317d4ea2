"""Fair admission's writes: a coupon's policy, entering, the admission pass (opening, draw, lapses, sold out,
admissions), and spending an entry in the claim's transaction.

Every write of a coupon's entries takes its policy row lock first
(SELECT ... FOR NO KEY UPDATE; on SQLite the database's write lock), so the
entry counters move one at a time: arrivals and positions are 1, 2, 3...
with no gap and no duplicate. The policy row is not the coupon row: entering
never waits for a claim group, nor a claim group for an entry. Entries of
one coupon that wait in one process are written together (enter_group), as
claims are.
"""

from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, Count, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import Now

from admission import draws
from admission.exceptions import AlreadyEntered, EntriesClosed, EntriesNotOpen, NoAdmission, ProofOfWorkInvalid
from admission.models import AdmissionPolicy, Entry, EntryStatus, Mode, SpentChallenge
from admission.proof_of_work import Solved, check_solution
from coupons.coupon_states import coupon_changed
from coupons.exceptions import CouponError, CouponNotFound
from coupons.groups import Groups
from coupons.models import Coupon
from coupons.outbox import ADMISSION_LAPSED, DRAW_COMPLETED, ENTRY_ADMITTED, NewEvent, record_events
from coupons.sale_windows import as_utc_datetime, format_utc


def create_policy(
    *,
    coupon: Coupon,
    mode: str,
    admit_per_second: int | None = None,
    admission_seconds: int = 120,
    entries_open_at: datetime | None = None,
    draw_at: datetime | None = None,
) -> AdmissionPolicy | None:
    """In create_coupon's transaction: the coupon's admission (None for first_come: no row, nothing changes).

    The seed is drawn here and only its commitment is shown until the draw
    (or the queue's opening). A queue without starts_at opens at once.
    """
    if mode == Mode.FIRST_COME:
        return None
    seed = draws.new_seed()
    policy = AdmissionPolicy.objects.create(
        coupon=coupon,
        mode=mode,
        admit_per_second=admit_per_second,
        admission_seconds=admission_seconds,
        entries_open_at=entries_open_at,
        draw_at=draw_at,
        seed=seed,
        commitment=draws.commitment_of(seed),
        opened_at=coupon.created_at if mode == Mode.QUEUE and coupon.starts_at is None else None,
    )
    # Every process reads which extensions judge a coupon when it loads its state (coupons/coupon_states.py):
    # told here, each reads it again, this policy included, whenever the policy is created.
    coupon_changed(coupon_id=coupon.pk, name=coupon.name)
    transaction.on_commit(lambda: _forget_coupon(coupon.pk))
    return policy


def _forget_coupon(coupon_id):
    from admission.extension import forget_coupon

    forget_coupon(coupon_id)


def _locked_policy(coupon_name=None, coupon_id=None):
    """The policy row, locked until the transaction ends, with its coupon and the database's clock (`now`)."""
    rows = AdmissionPolicy.objects.select_for_update(no_key=True, of=("self",)).select_related("coupon")
    rows = rows.annotate(now=Now())
    policy = rows.filter(coupon__name=coupon_name).first() if coupon_id is None else rows.filter(pk=coupon_id).first()
    if policy is None:
        if coupon_name is not None and Coupon.objects.filter(name=coupon_name).exists():
            raise NoAdmission()
        raise CouponNotFound()
    policy.now = as_utc_datetime(policy.now)
    return policy


SPENT_CHALLENGE = "This proof of work has been used for an entry already: solve a new challenge."


def enter(*, coupon_name: str, user_id: str, proof_of_work: str | None = None) -> Entry:
    """Enter `user_id` for the coupon's queue or draw: once per user (AlreadyEntered after).

    Entries open at `entries_open_at` (or at once) and, for a draw, close at
    `draw_at`. A queue's entry before the sale opens joins the pre-queue
    (its position drawn at the opening); after, it gets the next position.
    With ADMISSION_PROOF_OF_WORK, `proof_of_work` must solve one of our
    challenges (checked here, before any query) not spent by another entry
    (the challenge is spent in the entry's transaction: refused, nothing
    changes).

    The entries of one coupon that arrive in this process while one of its
    entry transactions is in flight are written together by the next one
    (coupons/groups.py, as claims are): one policy row lock and one commit
    for the group, each member its own answer (enter_group).
    """
    solved = check_solution(proof_of_work) if settings.ADMISSION_PROOF_OF_WORK else None
    return _entry_groups.submit(coupon_name, (user_id, solved))


def enter_group(*, coupon_name: str, members: list[tuple[str, Solved | None]]) -> list[Entry | CouponError]:
    """Enter each (user id, solved proof of work or None) of `members`, in order, in one transaction under the
    policy row lock: per member its new Entry or its refusal (AlreadyEntered, ProofOfWorkInvalid), as if they
    had entered one by one. A refusal of the coupon itself (not found, first come, entries not open or closed)
    is raised: every member hears it."""
    with transaction.atomic():
        policy = _locked_policy(coupon_name=coupon_name)
        now = policy.now
        if policy.entries_open_at is not None and now < policy.entries_open_at:
            raise EntriesNotOpen(f"Entries open at {format_utc(policy.entries_open_at)}.")
        if policy.mode == Mode.DRAW and (policy.opened_at is not None or now >= policy.draw_at):
            raise EntriesClosed()
        # Under the policy lock no other entry of this coupon is being written: this read is exact, and the
        # unique constraint is the database's backstop.
        entered = set(
            Entry.objects.filter(coupon_id=policy.pk, user_id__in={user_id for user_id, _ in members}).values_list(
                "user_id", flat=True
            )
        )
        fresh = _spend_challenges([solved for user_id, solved in members if solved and user_id not in entered])
        outcomes, used = [], set()
        for user_id, solved in members:
            if user_id in entered:
                outcomes.append(AlreadyEntered())
            elif solved is not None and (solved.signature not in fresh or solved.signature in used):
                outcomes.append(ProofOfWorkInvalid(SPENT_CHALLENGE))
            else:
                entered.add(user_id)
                if solved is not None:
                    used.add(solved.signature)
                outcomes.append(user_id)
        if fresh - used:  # spent here for a member refused after all (its user entered earlier in the group)
            SpentChallenge.objects.filter(signature__in=fresh - used).delete()
        if policy.mode == Mode.QUEUE:
            _open_queue_if_due(policy, now)
        status = EntryStatus.SOLD_OUT if policy.sold_out_at is not None else EntryStatus.WAITING
        new = []
        for user_id in (outcome for outcome in outcomes if isinstance(outcome, str)):
            policy.entries_count += 1
            position = None
            if policy.mode == Mode.QUEUE and policy.opened_at is not None:
                policy.last_position += 1
                position = policy.last_position
            new.append(
                Entry(
                    coupon_id=policy.pk,
                    user_id=user_id,
                    created_at=now,
                    arrival=policy.entries_count,
                    position=position,
                    status=status,
                )
            )
        Entry.objects.bulk_create(new)
        policy.save(update_fields=["entries_count", "last_position", "opened_at"])
    created = iter(new)
    return [next(created) if isinstance(outcome, str) else outcome for outcome in outcomes]


def _spend_challenges(solved):
    """Record these proofs of work's challenges as spent; returns the signatures recorded now (not those that an
    entry spent already). One statement that cannot fail the transaction (ON CONFLICT DO NOTHING): a solution
    sent to two coupons at once waits on the key's index entry and finds it taken once the first commits."""
    distinct = {item.signature: item for item in solved}
    if not distinct:
        return set()
    table = connection.ops.quote_name(SpentChallenge._meta.db_table)
    rows = ", ".join(["(%s, %s)"] * len(distinct))
    values = [
        value
        for item in distinct.values()
        for value in (
            item.signature,
            connection.ops.adapt_datetimefield_value(datetime.fromtimestamp(item.expires_at, UTC)),
        )
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (signature, expires_at) VALUES {rows}"  # noqa: S608 - the table's name only
            " ON CONFLICT (signature) DO NOTHING RETURNING signature",
            values,
        )
        return {signature for (signature,) in cursor.fetchall()}


def forget_spent_challenges() -> int:
    """Delete the spent challenges past their expiry (refused as expired anyway); returns how many."""
    deleted, _ = SpentChallenge.objects.filter(expires_at__lt=Now()).delete()
    return deleted


def _open_queue_if_due(policy, now):
    """At the sale's start: the pre-queue's entries get positions in the seeded order (admission/draws.py)."""
    starts_at = policy.coupon.starts_at
    if policy.opened_at is not None or (starts_at is not None and now < starts_at):
        return
    waiting = dict(Entry.objects.filter(coupon_id=policy.pk, position__isnull=True).values_list("user_id", "pk"))
    ordered = draws.draw_order(policy.seed, waiting)
    _set_positions(policy, [waiting[user_id] for user_id in ordered])
    policy.opened_at = now


def _set_positions(policy, entry_ids):
    """Positions last_position + 1, + 2... to these entries, in order."""
    entries = [Entry(pk=entry_id, position=policy.last_position + n) for n, entry_id in enumerate(entry_ids, 1)]
    Entry.objects.bulk_update(entries, ["position"], batch_size=1000)
    policy.last_position += len(entries)


def _make_draw(policy, now):
    """At draw_at: the entry list frozen and hashed, every entry given its place in the seeded order."""
    entries = dict(Entry.objects.filter(coupon_id=policy.pk).values_list("user_id", "pk"))
    ordered = draws.draw_order(policy.seed, entries)
    _set_positions(policy, [entries[user_id] for user_id in ordered])
    policy.entries_hash = draws.entries_hash(entries)
    policy.opened_at = now
    amount = policy.drawn_amount = policy.coupon.amount
    return NewEvent(
        DRAW_COMPLETED,
        {
            "commitment": policy.commitment,
            "seed": policy.seed,
            "entries_hash": policy.entries_hash,
            "entries": len(entries),
            "winners": ordered[:amount],
        },
    )


def admission_pass(*, coupon_id: int) -> dict:
    """One pass of the coupon's admission, in one transaction under its policy lock; returns what it did.

    In order: a queue opens (pre-queue shuffled) at the sale's start, a draw
    is made at draw_at; admissions past their deadline lapse; with no stock
    left, everyone still waiting hears sold_out (a draw's waiting list:
    not_selected); otherwise the next waiting by position are admitted: as
    many as the stock left can serve, less the admissions still running
    (topped up as those are used or lapse), and with `admit_per_second`,
    no more than that rate allows since the last admission.
    """
    done = {"opened": False, "lapsed": 0, "sold_out": 0, "admitted": 0}
    with transaction.atomic():
        try:
            policy = _locked_policy(coupon_id=coupon_id)
        except CouponNotFound:
            return done
        now, events = policy.now, []
        if policy.opened_at is None:
            if policy.mode == Mode.QUEUE:
                _open_queue_if_due(policy, now)
            elif now >= policy.draw_at:
                events.append(_make_draw(policy, now))
            done["opened"] = policy.opened_at is not None
            if policy.opened_at is None:
                return done
        lapsed = _lapse(coupon_id, now)
        done["lapsed"] = len(lapsed)
        events += [NewEvent(ADMISSION_LAPSED, {"user_id": user_id}) for user_id in lapsed]
        remaining, running = _stock_and_running(coupon_id, now)
        if remaining == 0:
            told = EntryStatus.NOT_SELECTED if policy.mode == Mode.DRAW else EntryStatus.SOLD_OUT
            done["sold_out"] = Entry.objects.filter(coupon_id=coupon_id, status=EntryStatus.WAITING).update(status=told)
            if policy.sold_out_at is None:
                policy.sold_out_at = now
        else:
            admitted = _admit(policy, now, remaining - running)
            done["admitted"] = len(admitted)
            until = format_utc(now + timedelta(seconds=policy.admission_seconds))
            events += [
                NewEvent(ENTRY_ADMITTED, {"user_id": user_id, "position": position, "admitted_until": until})
                for user_id, position in admitted
            ]
        policy.save(
            update_fields=[
                "opened_at",
                "entries_hash",
                "drawn_amount",
                "last_position",
                "last_admission_at",
                "sold_out_at",
            ]
        )
        record_events(coupon_id=coupon_id, coupon_name=policy.coupon.name, events=events)
    return done


def _lapse(coupon_id, now):
    """Admissions past their deadline, unused, become `expired`; returns their users. UPDATE ... RETURNING: a claim
    that spends one meanwhile (by its own clock, before the deadline) is not counted as lapsed."""
    table = connection.ops.quote_name(Entry._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET status = %s"  # noqa: S608 - the table's name only
            " WHERE coupon_id = %s AND status = %s AND admitted_until <= %s RETURNING user_id",
            [EntryStatus.EXPIRED, coupon_id, EntryStatus.ADMITTED, connection.ops.adapt_datetimefield_value(now)],
        )
        return [user_id for (user_id,) in cursor.fetchall()]


def _stock_and_running(coupon_id, now):
    """(the coupon's stock left, its admissions still running), in one statement: one snapshot, in which a claim
    that took a unit has also spent its entry."""
    running = (
        Entry.objects.filter(coupon_id=OuterRef("pk"), status=EntryStatus.ADMITTED, admitted_until__gt=now)
        .order_by()
        .values("coupon_id")
        .annotate(n=Count("pk"))
        .values("n")
    )
    remaining, running = (
        Coupon.objects.filter(pk=coupon_id)
        .annotate(running=Subquery(running))
        .values_list("remaining_amount", "running")
    ).get()
    return remaining, running or 0


def _admit(policy, now, capacity):
    """Admit up to `capacity` of the next waiting (by position), within admit_per_second; returns (user, position)."""
    count = capacity
    if policy.admit_per_second is not None:
        since = policy.last_admission_at or policy.opened_at
        elapsed = max(0.0, (now - since).total_seconds())
        count = min(count, int(policy.admit_per_second * min(elapsed, 1.0)))
    if count <= 0:
        return []
    chosen = list(
        Entry.objects.filter(coupon_id=policy.pk, status=EntryStatus.WAITING, position__isnull=False)
        .order_by("position")
        .values_list("pk", "user_id", "position")[:count]
    )
    if not chosen:
        return []
    Entry.objects.filter(pk__in=[pk for pk, _, _ in chosen], status=EntryStatus.WAITING).update(
        status=EntryStatus.ADMITTED,
        admitted_at=now,
        admitted_until=now + timedelta(seconds=policy.admission_seconds),
    )
    policy.last_admission_at = now
    return [(user_id, position) for _, user_id, position in chosen]


def coupons_to_pass() -> list[int]:
    """The coupons whose admission has work left: not opened yet, or with entries waiting or admitted."""
    return list(
        AdmissionPolicy.objects.filter(
            Q(opened_at__isnull=True) | Q(coupon__entries__status__in=[EntryStatus.WAITING, EntryStatus.ADMITTED])
        )
        .values_list("pk", flat=True)
        .distinct()
        .order_by("pk")
    )


def admission_passes() -> dict:
    """One pass over every coupon with admission work (the worker's loop body); totals of what was done. With
    ADMISSION_PROOF_OF_WORK, also the spent challenges forgotten once expired (only then are any recorded)."""
    totals = {"opened": 0, "lapsed": 0, "sold_out": 0, "admitted": 0}
    for coupon_id in coupons_to_pass():
        for key, value in admission_pass(coupon_id=coupon_id).items():
            totals[key] += int(value)
    if settings.ADMISSION_PROOF_OF_WORK:
        totals["challenges_forgotten"] = forget_spent_challenges()
    return totals


def spend_entries(*, spent: list[tuple[int, int]]) -> None:
    """In the claim group's transaction: each (entry id, claim id) becomes `claimed` by that claim, in one
    statement whatever their number (the claim column is unique: an entry is spent once)."""
    if not spent:
        return
    Entry.objects.filter(pk__in=[entry_id for entry_id, _ in spent]).update(
        status=EntryStatus.CLAIMED,
        claim_id=Case(*(When(pk=entry_id, then=Value(claim_id)) for entry_id, claim_id in spent)),
    )


# The process's entry groups, by coupon name (the server forks its workers before any request: each has its own).
_entry_groups = Groups(lambda coupon_name, members: enter_group(coupon_name=coupon_name, members=members))
