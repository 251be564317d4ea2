"""python manage.py deliver_events: the webhook delivery worker (coupons/webhook_delivery.py).

Runs until SIGTERM or SIGINT (it finishes the delivery in flight first), or
with --once until nothing is due. Several may run at once, on one host or
many. Once a minute it also purges expired idempotency keys and events past
EVENT_RETENTION_DAYS, in bounded batches. With WEBHOOK_METRICS_PORT set it
serves its Prometheus metrics (webhook_deliveries_total...) on that port.
With EVENTS_NATS_URL set it also publishes the events to NATS JetStream
(coupons/event_streams.py).
"""

import signal
import threading
import time
from datetime import timedelta

import structlog
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import DatabaseError, close_old_connections
from django.utils import timezone
from nats.errors import Error as NatsError
from prometheus_client import start_http_server

from coupons.event_streams import NatsPublisher, publish_once
from coupons.idempotency import purge_expired_keys
from coupons.outbox import purge_events_before
from coupons.webhook_delivery import deliver_once, worker_name

HOUSEKEEPING_SECONDS = 60
# After a database error, wait this long before trying again.
ERROR_PAUSE_SECONDS = 1

logger = structlog.get_logger("coupons.deliver_events")


class Command(BaseCommand):
    help = "Deliver events to webhook subscriptions (and purge expired idempotency keys and old events)."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Deliver what is due, then exit.")

    def handle(self, *args, once, **options):
        stop = threading.Event()
        if not once:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: stop.set())
        if settings.WEBHOOK_METRICS_PORT:
            start_http_server(settings.WEBHOOK_METRICS_PORT, addr=settings.WEBHOOK_METRICS_HOST)
        worker = worker_name()
        publisher = NatsPublisher(settings.EVENTS_NATS_URL) if settings.EVENTS_NATS_URL else None
        logger.info("deliver_events_started", worker=worker, nats=bool(publisher))
        next_housekeeping = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    if time.monotonic() >= next_housekeeping:
                        housekeeping()
                        next_housekeeping = time.monotonic() + HOUSEKEEPING_SECONDS
                    busy = deliver_once(worker=worker)
                    if publisher is not None:
                        busy += publish_once(publisher=publisher, worker=worker)
                    if busy:
                        continue  # more may be due: no pause
                except DatabaseError as exc:
                    logger.warning("deliver_events_database_error", error=str(exc))
                    close_old_connections()
                    stop.wait(ERROR_PAUSE_SECONDS)
                    continue
                except (OSError, NatsError) as exc:  # NATS away: its events wait, webhooks go on
                    logger.warning("deliver_events_nats_error", error=f"{type(exc).__name__}: {exc}")
                    publisher.close()
                    publisher = NatsPublisher(settings.EVENTS_NATS_URL)
                    stop.wait(ERROR_PAUSE_SECONDS)
                    continue
                if once:
                    break
                stop.wait(settings.WEBHOOK_POLL_MS / 1000)
        finally:
            if publisher is not None:
                publisher.close()
        logger.info("deliver_events_stopped", worker=worker)


def housekeeping():
    keys = purge_expired_keys()
    events = purge_events_before(timezone.now() - timedelta(days=settings.EVENT_RETENTION_DAYS))
    if keys or events:
        logger.info("deliver_events_purged", idempotency_keys=keys, events=events)
