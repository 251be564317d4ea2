"""A database that cannot take writes now is a 503 `unavailable`, never a 500, and never a claim that can be lost.

What a failover does to the primary the service writes to, one piece at a
time, on private clusters and the service as deployed:

- the database turns read-only (a primary Patroni demoted; here
  default_transaction_read_only): writes are refused with a JSON 503 and
  change nothing, reads go on, and writes resume when it is writable again;
- the service's URL reaches a hot standby (a demoted primary, or a failover
  proxy that has not caught up): the same;
- an app process frozen while it holds a coupon's row lock (a paused VM, a
  host cut off mid-transaction): PostgreSQL ends its transaction after
  DATABASE_IDLE_IN_TRANSACTION_TIMEOUT, and the other app processes' claims
  of that coupon go on instead of waiting for it;
- a COMMIT whose wait for the synchronous standby is cancelled (by
  pg_cancel_backend, say, while the standby is gone): PostgreSQL reports a
  success with a warning, the claim on this node only; the service answers
  503, not 201, and the retry tells the truth (409: the claim held).
"""

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from tests.faults.base import FaultTestCase, logger
from tests.faults.cluster import StandbyCluster
from tests.faults.service import INHERITED_VARIABLES, Service
from tests.helpers import ROOT

# What a 503 may take on a busy machine, beyond the limit that causes it.
SLACK_SECONDS = 3


class ReadOnlyDatabaseTests(FaultTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.service = cls.enterClassContext(Service(cls.cluster.url, WEB_CONCURRENCY="1", WEB_THREADS="4"))

    def set_read_only(self, read_only):
        self.cluster.reconfigure("default_transaction_read_only", "on" if read_only else None)

    def test_writes_to_a_read_only_database_are_503s_that_change_nothing(self):
        name = "READ ONLY"
        self.create_coupon(self.service, name, 10)
        self.assertEqual(self.service.claim("before", name).status, 201)
        self.set_read_only(True)
        self.addCleanup(self.set_read_only, False)

        claims = [self.service.claim(f"user_{i}", name) for i in range(8)]
        creation = self.service.request("POST", "/api/coupons", {"name": "NOT CREATED", "amount": 1})
        read = self.service.request("GET", "/api/coupons/READ%20ONLY")
        health = self.service.request("GET", "/health")

        for reply in [*claims, creation]:
            self.assert_unavailable(reply)
        self.assertEqual(read.status, 200, read)
        self.assertEqual(health.status, 200, health)
        self.assertEqual(self.claimers(name), ["before"])
        self.assertEqual(self.remaining(name), 9)
        self.assertNotIn("Internal Server Error", self.service.output())

        self.set_read_only(False)
        self.assertEqual(self.service.claim("after", name).status, 201)
        self.assertEqual(self.claimers(name), ["after", "before"])


class HotStandbyTests(FaultTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.standby = cls.enterClassContext(StandbyCluster(cls.cluster))
        cls.primary_service = cls.enterClassContext(Service(cls.cluster.url, WEB_CONCURRENCY="1"))
        cls.standby_service = cls.enterClassContext(Service(cls.standby.url, WEB_CONCURRENCY="1"))

    def test_a_standby_refuses_writes_with_503s_and_serves_reads(self):
        name = "ON THE STANDBY"
        self.create_coupon(self.primary_service, name, 10)
        self.assertEqual(self.primary_service.claim("on_the_primary", name).status, 201)
        deadline = time.monotonic() + 10
        while self.standby_service.request("GET", "/api/coupons/ON%20THE%20STANDBY").status != 200:
            self.assertLess(time.monotonic(), deadline, "the standby never caught up")
            time.sleep(0.1)

        claim = self.standby_service.claim("on_the_standby", name)
        repeat = self.standby_service.claim("on_the_primary", name)
        creation = self.standby_service.request("POST", "/api/coupons", {"name": "NOT CREATED", "amount": 1})
        read = self.standby_service.request("GET", "/api/coupons/ON%20THE%20STANDBY")

        self.assert_unavailable(claim)
        self.assert_unavailable(creation)
        self.assertEqual(repeat.status, 409, repeat)  # a refusal needs no write
        self.assertEqual(read.status, 200, read)
        self.assertEqual(read.body["claimed_by"], ["on_the_primary"])
        self.assertEqual(self.claimers(name), ["on_the_primary"])


# A stand-in for an app process: the service's settings, a coupon's row lock
# taken as a claim group takes it, then nothing (it is about to be frozen).
LOCK_HOLDER = """
import sys, time
from django.db import transaction
from coupons.models import Coupon
with transaction.atomic():
    Coupon.objects.select_for_update(no_key=True).get(name=sys.argv[-1])
    print("locked", flush=True)
    time.sleep(600)
"""


class FrozenAppProcessTests(FaultTestCase):
    IDLE_TIMEOUT = 1
    LOCK_TIMEOUT = 4

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.service = cls.enterClassContext(
            Service(cls.cluster.url, WEB_CONCURRENCY="1", DATABASE_LOCK_TIMEOUT=str(cls.LOCK_TIMEOUT))
        )

    def freeze_a_lock_holder(self, coupon_name, idle_timeout):
        """An app process that took the coupon's row lock, then SIGSTOPped; thawed and killed at cleanup."""
        environment = {
            **{k: v for k, v in self.service.environment.items() if k in INHERITED_VARIABLES},
            "DJANGO_SETTINGS_MODULE": "couponsite.settings",
            "DATABASE_URL": self.cluster.url,
            "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT": str(idle_timeout),
            "LOG_LEVEL": "WARNING",
        }
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys, django; django.setup(); exec(sys.argv[1])", LOCK_HOLDER, coupon_name],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(holder.wait)
        self.addCleanup(holder.kill)
        self.addCleanup(holder.send_signal, 18)  # SIGCONT: a stopped process takes its SIGKILL too
        self.assertEqual(holder.stdout.readline().strip(), "locked")
        holder.send_signal(19)  # SIGSTOP
        return holder

    def test_a_frozen_process_holding_a_row_lock_stops_claims_only_until_the_idle_timeout(self):
        name = "FROZEN HOLDER"
        self.create_coupon(self.service, name, 10)
        self.freeze_a_lock_holder(name, idle_timeout=self.IDLE_TIMEOUT)

        reply = self.service.claim("user_1", name)

        self.assertEqual(reply.status, 201, reply)
        self.assertLess(reply.seconds, self.IDLE_TIMEOUT + SLACK_SECONDS)
        self.assertEqual(self.claimers(name), ["user_1"])
        logger.info("claim behind a frozen lock holder answered in %.2f s", reply.seconds)

    def test_without_the_idle_timeout_the_frozen_holder_blocks_the_coupon(self):
        # The control: the same frozen process, its sessions unbounded.
        name = "FROZEN HOLDER FOREVER"
        self.create_coupon(self.service, name, 10)
        self.freeze_a_lock_holder(name, idle_timeout=0)

        reply = self.service.claim("user_1", name)

        self.assert_unavailable(reply)
        self.assertGreaterEqual(reply.seconds, self.LOCK_TIMEOUT * 0.9)
        self.assertEqual(self.claimers(name), [])


class UnconfirmedCommitTests(FaultTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.service = cls.enterClassContext(Service(cls.cluster.url, WEB_CONCURRENCY="1"))

    def wait_for_a_standby_that_never_comes(self, waiting):
        # Every COMMIT that writes now waits for a synchronous standby named "gone".
        self.cluster.reconfigure("synchronous_standby_names", "gone" if waiting else None)

    def cancel_the_wait_for_the_standby(self):
        """pg_cancel_backend() on the session whose COMMIT waits for the standby (as an operator might)."""
        deadline = time.monotonic() + 10
        with self.cluster.connect() as connection:
            while time.monotonic() < deadline:
                waiting = connection.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep' AND datname = 'coupons'"
                ).fetchall()
                if waiting:
                    self.assertEqual(len(waiting), 1)
                    connection.execute("SELECT pg_cancel_backend(%s)", [waiting[0][0]])
                    return
                time.sleep(0.05)
        self.fail("no COMMIT waited for the standby")

    def test_a_commit_whose_replication_wait_was_cancelled_is_a_503_and_the_retry_tells_the_truth(self):
        name = "UNCONFIRMED"
        self.create_coupon(self.service, name, 10)
        self.wait_for_a_standby_that_never_comes(True)
        self.addCleanup(self.wait_for_a_standby_that_never_comes, False)

        with ThreadPoolExecutor(max_workers=1) as pool:
            claim = pool.submit(self.service.claim, "user_1", name)
            self.cancel_the_wait_for_the_standby()
            reply = claim.result()

        # PostgreSQL said "committed locally, might not have been replicated": not a 201.
        self.assert_unavailable(reply)
        self.assertEqual(self.claimers(name), ["user_1"])
        self.wait_for_a_standby_that_never_comes(False)
        self.assertEqual(self.service.claim("user_1", name).status, 409)  # the claim held: the retry says so
        self.assertEqual(self.remaining(name), 9)
        self.assertEqual(self.service.claim("user_2", name).status, 201)
