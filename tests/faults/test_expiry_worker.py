"""The database killed while shoppers redeem and two expiry workers run (two app hosts' worth), then back.

Every redemption acknowledged (a 201, or a retry's 409 naming the caller's
own order) is there afterwards; no 410 belongs to a redeemed claim; every
claim ends redeemed or expired, each expired one having returned its unit
exactly once (remaining_amount = amount - redeemed); and both workers, the
same processes, carry on after the outage. The single-host rehearsal of
the cluster harness's failover test (docs/guarantees.md, "Codes, redemption and holds").
"""

import os
import random
import subprocess
import sys
import tempfile
import threading
import time

from tests.faults.base import FaultTestCase, logger
from tests.faults.service import INHERITED_VARIABLES, Service
from tests.helpers import ROOT

CLAIMS = 120
HOLD_SECONDS = 2
OUTAGE_SECONDS = 1.0
RETRY_SECONDS = 0.2
GIVE_UP_SECONDS = 60


class ExpiryWorker:
    """`python manage.py expire_holds`, as the Procfile runs it, on the private cluster."""

    def __init__(self, database_url):
        self.log = tempfile.TemporaryFile(mode="w+")
        environment = {name: value for name, value in os.environ.items() if name in INHERITED_VARIABLES}
        environment.update(
            DJANGO_SETTINGS_MODULE="couponsite.settings", DATABASE_URL=database_url, LOG_LEVEL="INFO", DEBUG="0"
        )
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "expire_holds", "--max-sleep", "0.2"],
            cwd=ROOT,
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.seek(0)
        return self.log.read()


class ExpiryThroughAnOutageTests(FaultTestCase):
    # The server's 2 x 16 threads, two expiry workers, the test's own reads.
    cluster_settings = {"max_connections": 60}

    def test_redemptions_and_expiries_through_a_killed_database(self):
        with Service(self.cluster.url, WEB_CONCURRENCY="2") as service:
            workers = [ExpiryWorker(self.cluster.url) for _ in range(2)]
            try:
                answers = self.sale(service)
                self.wait_until_every_hold_has_ended()
                alive = [worker.process.poll() is None for worker in workers]
            finally:
                outputs = [worker.stop() for worker in workers]
        self.assertEqual(alive, [True, True], outputs)
        self.assertTrue(any("expire_holds_database_unavailable" in output for output in outputs), outputs)
        self.assert_exactly_once(answers)

    def sale(self, service):
        coupon = {"name": "HOLDS", "amount": CLAIMS, "hold_seconds": HOLD_SECONDS}
        reply = service.request("POST", "/api/coupons", coupon)
        self.assertEqual(reply.status, 201, reply)
        codes = {}
        for i in range(CLAIMS):
            reply = service.claim(f"user_{i}", "HOLDS")
            self.assertEqual(reply.status, 201, reply)
            codes[f"user_{i}"] = reply.body["code"]
        claimed_at = time.monotonic()
        rng = random.Random(7)  # noqa: S311 - a fixed plan of who redeems when
        # Two thirds redeem, spread over the hold and past it: some before the deadline, some after.
        plan = {user: rng.uniform(0.2, HOLD_SECONDS + 1.0) for user in codes if rng.random() < 2 / 3}
        answers = {}

        def redeem(user):
            time.sleep(max(0.0, claimed_at + plan[user] - time.monotonic()))
            give_up = time.monotonic() + GIVE_UP_SECONDS
            while time.monotonic() < give_up:
                reply = service.request("POST", "/api/redemptions", {"code": codes[user], "order_id": user}, timeout=15)
                if reply.status in (201, 409, 410):
                    answers[user] = reply
                    return
                self.assertIn(reply.status, (503, None), reply)  # the database away: retry
                time.sleep(RETRY_SECONDS)
            answers[user] = None

        threads = [threading.Thread(target=redeem, args=(user,)) for user in plan]
        for thread in threads:
            thread.start()
        time.sleep(max(0.0, claimed_at + 1.2 - time.monotonic()))  # amid the redemptions, before most deadlines
        self.cluster.kill()
        logger.info("database killed %.1f s after the claims", time.monotonic() - claimed_at)
        time.sleep(OUTAGE_SECONDS)
        self.cluster.start()
        for thread in threads:
            thread.join()
        self.codes = codes
        return answers

    def wait_until_every_hold_has_ended(self):
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while time.monotonic() < deadline:
            with self.cluster.connect() as connection:
                (held,) = connection.execute("SELECT count(*) FROM coupons_claim WHERE status = 'held'").fetchone()
            if held == 0:
                return
            time.sleep(0.2)
        self.fail(f"{held} holds past their deadline were never expired")

    def assert_exactly_once(self, answers):
        with self.cluster.connect() as connection:
            rows = {
                user: (status, order_id, redeemed_at, expires_at, returned_at)
                for user, status, order_id, redeemed_at, expires_at, returned_at in connection.execute(
                    "SELECT user_id, status, order_id, redeemed_at, expires_at, returned_at FROM coupons_claim"
                )
            }
            amount, remaining = connection.execute("SELECT amount, remaining_amount FROM coupons_coupon").fetchone()
        self.assertEqual(len(rows), CLAIMS)
        self.assertNotIn(None, answers.values(), "a redemption never got a definitive answer")
        told = {"redeemed": 0, "expired": 0}
        for user, reply in answers.items():
            status, order_id = rows[user][:2]
            acknowledged = reply.status == 201 or (reply.status == 409 and reply.body["order_id"] == user)
            if acknowledged:
                told["redeemed"] += 1
                self.assertEqual((status, order_id), ("redeemed", user), f"{user}'s acknowledged redemption")
            else:
                told["expired"] += 1
                self.assertEqual((reply.status, reply.body["code"], status), (410, "claim_expired", "expired"), user)
        redeemed = [user for user, row in rows.items() if row[0] == "redeemed"]
        self.assertLessEqual(set(redeemed), set(answers), "a redemption nobody asked for")
        self.assertEqual({row[0] for row in rows.values()} - {"redeemed", "expired"}, set())
        for status, _, redeemed_at, expires_at, returned_at in rows.values():
            if status == "redeemed":
                self.assertLess(redeemed_at, expires_at)
            else:
                self.assertGreaterEqual(returned_at, expires_at)
        # Each expired claim gave its unit back once: the stock is the amount less the redeemed.
        self.assertEqual(remaining, amount - len(redeemed))
        logger.info("through the outage: %s, %d claims never redeemed expired", told, CLAIMS - len(answers))
        self.assertTrue(told["redeemed"] and told["expired"], told)
