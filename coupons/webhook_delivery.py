"""Delivering events to webhook subscriptions: what `python manage.py deliver_events` runs.

Each subscription reads the event log (coupons/outbox.py) from its own
cursor and sends one event after the other: each coupon's events in
`sequence` order (see `_deliver`), and the next one is not sent before the
current one is delivered. Several workers may run, on one
host or many: a worker takes a subscription that has events waiting with
`SELECT ... FOR UPDATE SKIP LOCKED` and a lease (`leased_until`) written in
that short transaction; it then delivers outside any transaction (a slow
receiver holds no lock and no snapshot), renewing the lease as the cursor
moves. A worker that dies leaves a lease that runs out; another then takes
over, so the event in flight may be sent twice: delivery is at least once,
and receivers deduplicate by `Webhook-Id`, which is the event's id.

Each request is signed the Standard Webhooks way (standardwebhooks, its
reference implementation): `Webhook-Id`, `Webhook-Timestamp` and
`Webhook-Signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.

A failure — no connection, a timeout (WEBHOOK_TIMEOUT for the whole
exchange, however slowly the receiver answers), any status but 2xx — is
retried with exponential backoff and jitter (about 1, 2, 4... s, at most
WEBHOOK_BACKOFF_MAX apart) for WEBHOOK_RETRY_FOR seconds since the first
failure; then the subscription is disabled and says why in the admin (a
410 Gone disables it at once). Re-enabled, it resumes where it stopped.
Every attempt is recorded (WebhookDelivery, in the admin) and counted
(`webhook_deliveries_total{outcome}`).
"""

import http.client
import json
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import structlog
from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, Q
from django.utils import timezone
from prometheus_client import Counter, Histogram
from standardwebhooks import Webhook

from coupons.exceptions import UnsafeWebhookUrl
from coupons.models import Event, WebhookCouponCursor, WebhookDelivery, WebhookSubscription
from coupons.outbox import as_message, events_after
from coupons.webhooks import safe_address, waiting_events

# Events one lease delivers before the worker looks at the other subscriptions (fairness)...
BATCH_SIZE = 100
# ...unless a whole batch is held back behind a coupon's earlier event: then up to this many are read.
MAX_BATCH_SIZE = 6400
# Deliveries recorded together, in one transaction (see _flush).
FLUSH_SIZE = 20
# A receiver's answer is read up to this many bytes (it only matters that it came).
MAX_ANSWER_BYTES = 64 * 1024
USER_AGENT = "couponsite-webhooks/1"

Outcome = WebhookDelivery.Outcome
logger = structlog.get_logger(__name__)
deliveries_total = Counter("webhook_deliveries", "Webhook delivery attempts, by outcome.", ["outcome"])
_counters = {outcome: deliveries_total.labels(outcome=outcome) for outcome in Outcome.values}
delivery_lag = Histogram(
    "webhook_delivery_lag_seconds",
    "From an event's commit (its occurred_at, the database's clock) to its delivery's 2xx.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, float("inf")),
)


@dataclass(frozen=True)
class Result:
    outcome: str
    status: int | None = None
    error: str = ""


def lease_seconds():
    """How long a worker holds a subscription without news: well above one delivery's longest."""
    return 3 * settings.WEBHOOK_TIMEOUT + 10


def deliver_once(*, worker: str) -> int:
    """Take one subscription with events due and deliver them (at most BATCH_SIZE); how many attempts were made."""
    subscription = _lease(worker)
    if subscription is None:
        return 0
    try:
        return _deliver(subscription, worker)
    finally:
        WebhookSubscription.objects.filter(pk=subscription.pk, lease_owner=worker).update(
            lease_owner="", leased_until=None
        )


def _lease(worker):
    """A subscription with events due, leased to `worker`; None if there is none (or all are leased)."""
    now = timezone.now()
    due = (
        WebhookSubscription.objects.filter(is_active=True)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .filter(Q(leased_until__isnull=True) | Q(leased_until__lte=now))
        .filter(Exists(waiting_events()))
    )
    # An idle worker's poll is this one read: no transaction (on SQLite, BEGIN IMMEDIATE would take the
    # database's write lock, which claims queue for, several times a second).
    if not due.exists():
        return None
    with transaction.atomic():
        subscription = (
            due.select_for_update(skip_locked=True)
            .order_by(F("leased_until").asc(nulls_first=True), "created_at")
            .first()
        )
        if subscription is None:
            return None
        subscription.lease_owner = worker
        subscription.leased_until = now + timedelta(seconds=lease_seconds())
        subscription.save(update_fields=["lease_owner", "leased_until"])
    return subscription


def _deliver(subscription, worker):
    """Deliver the subscription's next batch of events; how many attempts were made.

    The log lists events in an order that never misses one (coupons/outbox.py),
    but two transactions of one coupon can reach it in the other order than
    the one they took its row lock in, so each coupon's events are sent by
    `sequence`: an event whose coupon's previous one has not been sent is
    held until it has. The subscription's cursor moves up to the first event
    not yet done with; events after it that were sent are known by their
    coupon's cursor (WebhookCouponCursor) and not sent again.
    """
    attempts, limit, delivered = 0, BATCH_SIZE, []
    while True:
        start = (subscription.cursor_transaction_id, subscription.cursor_position)
        events = events_after(after=start, limit=limit)
        if not events:
            return attempts
        last_sequences = _last_sequences(subscription, {event.coupon_id for event in events})
        done, failed, progress = set(), False, True
        while progress and not failed:  # again while a pass moved on: a held event may be next now
            progress = False
            for event in events:
                if event.position in done:
                    continue
                if event.sequence > last_sequences[event.coupon_id] + 1:
                    if not _purged_before(event, last_sequences[event.coupon_id]):
                        continue  # held behind an earlier event of its coupon, still to be listed
                    last_sequences[event.coupon_id] = event.sequence - 1
                if event.sequence == last_sequences[event.coupon_id] + 1 and _subscribed(subscription, event):
                    attempts += 1
                    sent = _attempt(subscription, worker, event, delivered)
                    if sent is None:
                        return attempts  # lease lost: another worker has this subscription now
                    if not sent:
                        failed = True
                        break
                last_sequences[event.coupon_id] = max(event.sequence, last_sequences[event.coupon_id])
                done.add(event.position)
                progress = True
        cursor = start
        for event in events:
            if event.position not in done:
                break
            cursor = (event.transaction_id, event.position)
        if not _flush(subscription, worker, delivered) or not _save_progress(
            subscription, worker, cursor, last_sequences
        ):
            return attempts
        if failed or len(events) < limit:
            return attempts
        if cursor == start:
            limit = min(2 * limit, MAX_BATCH_SIZE)  # a full batch held back: the missing events lie further on
            if limit == MAX_BATCH_SIZE:
                return attempts
        else:
            return attempts


def _purged_before(event, last_sequence):
    """Whether the coupon's events between `last_sequence` and `event` are gone (older than EVENT_RETENTION_DAYS,
    while the subscription was disabled, say), rather than committed and not yet listed: then nothing is to wait for.
    (Committed they are: they took the coupon row lock, and committed, before `event` did.)"""
    return not Event.objects.filter(
        coupon_id=event.coupon_id, sequence__gt=last_sequence, sequence__lt=event.sequence
    ).exists()


def _subscribed(subscription, event):
    return not subscription.event_types or event.type in subscription.event_types


def _last_sequences(subscription, coupon_ids):
    """Per coupon, the `sequence` of the last event the subscription is done with.

    A coupon it has not met yet: its last event from before the subscription
    existed (0 if none), which every later one follows.
    """
    last = dict(
        WebhookCouponCursor.objects.filter(subscription=subscription, coupon_id__in=coupon_ids).values_list(
            "coupon_id", "last_sequence"
        )
    )
    started = Q(transaction_id__lt=subscription.start_transaction_id) | Q(
        transaction_id=subscription.start_transaction_id, position__lte=subscription.start_position
    )
    for coupon_id in coupon_ids - last.keys():
        before = Event.objects.filter(started, coupon_id=coupon_id).order_by("-sequence").values("sequence")[:1]
        last[coupon_id] = next(iter(before), {"sequence": 0})["sequence"]
    return last


def _save_progress(subscription, worker, cursor, last_sequences):
    """Store the cursor and the coupons' last sequences; whether the lease was still this worker's."""
    with transaction.atomic():
        moved = WebhookSubscription.objects.filter(pk=subscription.pk, lease_owner=worker).update(
            cursor_transaction_id=cursor[0], cursor_position=cursor[1]
        )
        if moved != 1:
            return False
        _store_coupon_cursors(subscription, last_sequences)
    subscription.cursor_transaction_id, subscription.cursor_position = cursor
    return True


def _store_coupon_cursors(subscription, last_sequences):
    WebhookCouponCursor.objects.bulk_create(
        [
            WebhookCouponCursor(subscription=subscription, coupon_id=coupon_id, last_sequence=sequence)
            for coupon_id, sequence in last_sequences.items()
        ],
        update_conflicts=True,
        unique_fields=["subscription", "coupon_id"],
        update_fields=["last_sequence"],
    )


def _attempt(subscription, worker, event, delivered):
    """Send the event once: True if delivered (noted in `delivered`, recorded at the next flush), False if not
    (recorded now, after what was delivered before it), None if the lease was lost."""
    started_at = timezone.now()
    started = time.monotonic()
    result = send(subscription, event)
    attempt = Attempt(event, result, started_at, (time.monotonic() - started) * 1000, subscription.failed_attempts + 1)
    _counters[result.outcome].inc()
    if result.outcome == Outcome.DELIVERED:
        delivery_lag.observe(max(0.0, (timezone.now() - event.occurred_at).total_seconds()))
        delivered.append(attempt)
        subscription.failed_attempts = 0
        if len(delivered) >= FLUSH_SIZE and not _flush(subscription, worker, delivered):
            return None
        return True
    if not _flush(subscription, worker, delivered) or not _record_failure(subscription, worker, attempt):
        return None
    return False


@dataclass(frozen=True)
class Attempt:
    event: Event
    result: Result
    started_at: datetime
    duration_ms: float
    number: int  # of this event, for this subscription


def _flush(subscription, worker, delivered):
    """Record the deliveries made since the last flush, in one transaction; whether the lease held.

    Written a batch at a time rather than one transaction per event: that
    was most of a delivery's cost. A worker that dies before its flush has
    those events sent again by the next (at least once).
    """
    if not delivered:
        return True
    now = timezone.now()
    with transaction.atomic():
        renewed = WebhookSubscription.objects.filter(pk=subscription.pk, lease_owner=worker).update(
            leased_until=now + timedelta(seconds=lease_seconds()),
            failing_since=None,
            failed_attempts=0,
            next_attempt_at=None,
        )
        if renewed != 1:
            return False
        last_sequences = {}
        for attempt in delivered:
            last_sequences[attempt.event.coupon_id] = attempt.event.sequence
        _store_coupon_cursors(subscription, last_sequences)
        WebhookDelivery.objects.bulk_create([_delivery_row(subscription, attempt) for attempt in delivered])
    subscription.failing_since = None
    for attempt in delivered:
        _log(subscription, attempt, disabled=False)
    delivered.clear()
    return True


def _record_failure(subscription, worker, attempt):
    """Record a failed attempt and schedule the retry (or disable the subscription); whether the lease held."""
    now = timezone.now()
    failing_since = subscription.failing_since or attempt.started_at
    failed = subscription.failed_attempts + 1
    changes = {
        "leased_until": now + timedelta(seconds=lease_seconds()),
        "failing_since": failing_since,
        "failed_attempts": failed,
        "next_attempt_at": now + backoff(failed),
    }
    reason = _disable_reason(attempt.result, failing_since, now)
    if reason:
        changes.update(is_active=False, disabled_at=now, disabled_reason=reason[:255])
    with transaction.atomic():
        if WebhookSubscription.objects.filter(pk=subscription.pk, lease_owner=worker).update(**changes) != 1:
            return False
        _delivery_row(subscription, attempt).save()
    for field, value in changes.items():
        setattr(subscription, field, value)
    _log(subscription, attempt, disabled=bool(reason))
    return True


def _delivery_row(subscription, attempt):
    return WebhookDelivery(
        subscription=subscription,
        event=attempt.event,
        attempt=attempt.number,
        attempted_at=attempt.started_at,
        outcome=attempt.result.outcome,
        response_status=attempt.result.status,
        duration_ms=attempt.duration_ms,
        error=attempt.result.error[:255],
    )


def _log(subscription, attempt, *, disabled):
    delivered = attempt.result.outcome == Outcome.DELIVERED
    (logger.info if delivered else logger.warning)(
        "webhook_delivery",
        subscription=str(subscription.pk),
        event_id=str(attempt.event.uuid),
        event_type=attempt.event.type,
        coupon=attempt.event.coupon_name,
        sequence=attempt.event.sequence,
        outcome=attempt.result.outcome,
        status=attempt.result.status,
        attempt=attempt.number,
        duration_ms=round(attempt.duration_ms, 1),
        error=attempt.result.error or None,
        disabled=disabled,
    )


def _disable_reason(result, failing_since, now):
    if result.status == 410:
        return "The receiver answered 410 Gone."
    if now - failing_since >= timedelta(seconds=settings.WEBHOOK_RETRY_FOR):
        since = f"{failing_since:%Y-%m-%d %H:%M:%S} UTC"
        return f"Deliveries failed for {settings.WEBHOOK_RETRY_FOR} s since {since}; the last: {result.error}"
    return None


def backoff(failures: int) -> timedelta:
    """The wait before attempt `failures + 1`: 2^(failures-1) s capped at WEBHOOK_BACKOFF_MAX, less up to half of it
    at random (jitter: receivers coming back are not hit by every subscription at once)."""
    ceiling = min(settings.WEBHOOK_BACKOFF_MAX, 2 ** min(failures - 1, 30))
    return timedelta(seconds=random.uniform(ceiling / 2, ceiling))  # noqa: S311 - jitter, not a secret


def send(subscription: WebhookSubscription, event: Event) -> Result:
    """POST the event to the subscription's URL, signed; what came of it."""
    body = json.dumps(as_message(event), separators=(",", ":"), ensure_ascii=False)
    sent_at = timezone.now()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Webhook-Id": str(event.uuid),
        "Webhook-Timestamp": str(int(sent_at.timestamp())),
        "Webhook-Signature": Webhook(subscription.secret).sign(str(event.uuid), sent_at, body),
    }
    try:
        status = post(subscription.url, body.encode(), headers, timeout=settings.WEBHOOK_TIMEOUT)
    except UnsafeWebhookUrl as exc:
        return Result(Outcome.FORBIDDEN_ADDRESS, error=str(exc))
    except TimeoutError:
        return Result(Outcome.TIMEOUT, error=f"No complete answer within {settings.WEBHOOK_TIMEOUT} s.")
    except (OSError, http.client.HTTPException) as exc:
        return Result(Outcome.CONNECTION_ERROR, error=f"{type(exc).__name__}: {exc}")
    if 200 <= status < 300:
        return Result(Outcome.DELIVERED, status)
    return Result(Outcome.HTTP_ERROR, status, f"The receiver answered {status}.")


def post(url: str, body: bytes, headers: dict, *, timeout: float) -> int:
    """POST `body` to `url` and read the answer, all within `timeout` seconds; the status.

    Written on http.client rather than a client library, for two things
    they do not offer together: connecting to the address safe_address()
    checked (not to whatever a second DNS lookup says), and a deadline on
    the whole exchange (a socket timeout bounds each read, not a receiver
    that trickles its answer a byte at a time). No redirect is followed.
    The connection is kept open for the next event to the same receiver
    (a flash sale's events go over one connection); a kept one the receiver
    has closed meanwhile is replaced once.
    """
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = safe_address(parts.hostname, port)
    target = (parts.scheme, parts.hostname, port, address)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    kept = _kept_connections.pop(target, None)
    if kept is not None:
        try:
            return _exchange(kept, target, path, body, headers, timeout)
        except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
            pass  # closed by the receiver while idle: once more on a new connection
    return _exchange(_connect(target, timeout), target, path, body, headers, timeout)


# Open connections by (scheme, host, port, address): deliver_events is one thread.
_kept_connections = {}


def _connect(target, timeout):
    scheme, host, port, address = target
    connection_class = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    connection = connection_class(host, port, timeout=timeout)
    # The checked address, whatever the host name resolves to now (TLS still checks the host name).
    connection._create_connection = lambda _, *args: socket.create_connection((address, port), *args)
    return connection


def _exchange(connection, target, path, body, headers, timeout):
    expired = threading.Event()

    def hang_up():
        expired.set()
        if connection.sock is not None:
            try:
                connection.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    deadline = threading.Timer(timeout, hang_up)
    deadline.start()
    keep = False
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read(MAX_ANSWER_BYTES)
        if expired.is_set():  # cut off mid-answer: a read after the hang-up just sees the end of the stream
            raise TimeoutError()
        keep = response.isclosed() and not response.will_close  # read to its end, and the receiver keeps it open
        return response.status
    except (OSError, http.client.HTTPException):
        if expired.is_set():
            raise TimeoutError() from None
        raise
    finally:
        deadline.cancel()
        if keep:
            _kept_connections[target] = connection
        else:
            connection.close()


def worker_name() -> str:
    return f"{socket.gethostname()[:16]}-{uuid.uuid4().hex[:12]}"
