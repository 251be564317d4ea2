"""Webhooks: subscriptions through the API and the admin, and delivery to a real receiver that fails
(tests/webhook_receiver.py) by the worker of `manage.py deliver_events` (coupons/webhook_delivery.py)."""

import contextlib
import json
import re
import time
import uuid
from pathlib import Path

from django.db import connection
from django.test import TestCase, TransactionTestCase, override_settings
from django.urls import reverse
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from coupons.exceptions import OutOfStock
from coupons.holds import expire_holds
from coupons.models import Event, WebhookDelivery, WebhookSubscription
from coupons.services import (
    claim_coupon,
    create_coupon,
    redeem_claim,
    release_claim,
    restock_coupon,
    undo_redemption,
)
from coupons.webhook_delivery import backoff, deliver_once, send
from coupons.webhooks import create_subscription, new_secret
from tests.helpers import JsonApiAssertions, free_port, service_log_lines
from tests.test_access import make_user, token_header
from tests.test_api_keys import api_key_header, new_key
from tests.test_redemptions import overdue
from tests.webhook_receiver import HANG_UP, SLOW_BODY, TIMEOUT, Receiver

WAIT_SECONDS = 60
Outcome = WebhookDelivery.Outcome
FAST_RETRIES = {"WEBHOOK_TIMEOUT": 1, "WEBHOOK_BACKOFF_MAX": 1, "WEBHOOK_ALLOW_PRIVATE": True}


class WebhookApiTests(JsonApiAssertions, TestCase):
    def setUp(self):
        self.key = api_key_header(new_key("webhooks"))

    def subscribe(self, url, **extra):
        return self.post_json("/api/webhooks", {"url": url, "event_types": ["claim.granted"]}, **extra)

    def test_a_key_with_the_webhooks_scope_subscribes_lists_and_deletes(self):
        created = self.subscribe("https://93.184.215.14/hooks", **self.key)

        self.assertEqual(created.status_code, 201, created.content)
        body = created.json()
        self.assertTrue(body["secret"].startswith("whsec_"))
        self.assertEqual(body["event_types"], ["claim.granted"])
        self.assertTrue(body["is_active"])
        listed = self.client.get("/api/webhooks", **self.key).json()
        self.assertEqual([item["id"] for item in listed], [body["id"]])
        self.assertNotIn("secret", listed[0])  # shown once
        self.assertEqual(WebhookSubscription.objects.get().created_by, f"API key {self.key_prefix()}")

        self.assertEqual(self.client.delete(f"/api/webhooks/{body['id']}", **self.key).status_code, 204)
        self.assertFalse(WebhookSubscription.objects.exists())
        self.assert_error(self.client.delete(f"/api/webhooks/{body['id']}", **self.key), 404, "not_found")

    def key_prefix(self):
        return self.key["HTTP_AUTHORIZATION"].split()[1].split(".")[0]

    def test_never_anonymous_whether_or_not_keys_are_required(self):
        for required in (False, True):
            with self.subTest(API_KEYS_REQUIRED=required), self.settings(API_KEYS_REQUIRED=required):
                self.assert_error(self.subscribe("https://93.184.215.14/"), 401, "unauthorized")
                self.assert_error(self.client.get("/api/webhooks"), 401, "unauthorized")
                other_scopes = api_key_header(new_key("read", "claim", "create", "release"))
                self.assert_error(self.subscribe("https://93.184.215.14/", **other_scopes), 403, "forbidden")
                staff = token_header(make_user(f"operator{required}", is_staff=True))
                self.assertEqual(self.subscribe("https://93.184.215.14/", **staff).status_code, 201)
        self.assertEqual(WebhookSubscription.objects.count(), 2)

    def test_urls_to_private_or_loopback_addresses_are_refused(self):
        for url in [
            "http://127.0.0.1:8000/hooks",
            "http://localhost/hooks",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data/",  # cloud metadata
            "http://100.64.0.1/",  # carrier-grade NAT
            "http://0.0.0.0/",
            "http://224.0.0.1/",
            "http://[fe80::1]/",
            "http://[fc00::1]/",
        ]:
            with self.subTest(url=url):
                self.assert_error(self.subscribe(url, **self.key), 400, "unsafe_webhook_url")
        for url in ["ftp://93.184.215.14/", "file:///etc/passwd", "https://user:pass@93.184.215.14/", "hooks"]:
            with self.subTest(url=url):
                self.assert_error(self.subscribe(url, **self.key), 400, "unsafe_webhook_url")
        self.assertFalse(WebhookSubscription.objects.exists())

    def test_private_urls_are_allowed_with_webhook_allow_private(self):
        with self.settings(WEBHOOK_ALLOW_PRIVATE=True):
            self.assertEqual(self.subscribe("http://127.0.0.1:9999/hooks", **self.key).status_code, 201)

    def test_bad_input(self):
        for body in [{}, {"url": 5}, {"url": "https://93.184.215.14/", "event_types": ["coupon.exploded"]}]:
            with self.subTest(body=body):
                self.assert_error(self.post_json("/api/webhooks", body, **self.key), 400, "invalid")
        self.assertFalse(WebhookSubscription.objects.exists())

    def test_subscribing_is_idempotent(self):
        first = self.subscribe("https://93.184.215.14/", **self.key, HTTP_IDEMPOTENCY_KEY="sub-1")
        again = self.subscribe("https://93.184.215.14/", **self.key, HTTP_IDEMPOTENCY_KEY="sub-1")

        self.assertEqual(again.content, first.content)  # the same subscription, the same secret
        self.assertEqual(again["Idempotent-Replayed"], "true")
        self.assertEqual(WebhookSubscription.objects.count(), 1)


class DeliveryTestCase(TransactionTestCase):
    """Events committed for real (the worker reads behind PostgreSQL's horizon), a receiver on a real socket."""

    def subscribe(self, receiver_port, **fields):
        receiver_url = f"http://127.0.0.1:{receiver_port}/hooks/coupons?source=test"
        with self.settings(WEBHOOK_ALLOW_PRIVATE=True):
            return create_subscription(url=receiver_url, event_types=[], created_by="test", **fields)

    def deliver_until(self, condition, what):
        deadline = time.monotonic() + WAIT_SECONDS
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            if not deliver_once(worker="test-worker"):
                time.sleep(0.05)

    def a_sale(self):
        """Two coupons' worth of every kind of event; their ids in commit order, per coupon."""
        create_coupon(name="A", amount=3)
        create_coupon(name="B", amount=10)
        for user in ["ann", "bob", "cat", "dan"]:
            with contextlib.suppress(OutOfStock):  # dan: sold out
                claim_coupon(user_id=user, coupon_name="A")
            claim_coupon(user_id=user, coupon_name="B")
        release_claim(coupon_name="A", user_id="bob", released_by="operator")
        restock_coupon(coupon_name="B", amount=20)
        # Redeemed, undone, redeemed again; and a hold that expires.
        create_coupon(name="C", amount=5, hold_seconds=600)
        ann, bob = (claim_coupon(user_id=user, coupon_name="C").code for user in ["ann", "bob"])
        redeem_claim(code=ann, order_id="order-1")
        undo_redemption(code=ann, undone_by="operator")
        redeem_claim(code=ann, order_id="order-2")
        overdue(bob)
        expire_holds()
        return {
            name: [
                str(uuid)
                for uuid in Event.objects.filter(coupon_name=name).order_by("sequence").values_list("uuid", flat=True)
            ]
            for name in ["A", "B", "C"]
        }


@override_settings(**FAST_RETRIES)
class DeliveryTests(DeliveryTestCase):
    def test_a_receiver_that_fails_every_way_then_recovers_gets_every_event_in_order_signed(self):
        port = free_port()
        subscription = self.subscribe(port)
        expected = self.a_sale()
        every_event = {event_id for ids in expected.values() for event_id in ids}
        receiver = Receiver(
            port, secret=subscription.secret, script=[500, TIMEOUT, SLOW_BODY, HANG_UP, 503], slow_seconds=1.5
        )

        # Nothing listens yet: connections refused, retried with backoff.
        self.deliver_until(
            lambda: WebhookDelivery.objects.filter(outcome=Outcome.CONNECTION_ERROR).count() >= 2, "refusals"
        )
        with receiver:
            self.deliver_until(lambda: {r.webhook_id for r in receiver.acknowledged()} >= every_event, "delivery")

        received = receiver.received
        self.assertTrue(all(r.signature_valid for r in received), "every request's signature verifies")
        # Duplicates only by Webhook-Id: every request with one id carries the same event, byte for byte.
        bodies = {}
        for r in received:
            self.assertEqual(bodies.setdefault(r.webhook_id, r.body), r.body)
        self.assertEqual(set(bodies), every_event, "nothing sent but the subscription's events")
        # Acknowledged in the log's order: each coupon's events in sequence order, none missing.
        first_acks = list(dict.fromkeys(r.webhook_id for r in receiver.acknowledged()))
        for name, ids in expected.items():
            self.assertEqual([i for i in first_acks if i in ids], ids, name)
        log_order = Event.objects.order_by("transaction_id", "position").values_list("uuid", flat=True)
        self.assertEqual(first_acks, [str(event_id) for event_id in log_order])
        # Every failure was an attempt, in the admin's records, then retried until delivered.
        outcomes = list(WebhookDelivery.objects.order_by("attempted_at", "id").values_list("outcome", flat=True))
        for outcome in [Outcome.CONNECTION_ERROR, Outcome.HTTP_ERROR, Outcome.TIMEOUT, Outcome.DELIVERED]:
            self.assertIn(outcome, outcomes)
        self.assertEqual(outcomes.count(Outcome.DELIVERED), len(every_event))
        self.assertEqual(outcomes[-1], Outcome.DELIVERED)
        subscription.refresh_from_db()
        self.assertTrue(subscription.is_active)
        self.assertEqual((subscription.failed_attempts, subscription.failing_since), (0, None))

    def test_a_coupons_events_are_sent_by_sequence_whatever_their_order_in_the_log(self):
        """Two transactions of one coupon can reach the log in the other order than they took its row lock in
        (PostgreSQL does not hand out transaction ids in lock order): the worker still sends by sequence."""
        port = free_port()
        subscription = self.subscribe(port)
        log_events(subscription, [1, 3, 4, 2, 5])  # the log's order
        with Receiver(port, secret=subscription.secret, script=[200, 200, 500]) as receiver:
            self.deliver_until(lambda: len(receiver.acknowledged()) == 5, "delivery")

        sent = [json.loads(r.body)["sequence"] for r in receiver.received]
        self.assertEqual(sent, [1, 2, 3, 3, 4, 5])  # 3 failed once, and was sent again before 4
        subscription.refresh_from_db()
        self.assertEqual(subscription.coupon_cursors.get().last_sequence, 5)
        self.assertEqual(subscription.cursor_position, Event.objects.get(sequence=5).position)

    def test_events_purged_from_the_log_are_not_waited_for(self):
        """Re-enabled after EVENT_RETENTION_DAYS, say: a coupon's events 2-4 are gone, 5 is sent after 1."""
        port = free_port()
        subscription = self.subscribe(port)
        log_events(subscription, [1, 5, 6])
        with Receiver(port, secret=subscription.secret) as receiver:
            self.deliver_until(lambda: len(receiver.acknowledged()) == 3, "delivery")
        self.assertEqual([json.loads(r.body)["sequence"] for r in receiver.received], [1, 5, 6])

    def test_only_the_subscribed_types_are_sent(self):
        port = free_port()
        subscription = self.subscribe(port)
        WebhookSubscription.objects.filter(pk=subscription.pk).update(event_types=["coupon.sold_out"])
        self.a_sale()
        with Receiver(port, secret=subscription.secret) as receiver:
            self.deliver_until(lambda: len(receiver.acknowledged()) >= 1, "the sold-out event")
            while deliver_once(worker="test-worker"):
                pass
        self.assertEqual(
            [r.headers["webhook-id"] for r in receiver.received], [str(Event.objects.get(type="coupon.sold_out").uuid)]
        )

    def test_redemptions_undos_and_expiries_reach_a_subscription_of_their_types(self):
        port = free_port()
        subscription = self.subscribe(port)
        types = ["redemption.redeemed", "redemption.undone", "claim.expired"]
        WebhookSubscription.objects.filter(pk=subscription.pk).update(event_types=types)
        self.a_sale()
        with Receiver(port, secret=subscription.secret) as receiver:
            self.deliver_until(lambda: len(receiver.acknowledged()) >= 4, "the redemption and expiry events")
            while deliver_once(worker="test-worker"):
                pass

        self.assertTrue(all(r.signature_valid for r in receiver.received))
        sent = [json.loads(r.body) for r in receiver.received]
        self.assertEqual(
            [(event["type"], event["sequence"], event["data"].get("order_id")) for event in sent],
            [
                ("redemption.redeemed", 4, "order-1"),
                ("redemption.undone", 5, "order-1"),
                ("redemption.redeemed", 6, "order-2"),
                ("claim.expired", 7, None),
            ],
        )
        self.assertEqual({event["coupon"] for event in sent}, {"C"})

    def test_a_subscription_failing_for_webhook_retry_for_is_disabled_and_says_so_in_the_admin(self):
        port = free_port()
        subscription = self.subscribe(port)
        self.a_sale()
        with self.settings(WEBHOOK_RETRY_FOR=2), Receiver(port, script=[500] * 1000) as receiver:
            self.deliver_until(lambda: not WebhookSubscription.objects.get().is_active, "the subscription disabled")
        subscription.refresh_from_db()
        self.assertIn("Deliveries failed for 2 s", subscription.disabled_reason)
        self.assertIn("The receiver answered 500", subscription.disabled_reason)
        self.assertGreaterEqual(len(receiver.received), 2)
        self.assertEqual(
            {r.webhook_id for r in receiver.received},
            {str(Event.objects.order_by("transaction_id", "position").first().uuid)},
            "stuck on the first event: nothing sent out of order",
        )

        admin = make_user("admin", is_staff=True, is_superuser=True)
        self.client.force_login(admin)
        page = self.client.get(reverse("admin:coupons_webhooksubscription_changelist")).content.decode()
        self.assertIn("Deliveries failed for 2 s", page)
        attempts = self.client.get(reverse("admin:coupons_webhookdelivery_changelist")).content.decode()
        self.assertIn("http_error", attempts)

        # Enabled again, it resumes where it stopped, and delivers everything.
        self.client.post(
            reverse("admin:coupons_webhooksubscription_changelist"),
            {"action": "enable_subscriptions", "_selected_action": [str(subscription.pk)]},
        )
        with Receiver(port, secret=subscription.secret) as receiver:
            self.deliver_until(lambda: len(receiver.acknowledged()) == Event.objects.count(), "delivery after enabling")

    def test_metrics_count_attempts_by_outcome_and_show_the_backlog(self):
        def scrape():
            text = self.client.get("/metrics").content.decode()
            return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}

        def counted(outcome):
            return REGISTRY.get_sample_value("webhook_deliveries_total", {"outcome": outcome}) or 0

        port = free_port()
        self.subscribe(port)
        self.a_sale()
        before = {outcome: counted(outcome) for outcome in Outcome.values}
        # Events wait (listed once behind the horizon: a transaction anywhere on the server may hold it back a while).
        deadline = time.monotonic() + WAIT_SECONDS
        while scrape()["webhook_oldest_undelivered_event_age_seconds"] < 0.1:
            self.assertLess(time.monotonic(), deadline, "the backlog's age never showed")
            time.sleep(0.05)
        with Receiver(port, script=[500]) as receiver:
            self.deliver_until(lambda: len(receiver.acknowledged()) == Event.objects.count(), "delivery")

        self.assertEqual(counted(Outcome.HTTP_ERROR) - before[Outcome.HTTP_ERROR], 1)
        self.assertEqual(counted(Outcome.DELIVERED) - before[Outcome.DELIVERED], Event.objects.count())
        self.assertEqual(scrape()["webhook_oldest_undelivered_event_age_seconds"], 0)
        self.assertEqual(scrape()["webhook_subscriptions_disabled"], 0)

    def test_410_gone_disables_at_once(self):
        port = free_port()
        self.subscribe(port)
        self.a_sale()
        with Receiver(port, script=[410]):
            self.deliver_until(lambda: not WebhookSubscription.objects.get().is_active, "disabled")
        self.assertEqual(WebhookSubscription.objects.get().disabled_reason, "The receiver answered 410 Gone.")
        self.assertEqual(WebhookDelivery.objects.count(), 1)

    def test_a_private_address_is_refused_at_delivery_too(self):
        port = free_port()
        self.subscribe(port)  # made while private addresses were allowed
        self.a_sale()
        with self.settings(WEBHOOK_ALLOW_PRIVATE=False), Receiver(port) as receiver:
            self.deliver_until(lambda: WebhookDelivery.objects.exists(), "an attempt")
        self.assertEqual(receiver.received, [])
        delivery = WebhookDelivery.objects.get()
        self.assertEqual(delivery.outcome, Outcome.FORBIDDEN_ADDRESS)
        self.assertIn("127.0.0.1, which is not a public address", delivery.error)

    def test_secrets_never_reach_the_logs(self):
        # Every line as the service writes it, down to DEBUG (the HTTP client's own, say).
        lines = self.enterContext(service_log_lines())

        key = api_key_header(new_key("webhooks"))
        port = free_port()
        created = self.client.post(
            "/api/webhooks",
            {"url": f"http://127.0.0.1:{port}/hooks"},
            content_type="application/json",
            **key,
        )
        secret = created.json()["secret"]
        self.a_sale()
        with Receiver(port, secret=secret, script=[500]) as receiver:
            self.deliver_until(lambda: len(receiver.acknowledged()) == Event.objects.count(), "delivery")
        signatures = [r.headers["webhook-signature"].split(",", 1)[1] for r in receiver.received]

        logged = lines.getvalue()
        self.assertIn("webhook_delivery", logged)  # the deliveries were logged...
        self.assertNotIn(secret, logged)  # ...without the secret...
        self.assertNotIn(secret.removeprefix("whsec_"), logged)
        for signature in signatures:
            self.assertNotIn(signature, logged)  # ...or a signature


def log_events(subscription, sequences):
    """Events of one coupon written to the log in this order, after the subscription's start."""
    transaction_id = subscription.start_transaction_id + 1 if connection.vendor == "postgresql" else 0
    for sequence in sequences:
        Event.objects.create(
            uuid=uuid.uuid4(),
            type="claim.granted",
            coupon_id=999,
            coupon_name="C",
            sequence=sequence,
            occurred_at=timezone.now(),
            data={"user_id": f"user_{sequence}"},
            transaction_id=transaction_id,
        )


class BackoffTests(TestCase):
    @override_settings(WEBHOOK_BACKOFF_MAX=3600)
    def test_exponential_with_jitter_and_a_ceiling(self):
        for failures, ceiling in [(1, 1), (2, 2), (5, 16), (12, 2048), (13, 3600), (40, 3600)]:
            with self.subTest(failures=failures):
                waits = {backoff(failures).total_seconds() for _ in range(50)}
                self.assertTrue(all(ceiling / 2 <= wait <= ceiling for wait in waits), waits)
                self.assertGreater(len(waits), 1)  # jittered


class SignatureRecipeTests(TestCase):
    """The ten lines of docs/webhooks.md that verify a signature by hand, run on a request the worker sent."""

    @override_settings(WEBHOOK_ALLOW_PRIVATE=True)
    def test_the_documented_verification_accepts_our_signature_and_refuses_forgeries(self):
        page = (Path(__file__).resolve().parent.parent / "docs" / "webhooks.md").read_text()
        recipe = re.search(r"```python\n(# verify.*?)```", page, re.S).group(1)
        namespace = {}
        exec(recipe, namespace)  # noqa: S102 - our own documentation's code
        verify = namespace["verify"]
        port = free_port()
        subscription = WebhookSubscription(url=f"http://127.0.0.1:{port}/hooks", secret=new_secret())
        event = Event(
            uuid=uuid.uuid4(),
            type="claim.granted",
            coupon_name="A",
            sequence=2,
            data={"user_id": "ann"},
            occurred_at=timezone.now(),
        )

        with Receiver(port) as receiver:
            self.assertEqual(send(subscription, event).outcome, Outcome.DELIVERED)
        [request] = receiver.received

        self.assertTrue(verify(subscription.secret, request.headers, request.body))
        self.assertFalse(verify(subscription.secret, request.headers, request.body.replace(b"ann", b"eve")))
        self.assertFalse(verify(new_secret(), request.headers, request.body))
        stale = {**request.headers, "webhook-timestamp": str(int(request.headers["webhook-timestamp"]) - 3600)}
        self.assertFalse(verify(subscription.secret, stale, request.body))
