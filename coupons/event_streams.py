"""Publishing the event log to NATS JetStream (EVENTS_NATS_URL), for consumers that read a message stream.

`python manage.py deliver_events` runs `publish_once` next to the webhooks
when EVENTS_NATS_URL is set. Each event goes to the stream EVENTS_NATS_STREAM
(created if missing) on the subject "<EVENTS_NATS_SUBJECT>.<type>" (e.g.
`coupons.events.claim.granted`), its body the event's JSON (as a webhook's),
with `Nats-Msg-Id` set to the event's id: JetStream drops a message it has
already stored with that id (within the stream's duplicate window, two
minutes by default), so a publisher that dies between publishing and
saving its cursor does not make duplicates that consumers would see.

Events go out in the log's order (coupons/outbox.py: never missing one);
a coupon's events are in `sequence` order but when two of its transactions
commit within moments of each other: consumers that care order by
`sequence` per coupon, as readers of GET /api/events do. One worker
publishes at a time (a lease on the publisher's cursor row).
"""

import asyncio
import json
import threading
from datetime import timedelta

import nats
from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

from coupons.models import EventStreamCursor
from coupons.outbox import as_message, events_after, log_end

NAME = "nats"
BATCH_SIZE = 500
LEASE_SECONDS = 30
CONNECT_TIMEOUT_SECONDS = 5
# The longest one batch may take to be published and acknowledged.
PUBLISH_TIMEOUT_SECONDS = 60


class NatsPublisher:
    """A connection to the NATS server, kept open by the worker.

    nats-py is asyncio: its loop runs in a thread of its own, so that the
    caller's thread may have a loop of its own or none.
    """

    def __init__(self, url):
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="nats", daemon=True)
        self.thread.start()
        self.connection = None
        self.jetstream = None

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=PUBLISH_TIMEOUT_SECONDS)

    def publish(self, events):
        """Publish the events, in order, each acknowledged by JetStream before the next."""
        self.run(self._publish(events))

    async def _publish(self, events):
        if self.connection is None or self.connection.is_closed:
            self.connection = await nats.connect(
                self.url, connect_timeout=CONNECT_TIMEOUT_SECONDS, max_reconnect_attempts=1, allow_reconnect=False
            )
            self.jetstream = self.connection.jetstream()
            await self._ensure_stream()
        for event in events:
            body = json.dumps(as_message(event), separators=(",", ":"), ensure_ascii=False).encode()
            subject = f"{settings.EVENTS_NATS_SUBJECT}.{event.type}"
            await self.jetstream.publish(subject, body, headers={"Nats-Msg-Id": str(event.uuid)})

    async def _ensure_stream(self):
        try:
            await self.jetstream.stream_info(settings.EVENTS_NATS_STREAM)
        except NotFoundError:
            await self.jetstream.add_stream(
                StreamConfig(name=settings.EVENTS_NATS_STREAM, subjects=[f"{settings.EVENTS_NATS_SUBJECT}.>"])
            )

    def close(self):
        if self.connection is not None and not self.connection.is_closed:
            self.run(self.connection.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def publish_once(*, publisher: NatsPublisher, worker: str) -> int:
    """Publish the next batch of events if this worker holds (or can take) the lease; how many were published."""
    cursor_row = _lease(worker)
    if cursor_row is None:
        return 0
    events = events_after(after=(cursor_row.cursor_transaction_id, cursor_row.cursor_position), limit=BATCH_SIZE)
    if events:
        publisher.publish(events)  # raises on failure: the cursor stays, the batch is published again
    EventStreamCursor.objects.filter(pk=cursor_row.pk, lease_owner=worker).update(
        cursor_transaction_id=events[-1].transaction_id if events else cursor_row.cursor_transaction_id,
        cursor_position=events[-1].position if events else cursor_row.cursor_position,
        leased_until=timezone.now() + timedelta(seconds=LEASE_SECONDS),
    )
    return len(events)


def _lease(worker):
    """The publisher's cursor row, leased to `worker`; None while another worker holds it.

    The first publisher starts at the end of the log: the stream gets the
    events committed from then on.
    """
    now = timezone.now()
    transaction_id, position = log_end()
    cursor_row, _ = EventStreamCursor.objects.get_or_create(
        name=NAME, defaults={"cursor_transaction_id": transaction_id, "cursor_position": position}
    )
    taken = (
        EventStreamCursor.objects.filter(pk=cursor_row.pk)
        .filter(Q(lease_owner=worker) | Q(leased_until__isnull=True) | Q(leased_until__lte=now))
        .update(lease_owner=worker, leased_until=now + timedelta(seconds=LEASE_SECONDS))
    )
    if not taken:
        return None
    cursor_row.refresh_from_db()
    return cursor_row
