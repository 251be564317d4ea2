"""The stress scenarios that define "correct", written once for every way of claiming.

Real threads and real connections: each scenario fires its claims from a
thread pool released by a barrier; every thread opens its own database
connection before the start line and closes it at the end.
"""

import fcntl
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from django.db import connection

from coupons.models import Claim, Coupon
from coupons.services import create_coupon

# Each scenario is replayed this many times per run, on fresh coupons.
REPETITIONS = 10
BARRIER_TIMEOUT_SECONDS = 60

# A 50-thread scenario holds ~50 database connections. PostgreSQL allows
# 100, so two scenarios running at once (pytest -n, manage.py test
# --parallel) could exhaust it: one stress class at a time, machine-wide.
_LOCK_PATH = Path(tempfile.gettempdir()) / "couponsite-stress-tests.lock"


def run_simultaneously(calls, *, connect=True):
    """Run each zero-argument callable on its own thread, all released at once.

    With `connect`, each thread connects to the database before the start
    line, so that the race is the claim itself and not connection setup.
    Every thread closes its connection when done. Returns the results in
    order; an exception in any thread fails the caller.
    """
    barrier = threading.Barrier(len(calls))

    def run(call):
        try:
            if connect:
                connection.ensure_connection()
            barrier.wait(timeout=BARRIER_TIMEOUT_SECONDS)
            return call()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


class StressScenarios:
    """Mixed into a TransactionTestCase (real commits, no wrapping test
    transaction); one stress class runs at a time.

    Subclasses say how a crowd claims: `claim_all` fires (user_id,
    coupon_name) claims at once and returns each caller's outcome
    ("claimed", "already_claimed" or "out_of_stock"); `read_detail` returns
    the coupon as GET /api/coupons/{name} shows it.
    """

    @classmethod
    def setUpClass(cls):
        cls._lock_file = open(_LOCK_PATH, "w")  # noqa: SIM115 - held until tearDownClass
        fcntl.flock(cls._lock_file, fcntl.LOCK_EX)
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            fcntl.flock(cls._lock_file, fcntl.LOCK_UN)
            cls._lock_file.close()

    def claim_all(self, requests):
        raise NotImplementedError

    def read_detail(self, name):
        raise NotImplementedError

    def assert_sale(self, name, *, requests, expected_counts):
        """Fire the claims; callers' outcomes, the rows and the detail must all agree."""
        outcomes = self.claim_all(requests)

        counts = {outcome: outcomes.count(outcome) for outcome in set(outcomes)}
        self.assertEqual(counts, expected_counts)
        winners = sorted(user for (user, _), outcome in zip(requests, outcomes, strict=True) if outcome == "claimed")
        coupon = Coupon.objects.get(name=name)
        rows = sorted(Claim.objects.filter(coupon=coupon).values_list("user_id", flat=True))
        self.assertEqual(rows, winners, "every success has its row and every row had a success")
        self.assertEqual(coupon.remaining_amount, coupon.amount - len(rows))
        detail = self.read_detail(name)
        self.assertEqual(detail["remaining_amount"], coupon.remaining_amount)
        self.assertEqual(sorted(detail["claimed_by"]), winners)
        return detail

    def test_flash_sale_fifty_users_race_for_five(self):
        for round_number in range(REPETITIONS):
            with self.subTest(round=round_number):
                name = f"FLASH SALE/{round_number}"
                create_coupon(name=name, amount=5)
                users = [f"user_{round_number}_{i}" for i in range(50)]

                detail = self.assert_sale(
                    name,
                    requests=[(user, name) for user in users],
                    expected_counts={"claimed": 5, "out_of_stock": 45},
                )

                self.assertEqual(detail["remaining_amount"], 0)
                self.assertEqual(len(detail["claimed_by"]), 5)

    def test_double_dip_one_user_claims_ten_times_at_once(self):
        for round_number in range(REPETITIONS):
            with self.subTest(round=round_number):
                name = f"DOUBLE DIP {round_number}"
                create_coupon(name=name, amount=100)
                user = f"dipper_{round_number}"

                detail = self.assert_sale(
                    name,
                    requests=[(user, name)] * 10,
                    expected_counts={"claimed": 1, "already_claimed": 9},
                )

                self.assertEqual((detail["remaining_amount"], detail["claimed_by"]), (99, [user]))
