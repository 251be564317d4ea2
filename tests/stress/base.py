"""The stress scenarios that define "correct", written once for every way of claiming.

Real threads and real connections: each scenario fires its claims from a
thread pool released by a barrier; every thread opens its own database
connection before the start line and closes it at the end.
"""

import fcntl
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coupons.coupon_states import coupon_states
from coupons.models import LIVE_STATUSES, Claim, ClaimRelease, Coupon
from coupons.selectors import database_now
from coupons.services import claim_coupon, create_coupon

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


@dataclass(frozen=True)
class GeneratedCoupon:
    stock: int
    window: str  # one of WINDOWS
    holders: tuple[str, ...]  # users who hold it before the crowd arrives


# Sale windows a generated coupon can have, relative to the database's clock.
ALWAYS, OPEN, NOT_STARTED, ENDED = "no bounds", "open", "not started", "ended"
WINDOWS = (ALWAYS, ALWAYS, OPEN, NOT_STARTED, ENDED)
HOUR = timedelta(hours=1)


@st.composite
def sales(draw):
    """A generated sale: ({coupon name: GeneratedCoupon}, [(action, user_id, coupon_name), ...] fired at once).

    One to three coupons with small stocks, each with a sale window (mostly
    open, sometimes not started or ended) and maybe a few users already
    holding it; a crowd drawn from a few users (so repeat claimers are
    common) claiming, and now and then releasing a claim (an operator), or
    naming a coupon that does not exist.
    """
    users = [f"user_{i}" for i in range(draw(st.integers(1, 10)))]
    coupons = {}
    for i, (stock, window) in enumerate(
        draw(st.lists(st.tuples(st.integers(1, 6), st.sampled_from(WINDOWS)), min_size=1, max_size=3))
    ):
        # Only an open sale can have been claimed already.
        holders = (
            draw(st.lists(st.sampled_from(users), unique=True, max_size=stock)) if window in (ALWAYS, OPEN) else []
        )
        coupons[f"SALE {i}"] = GeneratedCoupon(stock, window, tuple(holders))
    # About one request in ten names a coupon that does not exist, one in five is a release.
    coupon_names = st.integers(0, 9).flatmap(
        lambda roll: st.sampled_from(list(coupons)) if roll < 9 else st.just(UNKNOWN_COUPON)
    )
    actions = st.integers(0, 4).map(lambda roll: "release" if roll == 0 else "claim")
    requests = draw(
        st.lists(st.tuples(actions, st.sampled_from(users), coupon_names), min_size=1, max_size=MAX_CLAIMS_PER_SALE)
    )
    return coupons, requests


def set_up_sale(coupons):
    """Create the generated coupons with their windows, and their holders' claims."""
    now = database_now()
    bounds = {
        ALWAYS: {},
        OPEN: {"starts_at": now - HOUR, "ends_at": now + HOUR},
        NOT_STARTED: {"starts_at": now + HOUR},
        ENDED: {"ends_at": now},
    }
    for name, coupon in coupons.items():
        create_coupon(name=name, amount=coupon.stock, **bounds[coupon.window])
        for user_id in coupon.holders:
            claim_coupon(user_id=user_id, coupon_name=name)


class OneStressClassAtATime:
    """A test case mixin: one stress class runs at a time, machine-wide."""

    @classmethod
    def setUpClass(cls):
        cls._lock_file = open(_LOCK_PATH, "w")  # noqa: SIM115 - held until tearDownClass
        fcntl.flock(cls._lock_file, fcntl.LOCK_EX)
        super().setUpClass()

    def setUp(self):
        # The process's coupon states (coupons/coupon_states.py) start empty: the previous test's coupons were
        # flushed without the notifications a real change sends (pytest's conftest does the same).
        coupon_states.forget_all()
        super().setUp()

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

    Subclasses say how a crowd claims and how an operator releases:
    `fire_all` fires (action, user_id, coupon_name) requests at once, the
    action "claim" or "release", and returns each caller's outcome:
    "claimed", "released" or the error code it was answered with;
    `read_detail` returns the coupon as GET /api/coupons/{name} shows it.
    """

    def sale_set_up(self):
        """Called once a generated sale's coupons are created, before the crowd comes (a served app's processes
        hear of them a moment later: ServedByShippedServer waits that moment)."""

    def fire_all(self, requests):
        raise NotImplementedError

    def read_detail(self, name):
        raise NotImplementedError

    def assert_every_invariant(self, coupons, requests, outcomes):
        """What any sale must end with, whoever won the races.

        `coupons` maps each coupon that exists to its GeneratedCoupon;
        `requests` are the (action, user_id, coupon_name) requests that were
        fired and `outcomes` what each caller was told. Checked against the
        rows, the audit trail and the API's detail.
        """
        for (_, _, coupon_name), outcome in zip(requests, outcomes, strict=True):
            if coupon_name not in coupons:
                self.assertEqual(outcome, "not_found")
        for name, coupon in coupons.items():
            attempts = [
                (action, user, outcome)
                for (action, user, coupon_name), outcome in zip(requests, outcomes, strict=True)
                if coupon_name == name
            ]
            # The claims that hold a unit (a release keeps its row, as `released`).
            live = Claim.objects.filter(coupon__name=name, status__in=LIVE_STATUSES)
            rows = sorted(live.values_list("user_id", flat=True))
            if coupon.window in (NOT_STARTED, ENDED):
                refusal = "sale_not_started" if coupon.window == NOT_STARTED else "sale_ended"
                expected = {"claim": refusal, "release": "claim_not_found"}
                self.assertEqual([outcome for action, _, outcome in attempts], [expected[a] for a, _, _ in attempts])
            elif any(action == "release" for action, _, _ in attempts):
                self.assert_accounts(name, coupon, attempts, rows)
            else:
                self.assert_claims_only(name, coupon, attempts, rows)
            released = sum(outcome == "released" for _, _, outcome in attempts)
            self.assertEqual(ClaimRelease.objects.filter(coupon__name=name).count(), released, f"{name}: audited")
            remaining_amount = Coupon.objects.get(name=name).remaining_amount
            self.assertEqual(remaining_amount, coupon.stock - len(rows), f"{name}: remaining = amount - claims")
            detail = self.read_detail(name)
            self.assertEqual(detail["remaining_amount"], remaining_amount)
            self.assertEqual(sorted(detail["claimed_by"]), rows)

    def assert_claims_only(self, name, coupon, attempts, rows):
        """Claims alone: exactly min(stock left, claimers) win, and everyone is told the one true thing."""
        holders = set(coupon.holders)
        winners = sorted(user for _, user, outcome in attempts if outcome == "claimed")
        claimers = {user for _, user, _ in attempts} - holders
        left = coupon.stock - len(holders)
        self.assertEqual(len(winners), min(left, len(claimers)), f"{name}: successes = min(stock left, claimers)")
        self.assertEqual(len(set(winners)), len(winners), f"{name}: no user claims twice")
        for user in claimers | holders:
            told = sorted(outcome for _, someone, outcome in attempts if someone == user)
            # A holder or winner's other attempts hear "already claimed"; anyone else was too late.
            if user in holders:
                expected = ["already_claimed"] * len(told)
            elif user in winners:
                expected = sorted(["claimed"] + ["already_claimed"] * (len(told) - 1))
            else:
                expected = ["out_of_stock"] * len(told)
            self.assertEqual(told, expected, f"{name}: what {user} was told")
        self.assertEqual(rows, sorted(holders | set(winners)), f"{name}: every success has its row, and only those")

    def assert_accounts(self, name, coupon, attempts, rows):
        """Claims and releases mixed: each user's claims and releases account exactly for the row they end with."""
        for action, user, outcome in attempts:
            possible = {
                "claim": {"claimed", "already_claimed", "out_of_stock"},
                "release": {"released", "claim_not_found"},
            }
            self.assertIn(outcome, possible[action], f"{name}: {action} by {user}")
        for user in {user for _, user, _ in attempts} | set(coupon.holders):
            claimed = sum(1 for _, someone, outcome in attempts if someone == user and outcome == "claimed")
            released = sum(1 for _, someone, outcome in attempts if someone == user and outcome == "released")
            held_before, holds_now = int(user in coupon.holders), int(user in rows)
            self.assertEqual(held_before + claimed - released, holds_now, f"{name}: {user}'s claims and releases")

    def assert_sale(self, name, *, users, expected_counts):
        """`users` claim one fresh coupon at once; callers' outcomes, the rows and the detail must all agree."""
        requests = [("claim", user, name) for user in users]
        outcomes = self.fire_all(requests)

        counts = {outcome: outcomes.count(outcome) for outcome in set(outcomes)}
        self.assertEqual(counts, expected_counts)
        coupon = GeneratedCoupon(Coupon.objects.get(name=name).amount, ALWAYS, ())
        self.assert_every_invariant({name: coupon}, requests, outcomes)
        return self.read_detail(name)

    def test_flash_sale_fifty_users_race_for_five(self):
        for round_number in range(REPETITIONS):
            with self.subTest(round=round_number):
                name = f"FLASH SALE/{round_number}"
                create_coupon(name=name, amount=5)
                users = [f"user_{round_number}_{i}" for i in range(50)]

                detail = self.assert_sale(name, users=users, expected_counts={"claimed": 5, "out_of_stock": 45})

                self.assertEqual(detail["remaining_amount"], 0)
                self.assertEqual(len(detail["claimed_by"]), 5)

    def test_double_dip_one_user_claims_ten_times_at_once(self):
        for round_number in range(REPETITIONS):
            with self.subTest(round=round_number):
                name = f"DOUBLE DIP {round_number}"
                create_coupon(name=name, amount=100)
                user = f"dipper_{round_number}"

                detail = self.assert_sale(name, users=[user] * 10, expected_counts={"claimed": 1, "already_claimed": 9})

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
        coupons, requests = sale
        set_up_sale(coupons)
        self.sale_set_up()

        outcomes = self.fire_all(requests)

        self.assert_every_invariant(coupons, requests, outcomes)
