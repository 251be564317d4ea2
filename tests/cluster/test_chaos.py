"""A sale through HAProxy under a seeded schedule of faults, then the checker (tests/cluster/chaos.py).

`make test-chaos SEED=... MINUTES=...` runs it (as root: network
namespaces, Patroni, etcd, HAProxy). Every fault type is injected at least
once, whatever MINUTES says; then faults are drawn at random until MINUTES
have passed. The same SEED gives the same schedule (the hosts' timing,
and so what the faults strike, differs from run to run).
"""

import logging
import os
import random
import time
from unittest import skipUnless

from django.test import SimpleTestCase

from tests.cluster.chaos import (
    FAULT_TYPES,
    HEAL_TIMEOUT_SECONDS,
    Injection,
    Nemesis,
    Workload,
    check,
    fault_figures,
    figures_table,
    schedule,
)
from tests.cluster.sale import FIGURES
from tests.cluster.topology import Topology, wait_for

logger = logging.getLogger("tests.cluster.chaos")
CLIENTS = 8


@skipUnless(
    os.environ.get("CLUSTER_TESTS") and os.environ.get("CHAOS_MINUTES"),
    "make test-chaos SEED=... MINUTES=... runs it (as root: namespaces, Patroni, etcd, HAProxy)",
)
class ChaosTests(SimpleTestCase):
    def test_no_acknowledged_claim_is_lost_and_nothing_is_invented_under_random_faults(self):
        seed = int(os.environ.get("CHAOS_SEED") or 1)
        minutes = float(os.environ["CHAOS_MINUTES"])
        started = time.monotonic()
        with Topology(app_workers=2) as topology:
            topology.wait_until_healthy()
            nemesis = Nemesis(topology, random.Random(f"nemesis-{seed}"))
            injections = []
            with Workload(topology.address("lb"), CLIENTS, seed) as workload:
                wait_for(lambda: any(op.status == 201 for op in workload.history), 60, "the sale under way")
                for number, (fault_type, hold, settle) in enumerate(schedule(seed, minutes)):
                    if number >= len(FAULT_TYPES) and time.monotonic() - started > minutes * 60:
                        break
                    time.sleep(settle)
                    roles = {name: member["role"] for name, member in topology.cluster().items()}
                    injection = Injection(fault_type, roles, hold, injected=time.monotonic())
                    heal = nemesis.inject(fault_type)
                    time.sleep(hold)
                    heal()
                    injection.healed = time.monotonic()
                    try:
                        topology.wait_until_healthy(HEAL_TIMEOUT_SECONDS)
                    except TimeoutError as error:
                        self.fail(f"after fault {number} ({fault_type.name}, {hold} s, roles {roles}): {error}")
                    injection.whole = time.monotonic()
                    injections.append(injection)
                    logger.info(
                        "fault %d: %s for %.1f s (roles before: %s), whole again %.1f s after healing",
                        number, fault_type.name, hold, roles, injection.whole - injection.healed,
                    )  # fmt: skip
                workload.stop()
                workload.settle()
            database = read_sales(topology)

        verdict = check(workload.history, database)
        figures = fault_figures(injections, workload.history)
        FIGURES.append(
            f"chaos, seed {seed}, {minutes:g} min asked, {(time.monotonic() - started) / 60:.1f} min run:"
            f" {len(injections)} faults, {len(workload.history)} claim requests {dict(verdict.statuses)},"
            f" {verdict.told_201} told 201, {verdict.rows} rows over {len(database)} coupons,"
            f" {verdict.committed_unanswered} committed with the answer lost (409 on the retry),"
            f" {len(verdict.anomalies)} anomalies"
        )
        FIGURES.extend(figures_table(figures))
        self.assertEqual({fault_type.name for fault_type in FAULT_TYPES}, set(figures), "every fault type injected")
        self.assertEqual(verdict.anomalies, [], "\n".join(verdict.anomalies[:20]))
        self.assertGreater(verdict.told_201, 0)


def read_sales(topology):
    """{coupon: (amount, remaining, [users with a live claim])} for every coupon the workload made, from the primary."""
    with topology.connect_primary() as connection:
        coupons = {
            name: (pk, amount, remaining)
            for pk, name, amount, remaining in connection.execute(
                "SELECT id, name, amount, remaining_amount FROM coupons_coupon WHERE name LIKE 'chaos-%%'"
            )
        }
        users = {}
        for coupon_id, user_id in connection.execute(
            "SELECT coupon_id, user_id FROM coupons_claim WHERE coupon_id = ANY(%s) AND status IN ('held', 'redeemed')",
            [[pk for pk, _, _ in coupons.values()]],
        ):
            users.setdefault(coupon_id, []).append(user_id)
    return {name: (amount, remaining, users.get(pk, [])) for name, (pk, amount, remaining) in coupons.items()}
