"""Shared machinery of the stress tests: real threads, real connections, one start line."""

import fcntl
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from django.db import connection
from django.test import TransactionTestCase

from coupons.models import Claim, Coupon
from coupons.selectors import get_coupon_detail

# Each scenario is replayed this many times per run, on fresh coupons.
REPETITIONS = 10
BARRIER_TIMEOUT_SECONDS = 60

# A 50-thread scenario holds ~50 database connections. PostgreSQL allows
# 100, so two scenarios running at once (pytest -n, manage.py test
# --parallel) would exhaust it: one scenario at a time, machine-wide.
_LOCK_PATH = Path(tempfile.gettempdir()) / "couponsite-stress-tests.lock"


def run_simultaneously(calls, *, connect=True):
    """Run each zero-argument callable on its own thread, all released at once.

    Each thread opens its own database connection before the start line (so
    the race is the claim itself, not connection setup) and closes it when
    done. Returns the callables' results in order; any exception fails the run.
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


class StressTestCase(TransactionTestCase):
    """Real commits (no wrapping test transaction), one stress class at a time."""

    @classmethod
    def setUpClass(cls):
        cls._lock_file = open(_LOCK_PATH, "w")  # noqa: SIM115 - held for the whole class
        fcntl.flock(cls._lock_file, fcntl.LOCK_EX)
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            fcntl.flock(cls._lock_file, fcntl.LOCK_UN)
            cls._lock_file.close()

    def assert_sale_outcome(self, coupon_name, *, outcomes, expected_counts, expected_winners=None):
        """The callers' outcomes and the database agree, and match the expected counts."""
        counts = {outcome: outcomes.count(outcome) for outcome in set(outcomes)}
        self.assertEqual(counts, expected_counts)
        coupon = Coupon.objects.get(name=coupon_name)
        claims = list(Claim.objects.filter(coupon=coupon).values_list("user_id", flat=True))
        self.assertEqual(len(claims), counts.get("claimed", 0))
        self.assertEqual(len(set(claims)), len(claims), "a user holds the coupon twice")
        self.assertEqual(coupon.remaining_amount, coupon.amount - len(claims))
        detail = get_coupon_detail(name=coupon_name)
        self.assertEqual(sorted(detail.claimed_by), sorted(claims))
        if expected_winners is not None:
            self.assertEqual(sorted(claims), sorted(expected_winners))
        return detail
