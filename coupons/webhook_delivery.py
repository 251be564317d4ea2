"""Delivering events to webhook subscriptions: what `python manage.py deliver_events` runs.

Each subscription reads the event log (coupons/outbox.py) from its own
cursor, in the log's order, one event after the other: a subscription's
events arrive in order (a coupon's by `sequence`), and the next one is not
sent before the current one is delivered. Several workers may run, on one
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
from datetime import timedelta
from urllib.parse import urlsplit

import structlog
from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, Q
from django.utils import timezone
from prometheus_client import Counter, Histogram
from standardwebhooks import Webhook

from coupons.exceptions import UnsafeWebhookUrl
from coupons.models import Event, WebhookDelivery, WebhookSubscription
from coupons.outbox import as_message, events_after
from coupons.webhooks import safe_address, waiting_events

# Events one lease delivers before the worker looks at the other subscriptions (fairness).
BATCH_SIZE = 100
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
    now = timezone.now()
    with transaction.atomic():
        subscription = (
            WebhookSubscription.objects.select_for_update(skip_locked=True)
            .filter(is_active=True)
            .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
            .filter(Q(leased_until__isnull=True) | Q(leased_until__lte=now))
            .filter(Exists(waiting_events()))
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
    attempts = 0
    cursor = (subscription.cursor_transaction_id, subscription.cursor_position)
    for event in events_after(after=cursor, limit=BATCH_SIZE):
        if subscription.event_types and event.type not in subscription.event_types:
            cursor = (event.transaction_id, event.position)  # not subscribed: passed over
            continue
        if cursor != (subscription.cursor_transaction_id, subscription.cursor_position):
            if not _move_cursor(subscription, worker, cursor):
                return attempts
        started_at = timezone.now()
        started = time.monotonic()
        result = send(subscription, event)
        attempts += 1
        duration_ms = (time.monotonic() - started) * 1000
        _counters[result.outcome].inc()
        if not _record(subscription, worker, event, result, started_at, duration_ms):
            return attempts  # lease lost: another worker has this subscription now
        if result.outcome != Outcome.DELIVERED:
            return attempts
        delivery_lag.observe(max(0.0, (timezone.now() - event.occurred_at).total_seconds()))
        cursor = (event.transaction_id, event.position)
    if cursor != (subscription.cursor_transaction_id, subscription.cursor_position):
        _move_cursor(subscription, worker, cursor)
    return attempts


def _move_cursor(subscription, worker, cursor):
    """Move the cursor past passed-over events; whether the lease was still this worker's."""
    moved = WebhookSubscription.objects.filter(pk=subscription.pk, lease_owner=worker).update(
        cursor_transaction_id=cursor[0], cursor_position=cursor[1]
    )
    subscription.cursor_transaction_id, subscription.cursor_position = cursor
    return moved == 1


def _record(subscription, worker, event, result, started_at, duration_ms):
    """Record the attempt and move the subscription on (delivered) or schedule its retry; whether the lease held."""
    now = timezone.now()
    delivered = result.outcome == Outcome.DELIVERED
    attempt = subscription.failed_attempts + 1  # of this event
    changes = {"leased_until": now + timedelta(seconds=lease_seconds())}
    if delivered:
        changes.update(
            cursor_transaction_id=event.transaction_id,
            cursor_position=event.position,
            failing_since=None,
            failed_attempts=0,
            next_attempt_at=None,
        )
    else:
        failing_since = subscription.failing_since or started_at
        failed = subscription.failed_attempts + 1
        changes.update(failing_since=failing_since, failed_attempts=failed, next_attempt_at=now + backoff(failed))
        reason = _disable_reason(result, failing_since, now)
        if reason:
            changes.update(is_active=False, disabled_at=now, disabled_reason=reason[:255])
    with transaction.atomic():
        if WebhookSubscription.objects.filter(pk=subscription.pk, lease_owner=worker).update(**changes) != 1:
            return False
        WebhookDelivery.objects.create(
            subscription=subscription,
            event=event,
            attempt=attempt,
            attempted_at=started_at,
            outcome=result.outcome,
            response_status=result.status,
            duration_ms=duration_ms,
            error=result.error[:255],
        )
    for field, value in changes.items():
        setattr(subscription, field, value)
    log = logger.info if delivered else logger.warning
    log(
        "webhook_delivery",
        subscription=str(subscription.pk),
        event_id=str(event.uuid),
        event_type=event.type,
        outcome=result.outcome,
        status=result.status,
        attempt=attempt,
        duration_ms=round(duration_ms, 1),
        error=result.error or None,
        disabled=not changes.get("is_active", True),
    )
    return True


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
    """
    parts = urlsplit(url)
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    address = safe_address(parts.hostname, port)
    connection_class = http.client.HTTPSConnection if https else http.client.HTTPConnection
    connection = connection_class(parts.hostname, port, timeout=timeout)
    # The checked address, whatever the host name resolves to now (TLS still checks the host name).
    connection._create_connection = lambda _, *args: socket.create_connection((address, port), *args)
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
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read(MAX_ANSWER_BYTES)
        if expired.is_set():  # cut off mid-answer: a read after the hang-up just sees the end of the stream
            raise TimeoutError()
        return response.status
    except (OSError, http.client.HTTPException):
        if expired.is_set():
            raise TimeoutError() from None
        raise
    finally:
        deadline.cancel()
        connection.close()


def worker_name() -> str:
    return f"{socket.gethostname()[:16]}-{uuid.uuid4().hex[:12]}"
