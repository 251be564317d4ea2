"""A flash sale through the served app (granian) with two `manage.py deliver_events` workers and two receivers.

Every claim event and the one sold-out reach each receiver, signed, in each
coupon's order; the delay from an event's commit to its receiver is logged
(run with `-o log_cli=true --log-cli-level=INFO`): the delivery latency
under a flash sale.
"""

import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from django.test import TransactionTestCase, override_settings

from coupons.api_keys import create_api_key
from coupons.models import Event
from coupons.services import claim_coupon, create_coupon
from coupons.webhooks import create_subscription
from tests.faults.service import Service
from tests.helpers import ROOT, free_port, subprocess_database_url
from tests.webhook_receiver import Receiver

logger = logging.getLogger(__name__)

STOCK = 1000
CLAIMERS = 1100
CLIENTS = 32
WAIT_SECONDS = 120


class DeliveryWorkers:
    """`count` processes of `python manage.py deliver_events`, each in a process group of its own."""

    def __init__(self, count, **environment):
        self.environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "couponsite.settings", **environment}
        self.environment.pop("SECRET_KEY", None)
        self.count = count
        self.processes = []

    def __enter__(self):
        for _ in range(self.count):
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "manage.py", "deliver_events"],
                    cwd=ROOT,
                    env=self.environment,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        return self

    def kill(self):
        """SIGKILL every worker at once, mid-delivery: no cleanup, their leases left behind."""
        for process in self.processes:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self.processes = []

    def __exit__(self, *exc_info):
        for process in self.processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # SIGTERM lets a worker finish its delivery and exit 0.
        self.exit_codes = [process.returncode for process in self.processes]


class ServedFlashSaleTests(TransactionTestCase):
    def test_every_claim_event_reaches_every_receiver_in_order_signed(self):
        database_url = subprocess_database_url()
        _, key = create_api_key(name="shop", scopes={"webhooks"})
        receivers = [Receiver(free_port()) for _ in range(2)]
        settings = {"WEBHOOK_ALLOW_PRIVATE": "1"}
        with Service(database_url, WEB_CONCURRENCY="2", **settings) as service:
            for receiver in receivers:
                reply = service.request(
                    "POST", "/api/webhooks", {"url": receiver.url}, headers={"Authorization": f"Api-Key {key}"}
                )
                self.assertEqual(reply.status, 201, reply)
                receiver.secret = reply.body["secret"]
                receiver.start()
                self.addCleanup(receiver.stop)
            self.assertEqual(service.request("POST", "/api/coupons", {"name": "SALE", "amount": STOCK}).status, 201)

            with DeliveryWorkers(2, DATABASE_URL=database_url, **settings) as workers:
                sale_started = time.time()
                with ThreadPoolExecutor(CLIENTS) as pool:
                    statuses = list(pool.map(lambda n: service.claim(f"user_{n}", "SALE").status, range(CLAIMERS)))
                sale_ended = time.time()
                expected = Event.objects.filter(coupon_name="SALE").count()
                deadline = time.monotonic() + WAIT_SECONDS
                while any(len(receiver.acknowledged()) < expected for receiver in receivers):
                    self.assertLess(time.monotonic(), deadline, [len(r.acknowledged()) for r in receivers])
                    time.sleep(0.1)
        self.assertEqual(workers.exit_codes, [0, 0])

        self.assertEqual((statuses.count(201), statuses.count(400)), (STOCK, CLAIMERS - STOCK))
        self.assertEqual(expected, STOCK + 2)  # created, 1,000 claims, sold out
        latencies = []
        for receiver in receivers:
            acknowledged = receiver.acknowledged()
            self.assertTrue(all(r.signature_valid for r in receiver.received))
            events = [json.loads(r.body) for r in acknowledged]
            self.assertEqual([event["sequence"] for event in events], list(range(1, STOCK + 3)))
            types = [event["type"] for event in events]
            self.assertEqual((types.count("claim.granted"), types.count("coupon.sold_out")), (STOCK, 1))
            latencies += [
                r.at - datetime.fromisoformat(event["occurred_at"]).timestamp()
                for r, event in zip(acknowledged, events, strict=True)
                if event["type"] == "claim.granted"
            ]
        quantiles = statistics.quantiles(latencies, n=100)
        last_delivered = max(r.at for receiver in receivers for r in receiver.acknowledged())
        logger.info(
            "webhook delivery under a flash sale of %d claims (%d clients, 2 server workers, 2 delivery workers,"
            " 2 subscriptions): from an event's commit to its receiver p50 %.0f ms, p99 %.0f ms, max %.0f ms;"
            " the sale took %.1f s, the last event reached its receiver %.1f s after the last claim was answered",
            STOCK,
            CLIENTS,
            quantiles[49] * 1000,
            quantiles[98] * 1000,
            max(latencies) * 1000,
            sale_ended - sale_started,
            last_delivered - sale_ended,
        )


class WorkerKilledTests(TransactionTestCase):
    def test_a_worker_killed_mid_delivery_is_taken_over_and_nothing_is_lost(self):
        database_url = subprocess_database_url()
        receiver = Receiver(free_port())
        with override_settings(WEBHOOK_ALLOW_PRIVATE=True):
            subscription = create_subscription(url=receiver.url, event_types=[], created_by="test")
        receiver.secret = subscription.secret
        create_coupon(name="SALE", amount=300)
        for user in range(300):
            claim_coupon(user_id=f"user_{user}", coupon_name="SALE")
        expected = [str(u) for u in Event.objects.order_by("sequence").values_list("uuid", flat=True)]
        # A short lease (3 x WEBHOOK_TIMEOUT + 10 s), so that the take-over comes soon.
        settings = {"WEBHOOK_ALLOW_PRIVATE": "1", "WEBHOOK_TIMEOUT": "1", "DATABASE_URL": database_url}

        with receiver:
            with DeliveryWorkers(1, **settings) as first:
                deadline = time.monotonic() + WAIT_SECONDS
                while len(receiver.acknowledged()) < 50:
                    self.assertLess(time.monotonic(), deadline)
                    time.sleep(0.01)
                first.kill()
            killed_at, acknowledged_then = time.time(), len(receiver.acknowledged())
            self.assertLess(acknowledged_then, len(expected), "killed mid-delivery")
            with DeliveryWorkers(1, **settings):
                deadline = time.monotonic() + WAIT_SECONDS
                while {r.webhook_id for r in receiver.acknowledged()} < set(expected):
                    self.assertLess(time.monotonic(), deadline)
                    time.sleep(0.1)
        taken_over_after = min(r.at for r in receiver.received if r.at > killed_at) - killed_at

        first_acks = list(dict.fromkeys(r.webhook_id for r in receiver.acknowledged()))
        self.assertEqual(first_acks, expected)  # in sequence order, none missing
        bodies = {}
        for r in receiver.received:
            self.assertTrue(r.signature_valid)
            self.assertEqual(bodies.setdefault(r.webhook_id, r.body), r.body)  # repeats only of the same event
        logger.info(
            "deliver_events SIGKILLed after %d of %d events: taken over %.1f s later (lease %d s), %d sent twice",
            acknowledged_then,
            len(expected),
            taken_over_after,
            3 * 1 + 10,
            len(receiver.received) - len(bodies),
        )
