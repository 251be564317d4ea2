"""The real server, as `make run` starts it (couponsite/serve.py: granian), against the test database.

What the service relies on its server for, each tried on the running
server: several worker processes whose metrics add up in /metrics and whose
lines are all JSON, through a graceful reload; a graceful stop that lets an
in-flight claim finish; a worker that dies replaced; workers recycled when
they grow; and no Python thread held by an idle keep-alive connection or a
client sending its request slowly.
"""

import json
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import psycopg
from django.db import connection
from django.test import TransactionTestCase
from prometheus_client.parser import text_string_to_metric_families

from coupons.models import Claim
from coupons.services import create_coupon
from tests.faults.service import Service
from tests.helpers import subprocess_database_url

WAIT_SECONDS = 30


def wait_for(condition, message, timeout=WAIT_SECONDS):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.1)


def json_lines(service):
    return [json.loads(line) for line in service.output().splitlines()]  # every line is JSON


def metric_samples(service):
    metrics = service.request("GET", "/metrics")
    if metrics.status != 200:
        raise AssertionError(metrics)
    return [sample for family in text_string_to_metric_families(metrics.body) for sample in family.samples]


class ServerTests(TransactionTestCase):
    def service(self, **environment):
        return Service(subprocess_database_url(), LOG_FORMAT="json", LOG_LEVEL="INFO", **environment)

    def test_metrics_and_logs_add_up_across_workers_and_a_graceful_reload(self):
        create_coupon(name="SERVER", amount=3)
        claims = [  # (body, status, outcome)
            *[({"user_id": f"user_{i}", "coupon_name": "SERVER"}, 201, "success") for i in range(3)],
            *[({"user_id": f"user_{i}", "coupon_name": "SERVER"}, 400, "out_of_stock") for i in range(3, 5)],
            ({"user_id": "user_0", "coupon_name": "SERVER"}, 409, "already_claimed"),
            ({"user_id": "user_0", "coupon_name": "NOPE"}, 404, "not_found"),
            ({"user_id": "", "coupon_name": "SERVER"}, 400, "invalid"),
        ]
        service = self.service(WEB_CONCURRENCY="2", DATABASE_CONN_MAX_AGE="0")
        with service:
            first_workers = service.workers()
            self.assertEqual(len(first_workers), 2)
            for body, status, _ in claims[:4]:
                self.assertEqual(service.request("POST", "/api/coupons/claim", body).status, status, body)
            # SIGHUP: every worker replaced by a new process, gracefully.
            os.kill(service.master_pid, signal.SIGHUP)
            wait_for(
                lambda: len(service.workers()) == 2 and not service.workers() & first_workers,
                "the workers were not replaced",
            )
            for body, status, _ in claims[4:]:
                self.assertEqual(service.request("POST", "/api/coupons/claim", body).status, status, body)
            samples = metric_samples(service)
        lines = json_lines(service)

        # The old workers' counts are still in the totals.
        outcomes = {s.labels["outcome"]: s.value for s in samples if s.name == "coupon_claims_total" and s.value}
        self.assertEqual(
            outcomes, {"success": 3, "out_of_stock": 2, "already_claimed": 1, "not_found": 1, "invalid": 1}
        )
        [claim_latency_count] = [
            s.value
            for s in samples
            if s.name == "django_http_requests_latency_seconds_by_view_method_count"
            and s.labels == {"view": "coupon-claim", "method": "POST"}
        ]
        self.assertEqual(claim_latency_count, len(claims))
        responses = {
            s.labels["status"]: s.value
            for s in samples
            if s.name == "django_http_responses_total_by_status_view_method_total"
            and s.labels["view"] == "coupon-claim"
        }
        self.assertEqual(responses, {"201": 3, "400": 3, "409": 1, "404": 1})

        # The server's own lines are JSON too: 2 workers spawned, then 2 more on the reload.
        spawned = [
            line for line in lines if line["logger"] == "_granian" and line["event"].startswith("Spawning worker")
        ]
        self.assertEqual(len(spawned), 4)
        claim_lines = [line for line in lines if "claim" in line]
        self.assertEqual(
            [(line["event"], line["claim"]) for line in claim_lines],
            [
                ("request_finished", {"user_id": body["user_id"], "coupon": body["coupon_name"], "outcome": outcome})
                for body, _, outcome in claims
            ],
        )
        self.assertEqual(len({line["request_id"] for line in claim_lines}), len(claims))

        # The metrics directory the server made for itself is gone with it.
        [announced] = [line["event"] for line in lines if line["event"].startswith("Prometheus multiprocess directory")]
        self.assertFalse(Path(re.search(r": (.+)$", announced).group(1)).exists())

    def test_a_stop_lets_the_claims_in_flight_finish(self):
        if connection.vendor != "postgresql":
            self.skipTest("holds a row lock from outside the server, and watches the claim wait for it: PostgreSQL")
        coupon = create_coupon(name="STOP", amount=5)
        replies = []
        with self.service(WEB_CONCURRENCY="1") as service:
            # Hold the coupon's row lock: the claim waits for it inside its transaction.
            url = subprocess_database_url()
            with psycopg.connect(url) as holder, psycopg.connect(url, autocommit=True) as watcher:
                holder.execute("SELECT 1 FROM coupons_coupon WHERE id = %s FOR UPDATE", [coupon.pk])
                claimer = threading.Thread(target=lambda: replies.append(service.claim("alice", "STOP")))
                claimer.start()
                wait_for(lambda: self.waiting_for_a_lock(watcher), "the claim never reached the row lock")
                os.kill(service.master_pid, signal.SIGTERM)
                time.sleep(1)
                self.assertIsNone(service.process.poll(), "the server stopped with a claim in flight")
            # The lock is released: the claim commits, is answered, and only then does the server exit.
            claimer.join(WAIT_SECONDS)
            self.assertEqual(service.process.wait(WAIT_SECONDS), 0)

        self.assertEqual([reply.status for reply in replies], [201])
        self.assertTrue(Claim.objects.filter(coupon=coupon, user_id="alice").exists())

    @staticmethod
    def waiting_for_a_lock(watcher):
        query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        return watcher.execute(query).fetchone()[0] > 0

    def test_a_worker_that_dies_is_replaced(self):
        with self.service(WEB_CONCURRENCY="2") as service:
            workers = service.workers()
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: len(service.workers()) == 2 and victim not in service.workers(), "no replacement")
            for _ in range(10):
                self.assertEqual(service.request("GET", "/health").status, 200)

    def test_a_worker_that_grows_past_its_memory_limit_is_replaced(self):
        # 1 MiB: every worker is over it, so each is replaced at the next sample (couponsite/serve.py).
        with self.service(WEB_CONCURRENCY="1", WEB_WORKER_MAX_RSS="1") as service:
            [worker] = service.workers()
            wait_for(lambda: service.workers() - {worker}, "the worker was not recycled", timeout=45)
            self.assertEqual(service.request("GET", "/health").status, 200)
        self.assertTrue(any("RSS over threshold" in line["event"] for line in json_lines(service)), service.output())

    def test_idle_and_slow_connections_hold_no_thread(self):
        # Two threads; eight idle keep-alive connections and eight clients that never finish their headers.
        with self.service(WEB_CONCURRENCY="1", WEB_THREADS="2") as service:
            held = []
            try:
                for i in range(16):
                    sock = socket.create_connection((service.host, service.port), timeout=10)
                    held.append(sock)
                    if i % 2:
                        sock.sendall(b"POST /api/coupons/claim HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 50\r\n")
                    else:
                        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                        self.assertIn(b" 200 OK", sock.recv(4096))
                reply = service.request("GET", "/health", timeout=10)
            finally:
                for sock in held:
                    sock.close()
        self.assertEqual(reply.status, 200)
        self.assertLess(reply.seconds, 1)
