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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coupons.models import Claim, Coupon
from coupons.services import create_coupon

# Each scenario is replayed this many times per run, on fresh coupons.
REPETITIONS = 10
BARRIER_TIMEOUT_SECONDS = 60
# Generated sales per run of the property test, for each way of claiming:
# enough to meet many shapes of crowd, few enough for CI's time.
SALES_PER_RUN = 30
# One thread (and one database connection) per claim of a generated sale.
MAX_CLAIMS_PER_SALE = 24
UNKNOWN_COUPON = "NO SUCH SALE"

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


@st.composite
def sales(draw):
    """A generated sale: ({coupon name: stock}, [(user_id, coupon_name), ...] fired at once).

    One to three coupons on sale together with small stocks, a crowd drawn
    from a few users (so repeat claimers are common), and now and then a
    claim on a coupon that does not exist.
    """
    stocks = {f"SALE {i}": stock for i, stock in enumerate(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))}
    users = [f"user_{i}" for i in range(draw(st.integers(1, 10)))]
    # About one claim in ten names a coupon that does not exist.
    coupon_names = st.integers(0, 9).flatmap(
        lambda roll: st.sampled_from(list(stocks)) if roll < 9 else st.just(UNKNOWN_COUPON)
    )
    requests = draw(st.lists(st.tuples(st.sampled_from(users), coupon_names), min_size=1, max_size=MAX_CLAIMS_PER_SALE))
    return stocks, requests


class OneStressClassAtATime:
    """A test case mixin: one stress class runs at a time, machine-wide."""

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


class StressScenarios(OneStressClassAtATime):
    """Mixed into Hypothesis' TransactionTestCase (real commits, no wrapping
    test transaction, the database emptied after each generated sale); one
    stress class runs at a time.

    Subclasses say how a crowd claims: `claim_all` fires (user_id,
    coupon_name) claims at once and returns each caller's outcome
    ("claimed", "already_claimed", "out_of_stock" or "not_found");
    `read_detail` returns the coupon as GET /api/coupons/{name} shows it.
    """

    def claim_all(self, requests):
        raise NotImplementedError

    def read_detail(self, name):
        raise NotImplementedError

    def assert_every_invariant(self, stocks, requests, outcomes):
        """What any sale must end with, whoever won the races.

        `stocks` maps each coupon that exists to its amount; `requests` are
        the (user_id, coupon_name) claims that were fired and `outcomes` what
        each caller was told. Checked against the rows and the API's detail.
        """
        for (_, coupon_name), outcome in zip(requests, outcomes, strict=True):
            if coupon_name not in stocks:
                self.assertEqual(outcome, "not_found")
        for name, stock in stocks.items():
            attempts = [
                (user, outcome) for (user, coupon), outcome in zip(requests, outcomes, strict=True) if coupon == name
            ]
            winners = sorted(user for user, outcome in attempts if outcome == "claimed")
            claimers = {user for user, _ in attempts}
            self.assertEqual(len(winners), min(stock, len(claimers)), f"{name}: successes = min(stock, claimers)")
            self.assertEqual(len(set(winners)), len(winners), f"{name}: no user claims twice")
            for user in claimers:
                told = sorted(outcome for someone, outcome in attempts if someone == user)
                # A winner's other attempts hear "already claimed"; anyone else was too late.
                if user in winners:
                    expected = sorted(["claimed"] + ["already_claimed"] * (len(told) - 1))
                else:
                    expected = ["out_of_stock"] * len(told)
                self.assertEqual(told, expected, f"{name}: what {user} was told")

            coupon = Coupon.objects.get(name=name)
            rows = sorted(Claim.objects.filter(coupon=coupon).values_list("user_id", flat=True))
            self.assertEqual(rows, winners, f"{name}: every success has its row and every row had a success")
            self.assertEqual(coupon.remaining_amount, stock - len(rows), f"{name}: remaining = amount - claims")
            detail = self.read_detail(name)
            self.assertEqual(detail["remaining_amount"], coupon.remaining_amount)
            self.assertEqual(sorted(detail["claimed_by"]), winners)

    def assert_sale(self, name, *, requests, expected_counts):
        """Fire the claims on one fresh coupon; callers' outcomes, the rows and the detail must all agree."""
        outcomes = self.claim_all(requests)

        counts = {outcome: outcomes.count(outcome) for outcome in set(outcomes)}
        self.assertEqual(counts, expected_counts)
        self.assert_every_invariant({name: Coupon.objects.get(name=name).amount}, requests, outcomes)
        return self.read_detail(name)

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

    # The same property, run by each subclass's way of claiming: an example
    # saved by one is rightly replayed by the others (differing executors).
    @settings(
        max_examples=SALES_PER_RUN,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
    )
    @given(sale=sales())
    def test_generated_sales_keep_every_invariant(self, sale):
        stocks, requests = sale
        for name, stock in stocks.items():
            create_coupon(name=name, amount=stock)

        outcomes = self.claim_all(requests)

        self.assert_every_invariant(stocks, requests, outcomes)
