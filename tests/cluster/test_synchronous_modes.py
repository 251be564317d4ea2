"""What each synchronous mode loses when the standby is lost, then the primary's disk: why deploy/ runs it not strict.

Two database hosts, a sale through HAProxy, and the same double fault
under each setting of Patroni's `synchronous_mode_strict`:

1. the standby's host dies (and stays down);
2. the sale goes on for a while, or does not;
3. the primary's host dies and its data directory is gone (a lost disk);
4. the old standby's host comes back.

Under both, Patroni then promotes nobody: once the standby was gone, the
primary took its promotion privilege away (the /sync key), so no primary,
no writes, until the disk comes back or an operator forces the standby to
lead. What differs is what forcing it would lose. Not strict (what
deploy/patroni.yml ships): the primary kept selling alone, and the claims
it answered 201 meanwhile exist only on the lost disk. Strict: with the
standby gone no claim was acknowledged at all (every COMMIT waited for a
standby that did not come: the sale stopped), and the standby holds every
claim answered 201. The figures of both go to the run's output;
docs/guarantees.md promises what they show.
"""

import os
import shutil
import time
from unittest import skipUnless

from django.test import SimpleTestCase

from tests.cluster.sale import FIGURES, Sale
from tests.cluster.topology import HTTP_PORT, Topology, wait_for
from tests.faults.service import request

SALE_CLIENTS = 8
ALONE_SECONDS = 8
# Patroni's ttl (20 s), a loop and a promotion: time enough for it to promote the standby if it ever would.
PROMOTION_WAIT_SECONDS = 35


@skipUnless(os.environ.get("CLUSTER_TESTS"), "make test-cluster runs these (as root: namespaces, Patroni, HAProxy)")
class SynchronousModeTests(SimpleTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.topology = cls.enterClassContext(Topology(app_workers=2))
        cls.lb = cls.topology.address("lb")

    def lose_the_standby_then_the_primarys_disk(self, name):
        """The double fault; returns (users told 201, of them told after the standby died, the old standby's name)."""
        topology = self.topology
        topology.wait_until_healthy()
        primary = topology.primary()
        standby = next(host for host in topology.cluster() if host != primary)
        created = request(self.lb, HTTP_PORT, "POST", "/api/coupons", {"name": name, "amount": 10**6})
        self.assertEqual(created.status, 201, created)
        with Sale(self.lb, HTTP_PORT, name, SALE_CLIENTS) as sale:
            wait_for(lambda: sale.count(201) >= 100, 60, "the sale under way")
            topology.kill_host(standby)
            standby_died = time.monotonic()
            time.sleep(ALONE_SECONDS)
            topology.kill_host(primary)
            disk_lost = time.monotonic()
        answers = sale.snapshot()
        # The disk is lost: its data directory set aside (restored at the end, for the next test).
        data = topology.directory / primary / "data"
        shutil.move(data, data.with_name("data.lost"))
        self.addCleanup(self.restore_the_primarys_disk, primary, standby)

        topology.restart_host(standby)
        told_201 = {a.user_id for a in answers if a.status == 201}
        told_after = {a.user_id for a in answers if a.status == 201 and a.answered > standby_died}
        # Answered after the standby died but sent before: some of those committed with it still there.
        sent_after = {a.user_id for a in answers if a.status == 201 and a.sent > standby_died + 1}
        return told_201, told_after, sent_after, standby, disk_lost

    def restore_the_primarys_disk(self, primary, standby):
        topology = self.topology
        topology.kill_host(primary)  # whatever runs there, the disk comes back before it starts again
        data = topology.directory / primary / "data"
        if data.exists():
            shutil.rmtree(data)
        shutil.move(data.with_name("data.lost"), data)
        topology.restart_host(primary)
        topology.patch_dynamic_config({"synchronous_mode_strict": False})
        topology.wait_until_healthy()

    def rows_on(self, host, coupon_name):
        with topology_connection(self.topology, host) as connection:
            return {
                user
                for (user,) in connection.execute(
                    "SELECT u.user_id FROM coupons_claim u JOIN coupons_coupon c ON c.id = u.coupon_id"
                    " WHERE c.name = %s",
                    [coupon_name],
                )
            }

    def after_the_double_fault(self, name):
        """The double fault; then (users told 201, told 201 after the standby died, sent 1 s after it died, lost)."""
        told_201, told_after, sent_after, standby, _ = self.lose_the_standby_then_the_primarys_disk(name)
        time.sleep(PROMOTION_WAIT_SECONDS)
        self.assertIsNone(self.topology.primary(), "Patroni promotes a standby that lost its privilege")
        surviving = wait_for(lambda: self.rows_on(standby, name), 60, "the standby's copy readable")
        return told_201, told_after, sent_after, told_201 - surviving

    def test_not_strict_sells_alone_and_those_claims_live_only_on_the_primary(self):
        told_201, told_after, sent_after, lost = self.after_the_double_fault("modes-not-strict")

        self.assertTrue(sent_after, "the primary went on selling alone")
        self.assertLessEqual(sent_after, lost, "every claim sent once the standby was gone is on the lost disk only")
        self.assertLessEqual(lost, told_after, "nothing told 201 before the standby died is missing")
        FIGURES.append(
            f"not strict: standby killed mid-sale, the primary sold alone for {ALONE_SECONDS} s"
            f" ({len(told_after)} claims answered 201 after the standby died); the primary's disk then lost: no"
            f" primary {PROMOTION_WAIT_SECONDS} s later, and the standby lacks {len(lost)} of the"
            f" {len(told_201)} claims told 201: lost if an operator forces it to lead"
        )

    def test_strict_acknowledges_nothing_alone_and_loses_nothing(self):
        self.topology.patch_dynamic_config({"synchronous_mode_strict": True})
        told_201, told_after, sent_after, lost = self.after_the_double_fault("modes-strict")

        self.assertEqual(sent_after, set(), "with the standby gone, nothing is acknowledged")
        self.assertEqual(lost, set(), "the standby holds every claim told 201")
        FIGURES.append(
            f"strict: standby killed mid-sale: no claim sent after it died answered 201 for {ALONE_SECONDS} s (the"
            f" sale stopped; {len(told_after)} answered 201 just after were committed before); the primary's disk"
            f" then lost: no primary {PROMOTION_WAIT_SECONDS} s later, and the standby holds all {len(told_201)}"
            f" claims told 201: forcing it to lead loses nothing"
        )


def topology_connection(topology, host):
    import psycopg

    return psycopg.connect(
        host=topology.address(host), port=5432, user="postgres", password=topology.password, dbname="coupons",
        autocommit=True, connect_timeout=5,
    )  # fmt: skip
