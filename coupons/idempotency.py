"""Idempotency keys: a request retried with the same `Idempotency-Key` has its effect once and gets the first answer.

A key goes through two states, each one row of IdempotencyKey:

1. **Held** by the attempt running the request (`acquire_key`): a short
   transaction of its own inserts the row with a random `owner` and a lease
   (`locked_until`, IDEMPOTENCY_LEASE). Another request with the key while
   it is held hears "in use" (409, Retry-After).
2. **Answered**: the answer (status, body, Retry-After) is written *in the
   transaction of the request's effect* (`store_answers`), which only
   succeeds if the attempt still holds the key (`owner` unchanged). So an
   effect is committed exactly with its answer: a 201 whose HTTP answer was
   lost (a failover, a dropped connection) is replayed as 201.

A request that ends without an answer worth keeping (a 5xx, a 429) lets
go of the key (`release_key`), so the retry runs afresh. If that cannot be
done — the process died, the database was away — the lease runs out and
the next request with the key takes it over: a key is never stuck for
longer than the lease. Should the first attempt still be running then (a
paused process), its answer can no longer be stored, so its transaction
rolls back and its effect with it: one effect per key, always.

Keys are kept IDEMPOTENCY_TTL seconds; an expired key is as good as new,
and `purge_expired_keys` deletes them in bounded batches.
"""

import functools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

from coupons.exceptions import IdempotencyKeyInUse, IdempotencyKeyReused
from coupons.models import IdempotencyKey

# Times a request may find the key's row gone (purged, released) between its insert and its read before giving up.
ACQUIRE_ROUNDS = 3


@dataclass(frozen=True)
class StoredAnswer:
    status_code: int
    content_type: str  # "" for an empty body
    retry_after: str  # "" when the answer had no Retry-After
    body: bytes


class Attempt:
    """The request that holds a key. `answer_for(outcome)` (set by the API layer) turns what a service
    returned or raised into the answer to store; `stored` is that answer once its transaction has committed."""

    __slots__ = ("key_id", "owner", "answer_for", "stored")

    def __init__(self, key_id: int, owner: str, answer_for: Callable[[object], StoredAnswer] | None = None):
        self.key_id = key_id
        self.owner = owner
        self.answer_for = answer_for
        self.stored: StoredAnswer | None = None


def acquire_key(*, caller: str, key: str, fingerprint: str) -> Attempt | StoredAnswer:
    """Hold the caller's key for this request (an Attempt), or the answer it already got (a StoredAnswer).

    Raises IdempotencyKeyReused when the key was used for another request
    (another fingerprint), IdempotencyKeyInUse while another attempt holds it.
    Each statement commits on its own: the key is held before the request's
    transaction starts.
    """
    for _ in range(ACQUIRE_ROUNDS):
        now = timezone.now()
        owner = uuid.uuid4().hex
        key_id = _insert_held(caller, key, fingerprint, owner, now)
        if key_id is not None:
            return Attempt(key_id, owner)
        row = (
            IdempotencyKey.objects.filter(caller=caller, key=key)
            .values("id", "fingerprint", "owner", "locked_until", "status_code", "expires_at")
            .first()
        )
        if row is None:
            continue  # released or purged since the insert: try again
        if row["expires_at"] <= now:
            # Expired: as good as new, whatever it was.
            if _take_over(row["id"], owner, now, {"expires_at__lte": now}, fingerprint=fingerprint):
                return Attempt(row["id"], owner)
            continue
        if row["fingerprint"] != fingerprint:
            raise IdempotencyKeyReused()
        if row["status_code"] is not None:
            return _stored_answer(row["id"])
        if row["locked_until"] > now:
            raise IdempotencyKeyInUse()
        # Held by an attempt that never answered nor let go (its process died): its lease is over.
        if _take_over(row["id"], owner, now, {"owner": row["owner"], "status_code__isnull": True}):
            return Attempt(row["id"], owner)
    raise IdempotencyKeyInUse()


def _insert_held(caller, key, fingerprint, owner, now):
    """Insert the key as held by `owner`; its id, or None if the caller already has this key."""
    lease = timedelta(seconds=settings.IDEMPOTENCY_LEASE)
    ttl = timedelta(seconds=settings.IDEMPOTENCY_TTL)
    adapt = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        cursor.execute(
            _insert_sql(),
            [caller, key, fingerprint, owner, adapt(now + lease), b"", adapt(now), adapt(now + ttl)],
        )
        row = cursor.fetchone()
    return row[0] if row else None


@functools.cache
def _insert_sql():
    table = connection.ops.quote_name(IdempotencyKey._meta.db_table)
    return (
        f"INSERT INTO {table} (caller, key, fingerprint, owner, locked_until, content_type, retry_after, body,"  # noqa: S608
        " created_at, expires_at) VALUES (%s, %s, %s, %s, %s, '', '', %s, %s, %s)"
        " ON CONFLICT (caller, key) DO NOTHING RETURNING id"
    )


def _take_over(key_id, owner, now, condition, *, fingerprint=None):
    """Make `owner` hold the key if `condition` still holds (a compare-and-set); whether it did."""
    changes = {"owner": owner, "locked_until": now + timedelta(seconds=settings.IDEMPOTENCY_LEASE)}
    if fingerprint is not None:  # an expired key starts a new life
        changes.update(
            fingerprint=fingerprint,
            status_code=None,
            content_type="",
            retry_after="",
            body=b"",
            created_at=now,
            expires_at=now + timedelta(seconds=settings.IDEMPOTENCY_TTL),
        )
    return IdempotencyKey.objects.filter(pk=key_id, **condition).update(**changes) == 1


def _stored_answer(key_id):
    status_code, content_type, retry_after, body = IdempotencyKey.objects.values_list(
        "status_code", "content_type", "retry_after", "body"
    ).get(pk=key_id)
    return StoredAnswer(status_code, content_type, retry_after, bytes(body))


def store_answers(answers: Sequence[tuple[Attempt, StoredAnswer]]) -> set[int]:
    """Write each attempt's answer, in the caller's transaction, if the attempt still holds its key.

    One statement whatever the number of answers (a claim group stores its
    members' answers together). Returns the key ids of the attempts that no
    longer held their key: the caller must not commit an effect for those.
    """
    params = []
    for attempt, answer in answers:
        params += [attempt.key_id, attempt.owner, answer.status_code, answer.content_type, answer.retry_after]
        params.append(answer.body)
    with connection.cursor() as cursor:
        cursor.execute(_store_sql(len(answers)), params)
        stored = {key_id for (key_id,) in cursor.fetchall()}
    return {attempt.key_id for attempt, _ in answers} - stored


@functools.lru_cache(maxsize=256)
def _store_sql(count):
    table = connection.ops.quote_name(IdempotencyKey._meta.db_table)
    # VALUES columns are named column1, column2... on PostgreSQL and SQLite alike.
    return (
        f"UPDATE {table} SET status_code = v.column3, content_type = v.column4, retry_after = v.column5,"  # noqa: S608
        " body = v.column6, owner = '', locked_until = NULL"
        f" FROM (VALUES {', '.join(['(%s, %s, %s, %s, %s, %s)'] * count)}) AS v"
        f" WHERE {table}.id = v.column1 AND {table}.owner = v.column2 RETURNING {table}.id"
    )


def release_key(attempt: Attempt) -> None:
    """Let go of a key whose request ends without an answer to keep (a 5xx, a 429), so that its retry runs afresh.

    Never touches an answered key: if the request's transaction committed
    after all (its answer lost on the way), the retry gets that answer.
    """
    IdempotencyKey.objects.filter(pk=attempt.key_id, owner=attempt.owner, status_code__isnull=True).delete()


def purge_expired_keys(*, batch_size: int = 1000) -> int:
    """Delete expired keys, `batch_size` at a time (each batch its own short statement); how many."""
    purged = 0
    while True:
        now = timezone.now()
        batch = list(IdempotencyKey.objects.filter(expires_at__lte=now).values_list("pk", flat=True)[:batch_size])
        if not batch:
            return purged
        purged += IdempotencyKey.objects.filter(pk__in=batch, expires_at__lte=now).delete()[0]
        if len(batch) < batch_size:
            return purged
