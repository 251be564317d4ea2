"""Publishing the event log to NATS JetStream (coupons/event_streams.py), against the real server on
127.0.0.1:4222 (NATS_URL to use another; the tests are skipped when none answers)."""

import json
import os
import socket
import time
import uuid

import nats
from django.test import TransactionTestCase, override_settings

from coupons.claim_codes import format_code
from coupons.event_streams import NatsPublisher, publish_once
from coupons.models import Claim, Event, EventStreamCursor
from coupons.services import claim_coupon, create_coupon

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")


def nats_answers():
    host, port = NATS_URL.removeprefix("nats://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


class JetStreamPublisherTests(TransactionTestCase):
    def setUp(self):
        if not nats_answers():
            self.skipTest(f"no NATS server at {NATS_URL}")
        # A stream and subjects of this test's own: the server may be shared.
        suffix = uuid.uuid4().hex[:8]
        names = {"EVENTS_NATS_STREAM": f"TEST_EVENTS_{suffix}", "EVENTS_NATS_SUBJECT": f"test.{suffix}.events"}
        self.enterContext(override_settings(EVENTS_NATS_URL=NATS_URL, **names))
        self.stream, self.subject = names["EVENTS_NATS_STREAM"], names["EVENTS_NATS_SUBJECT"]
        self.publisher = NatsPublisher(NATS_URL)
        self.addCleanup(self.publisher.close)
        self.addCleanup(lambda: self.run_async(self.delete_stream()))  # cleanups run last-in, first-out

    def run_async(self, coroutine):
        # On the publisher's loop: the test's thread may already run one (the browser tests leave theirs).
        return self.publisher.run(coroutine)

    async def delete_stream(self):
        connection = await nats.connect(NATS_URL)
        try:
            await connection.jetstream().delete_stream(self.stream)
        except nats.js.errors.NotFoundError:
            pass
        finally:
            await connection.close()

    async def read_stream(self):
        """Every message of the stream: (subject, Nats-Msg-Id, body as JSON)."""
        connection = await nats.connect(NATS_URL)
        try:
            jetstream = connection.jetstream()
            count = (await jetstream.stream_info(self.stream)).state.messages
            consumer = await jetstream.pull_subscribe(f"{self.subject}.>", stream=self.stream)
            messages = await consumer.fetch(count, timeout=5) if count else []
            return [(m.subject, m.headers["Nats-Msg-Id"], json.loads(m.data)) for m in messages]
        finally:
            await connection.close()

    def publish_all(self):
        while publish_once(publisher=self.publisher, worker="test-worker"):
            pass

    def test_every_event_is_published_once_with_its_id_even_when_published_twice(self):
        publish_once(publisher=self.publisher, worker="test-worker")  # the cursor starts at the log's end
        create_coupon(name="PROMO", amount=2)
        for user in ["ann", "bob"]:
            claim_coupon(user_id=user, coupon_name="PROMO")
        expected = list(Event.objects.order_by("transaction_id", "position"))
        deadline = time.monotonic() + 60  # another transaction on the server may hold the log's horizon back
        while EventStreamCursor.objects.get().cursor_position != expected[-1].position:
            self.assertLess(time.monotonic(), deadline)
            self.publish_all()

        # A publisher that died before saving its cursor publishes the batch again: JetStream drops the repeats.
        EventStreamCursor.objects.update(cursor_transaction_id=0, cursor_position=0)
        self.publish_all()

        published = self.run_async(self.read_stream())
        self.assertEqual([message_id for _, message_id, _ in published], [str(e.uuid) for e in expected])
        self.assertEqual(
            [(subject, body["type"], body["sequence"]) for subject, _, body in published],
            [
                (f"{self.subject}.coupon.created", "coupon.created", 1),
                (f"{self.subject}.claim.granted", "claim.granted", 2),
                (f"{self.subject}.claim.granted", "claim.granted", 3),
                (f"{self.subject}.coupon.sold_out", "coupon.sold_out", 4),
            ],
        )
        ann = Claim.objects.get(user_id="ann")
        self.assertEqual(published[1][2]["data"], {"user_id": "ann", "code": format_code(ann.code), "expires_at": None})

    def test_one_worker_publishes_at_a_time(self):
        publish_once(publisher=self.publisher, worker="first")
        create_coupon(name="PROMO", amount=1)

        self.assertEqual(publish_once(publisher=self.publisher, worker="second"), 0)  # leased to "first"
        EventStreamCursor.objects.update(leased_until=None)  # its lease ran out: "first" died
        deadline = time.monotonic() + 60
        while not publish_once(publisher=self.publisher, worker="second"):
            self.assertLess(time.monotonic(), deadline)
        self.assertEqual(EventStreamCursor.objects.get().lease_owner, "second")
