"""Campaign caps under a stampede, on real threads with real connections (PostgreSQL and SQLite).

- 5 coupons of one campaign with max_claims_per_user 1; 2,000 users each try all 5 at once: each user gets
  exactly one, and is told campaign_limit_reached for the 4 others.
- max_claims 100 over 3 coupons of 60 units, 300 users at once: exactly 100 granted.
- Claims, releases and hold expiries racing: afterwards the campaign's counter equals its coupons' live claims,
  within max_claims, and nobody holds more than max_claims_per_user.

The claims are fired by a pool of threads pulling from one queue, each thread with its own connection (one per
claim would need 10,000 connections): a user's claims are next to each other in the queue, so they are in
flight at once on different threads, and the threads share the process's claim groups as a server's do.
"""

import queue
import random
import threading
from collections import Counter

import rest_framework.views  # noqa: F401 - first: coupons.api.errors is loaded through DRF's settings
from django.db import connection
from django.db.models import Count
from django.test import TransactionTestCase

from campaigns.models import Campaign
from campaigns.services import create_campaign
from coupons import extensions
from coupons.api.errors import DOMAIN_ERRORS
from coupons.exceptions import CouponError
from coupons.holds import expire_holds
from coupons.models import LIVE_STATUSES, Claim, Coupon
from coupons.services import claim_coupon, create_coupon, release_claim
from tests.stress.base import BARRIER_TIMEOUT_SECONDS, OneStressClassAtATime

# Threads (each with one database connection) firing a stampede.
WORKERS = 32


def outcome_of(call):
    """ "ok", or the error code the API would answer with."""
    try:
        call()
    except CouponError as exc:
        return DOMAIN_ERRORS.get(type(exc), extensions.http_error(exc))[1]
    return "ok"


def run_in_pool(calls, *, workers=WORKERS):
    """Run the zero-argument callables from one queue on `workers` threads released at once; outcomes in order."""
    tasks = queue.SimpleQueue()
    for index, call in enumerate(calls):
        tasks.put((index, call))
    outcomes = [None] * len(calls)
    barrier = threading.Barrier(workers)
    failures = []

    def work():
        try:
            connection.ensure_connection()
            barrier.wait(timeout=BARRIER_TIMEOUT_SECONDS)
            while True:
                try:
                    index, call = tasks.get_nowait()
                except queue.Empty:
                    return
                outcomes[index] = outcome_of(call)
        except BaseException as exc:  # reported by the caller's thread
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return outcomes


def claim(user_id, coupon_name):
    return lambda: claim_coupon(user_id=user_id, coupon_name=coupon_name)


class CampaignStressTests(OneStressClassAtATime, TransactionTestCase):
    def live_claims(self, campaign_name):
        return Claim.objects.filter(coupon__campaign_membership__campaign__name=campaign_name, status__in=LIVE_STATUSES)

    def assert_counter_exact(self, campaign_name):
        campaign = Campaign.objects.get(name=campaign_name)
        self.assertEqual(campaign.taken, self.live_claims(campaign_name).count(), "counter = live claims")
        if campaign.max_claims is not None:
            self.assertLessEqual(campaign.taken, campaign.max_claims)
        if campaign.max_claims_per_user is not None:
            most = self.live_claims(campaign_name).values("user_id").annotate(n=Count("id")).order_by("-n").first()
            self.assertLessEqual(most["n"] if most else 0, campaign.max_claims_per_user, "per-user limit")
        for coupon in Coupon.objects.filter(campaign_membership__campaign=campaign):
            live = Claim.objects.filter(coupon=coupon, status__in=LIVE_STATUSES).count()
            self.assertEqual(coupon.remaining_amount, coupon.amount - live, f"{coupon.name}: stock exact")
        return campaign

    def test_two_thousand_users_each_try_all_five_coupons_at_once_none_gets_two(self):
        create_campaign(name="ONE EACH", max_claims_per_user=1)
        coupons = [f"ONE EACH {i}" for i in range(5)]
        for name in coupons:
            create_coupon(name=name, amount=2000, options={"campaign": "ONE EACH"})
        users = [f"user_{i}" for i in range(2000)]
        # Each user's five claims next to each other, in a shuffled coupon order.
        rng = random.Random(25)
        requests = [(user, name) for user in users for name in rng.sample(coupons, len(coupons))]

        outcomes = run_in_pool([claim(user, name) for user, name in requests])

        self.assertEqual(Counter(outcomes), {"ok": 2000, "campaign_limit_reached": 8000})
        per_user = Counter(user for (user, _), outcome in zip(requests, outcomes, strict=True) if outcome == "ok")
        self.assertEqual(set(per_user.values()), {1})
        self.assertEqual(self.assert_counter_exact("ONE EACH").taken, 2000)

    def test_max_claims_one_hundred_over_coupons_of_sixty_exactly_one_hundred(self):
        for round_number in range(3):
            with self.subTest(round=round_number):
                campaign = f"HUNDRED {round_number}"
                create_campaign(name=campaign, max_claims=100)
                coupons = [f"{campaign}/{i}" for i in range(3)]
                for name in coupons:
                    create_coupon(name=name, amount=60, options={"campaign": campaign})
                requests = [(f"user_{i}", coupons[i % 3]) for i in range(300)]

                outcomes = run_in_pool([claim(user, name) for user, name in requests])

                counts = Counter(outcomes)
                self.assertEqual(counts["ok"], 100)
                self.assertEqual(set(counts) - {"ok", "campaign_exhausted", "out_of_stock"}, set())
                self.assertEqual(self.assert_counter_exact(campaign).taken, 100)

    def test_releases_and_expiries_racing_claims_keep_the_counts_exact(self):
        rng = random.Random(2025)
        for round_number in range(5):
            with self.subTest(round=round_number):
                campaign = f"CHURN {round_number}"
                create_campaign(name=campaign, max_claims=15, max_claims_per_user=2)
                coupons = [f"{campaign}/{i}" for i in range(3)]
                for name in coupons:
                    create_coupon(name=name, amount=8, hold_seconds=3600, options={"campaign": campaign})
                users = [f"user_{i}" for i in range(12)]
                # Some holds before the crowd, a few of them already past their deadline.
                for user in users[:6]:
                    claim_coupon(user_id=user, coupon_name=rng.choice(coupons))
                due = Claim.objects.filter(coupon__name__in=coupons).order_by("?")[:3]
                for held in due:
                    Claim.objects.filter(pk=held.pk).update(expires_at=held.created_at)
                calls = []
                for _ in range(120):
                    roll, user, name = rng.random(), rng.choice(users), rng.choice(coupons)
                    if roll < 0.6:
                        calls.append(claim(user, name))
                    elif roll < 0.9:
                        calls.append(
                            lambda user=user, name=name: release_claim(
                                coupon_name=name, user_id=user, released_by="stress"
                            )
                        )
                    else:
                        calls.append(expire_holds)

                outcomes = run_in_pool(calls, workers=16)

                self.assertEqual(
                    set(outcomes)
                    - {"ok", "already_claimed", "out_of_stock", "campaign_exhausted", "campaign_limit_reached"}
                    - {"claim_not_found"},
                    set(),
                )
                self.assert_counter_exact(campaign)
                # Every expiry due before the crowd has happened by the end (a pass ran at least once, or none was
                # fired: run one now, and the counter is still exact).
                expire_holds()
                self.assert_counter_exact(campaign)
