"""Redemption and expiry under concurrency, on real threads with real connections (PostgreSQL and SQLite).

- One code, redeemed by 50 callers at once: exactly one 201, 49 x 409 — through the service, over HTTP to a
  threaded live server, and (PostgreSQL) to the server as it ships.
- A sale with holds: 200 users claim, most redeem (some just before, some just after their deadline), some
  never do, two expiry workers (two app hosts) run passes all along, and a reader checks
  `remaining_amount + held + redeemed = amount` at every instant it samples. Afterwards: every redemption
  answered 201 is redeemed and was redeemed before its deadline, every 410 expired, no unit came back twice.
"""

import http.client
import json
import logging
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import rest_framework.views  # noqa: F401 - first: coupons.api.errors is loaded through DRF's settings
from django.db import connection
from django.test import TransactionTestCase
from hypothesis.extra.django import LiveServerTestCase

from coupons.api.errors import DOMAIN_ERRORS
from coupons.claim_codes import format_code
from coupons.exceptions import CouponError
from coupons.holds import expire_holds
from coupons.models import Claim, ClaimStatus, Coupon
from coupons.selectors import get_coupon_detail
from coupons.services import claim_coupon, create_coupon, redeem_claim
from tests.stress.base import REPETITIONS, OneStressClassAtATime, run_simultaneously
from tests.stress.test_http import RoomyLiveServerThread, ServedByShippedServer

logger = logging.getLogger(__name__)

REDEEMERS = 50


def redeem(code, order_id):
    """The outcome as the API names it: "redeemed" or the error code."""
    try:
        redeem_claim(code=code, order_id=order_id)
    except CouponError as exc:
        return DOMAIN_ERRORS[type(exc)][1]
    return "redeemed"


class OneCodeRedeemedAtOnce(OneStressClassAtATime):
    """Mixed into a TransactionTestCase: `redeem_all(code, order_ids)` fires one redemption per order id at once."""

    def redeem_all(self, code, order_ids):
        raise NotImplementedError

    def test_fifty_redemptions_of_one_code_one_succeeds(self):
        for round_number in range(REPETITIONS):
            with self.subTest(round=round_number):
                name = f"HOT CODE {round_number}"
                create_coupon(name=name, amount=1, hold_seconds=3600)
                code = claim_coupon(user_id="shopper", coupon_name=name).code
                orders = [f"order-{round_number}-{i}" for i in range(REDEEMERS)]

                outcomes = self.redeem_all(code, orders)

                self.assertEqual(Counter(outcomes), {"redeemed": 1, "already_redeemed": REDEEMERS - 1})
                claim = Claim.objects.get(code=code)
                winner = orders[outcomes.index("redeemed")]
                self.assertEqual((claim.status, claim.order_id), (ClaimStatus.REDEEMED, winner))
                self.assertEqual(Coupon.objects.get(name=name).remaining_amount, 0)


class ServiceRedemptionStressTests(OneCodeRedeemedAtOnce, TransactionTestCase):
    def redeem_all(self, code, order_ids):
        return run_simultaneously([lambda order_id=order_id: redeem(code, order_id) for order_id in order_ids])


class HttpRedemptions:
    """Redemptions over HTTP, each on its own TCP connection opened before the start line."""

    server_address = None

    def redeem_all(self, code, order_ids):
        connections = [http.client.HTTPConnection(*self.server_address, timeout=60) for _ in order_ids]
        for http_connection in connections:
            http_connection.connect()
        # The code as a person types it, in half of the requests.
        typed = [format_code(code).lower() if i % 2 else code for i in range(len(order_ids))]
        calls = [
            lambda c=c, t=t, o=o: self.post(c, {"code": t, "order_id": o})
            for c, t, o in zip(connections, typed, order_ids, strict=True)
        ]
        return run_simultaneously(calls, connect=False)

    def post(self, http_connection, body):
        try:
            http_connection.request(
                "POST", "/api/redemptions", body=json.dumps(body), headers={"Content-Type": "application/json"}
            )
            response = http_connection.getresponse()
            answer = json.loads(response.read())
        finally:
            http_connection.close()
        if response.status == 201:
            self.assertEqual(answer["order_id"], body["order_id"])
            return "redeemed"
        self.assertEqual(response.status, 409, answer)
        self.assertEqual(set(answer), {"error", "code", "redeemed_at", "order_id"})
        return answer["code"]


class HttpRedemptionStressTests(HttpRedemptions, OneCodeRedeemedAtOnce, LiveServerTestCase):
    server_thread_class = RoomyLiveServerThread

    def setUp(self):
        super().setUp()
        parts = urlsplit(self.live_server_url)
        self.server_address = (parts.hostname, parts.port)


class ShippedServerRedemptionStressTests(
    ServedByShippedServer, HttpRedemptions, OneCodeRedeemedAtOnce, TransactionTestCase
):
    pass


# The sale with holds.
USERS = 200
STOCK = 150
HOLD_SECONDS = 1
CLAIMERS_AT_ONCE = 16  # threads (and connections) claiming and redeeming
EXPIRY_WORKERS = 2  # as on two app hosts


class SaleWithHoldsStressTests(OneStressClassAtATime, TransactionTestCase):
    def test_users_claim_and_redeem_while_holds_expire_and_the_stock_always_adds_up(self):
        create_coupon(name="HOLDS", amount=STOCK, hold_seconds=HOLD_SECONDS)
        rng = random.Random(16)  # noqa: S311 - a fixed test plan; the interleaving is the threads'
        # What each user does once granted: redeem well within the hold, around its deadline, or never.
        plans = {f"user_{i}": rng.choice(["early", "near_deadline", "near_deadline", "never"]) for i in range(USERS)}
        done = threading.Event()
        samples, broken = [], []
        expired_by_workers = []

        def read_the_invariant():
            try:
                while not done.is_set():
                    detail = get_coupon_detail(name="HOLDS")
                    total = detail.remaining_amount + detail.held_amount + detail.redeemed_amount
                    samples.append(total)
                    if total != detail.amount or len(detail.claimed_by) != detail.amount - detail.remaining_amount:
                        broken.append(detail)
                    time.sleep(0.002)
            finally:
                connection.close()

        def expire_all_along():
            count = 0
            try:
                while not done.is_set():
                    count += expire_holds()
                    time.sleep(0.01)
            finally:
                expired_by_workers.append(count)
                connection.close()

        def shop(user_id):
            """Claim, retrying (a hold that expires gives its unit back); then redeem as planned."""
            try:
                outcomes = []
                for _ in range(3):
                    try:
                        claim = claim_coupon(user_id=user_id, coupon_name="HOLDS")
                    except CouponError as exc:
                        outcomes.append(("claim", DOMAIN_ERRORS[type(exc)][1]))
                        time.sleep(0.3)
                        continue
                    plan = plans[user_id]
                    if plan == "never":
                        return [*outcomes, ("claim", claim.code)]
                    delay = 0.1 if plan == "early" else rng_for(user_id).uniform(0.9, 1.1) * HOLD_SECONDS
                    time.sleep(delay)
                    return [*outcomes, ("claim", claim.code), ("redeem", claim.code, redeem(claim.code, user_id))]
                return outcomes
            finally:
                connection.close()

        threads = [threading.Thread(target=read_the_invariant)]
        threads += [threading.Thread(target=expire_all_along) for _ in range(EXPIRY_WORKERS)]
        for thread in threads:
            thread.start()
        try:
            with ThreadPoolExecutor(max_workers=CLAIMERS_AT_ONCE) as pool:
                journeys = dict(zip(plans, pool.map(shop, plans), strict=True))
            time.sleep(HOLD_SECONDS + 0.3)  # every hold still held is now past its deadline
        finally:
            done.set()
            for thread in threads:
                thread.join()
        expired_by_workers.append(expire_holds())  # whatever the workers' last passes left

        self.assertFalse(broken, f"remaining + held + redeemed != amount at {len(broken)} of {len(samples)} samples")
        self.assertGreater(len(samples), 100)
        redemptions = {step[1]: step[2] for journey in journeys.values() for step in journey if step[0] == "redeem"}
        claims = {claim.code: claim for claim in Claim.objects.filter(coupon__name="HOLDS")}
        told = Counter(redemptions.values())
        logger.info("holds sale: %s claims, redemptions %s, %s samples", len(claims), dict(told), len(samples))
        self.assertTrue({"redeemed", "claim_expired"} <= set(told), told)  # both sides of the race happened
        self.assertLessEqual(set(told), {"redeemed", "claim_expired"})
        for code, outcome in redemptions.items():
            claim = claims[code]
            expected = ClaimStatus.REDEEMED if outcome == "redeemed" else ClaimStatus.EXPIRED
            self.assertEqual(claim.status, expected, f"{claim.user_id} was told {outcome}")
        for claim in claims.values():
            self.assertNotEqual(claim.status, ClaimStatus.HELD)  # every deadline has passed
            if claim.status == ClaimStatus.REDEEMED:
                self.assertLess(claim.redeemed_at, claim.expires_at, "nothing redeemed after its deadline")
            else:
                self.assertGreaterEqual(claim.returned_at, claim.expires_at, "nothing expired before its deadline")
        expired = sum(1 for claim in claims.values() if claim.status == ClaimStatus.EXPIRED)
        self.assertEqual(sum(expired_by_workers), expired, "each expired claim returned its unit once")
        redeemed = len(claims) - expired
        self.assertEqual(Coupon.objects.get(name="HOLDS").remaining_amount, STOCK - redeemed)
        # Every user who was refused had found the stock empty, never a double claim.
        refusals = Counter(step[1] for journey in journeys.values() for step in journey if step[0] == "claim")
        self.assertLessEqual(set(refusals) - set(claims), {"out_of_stock"})


def rng_for(user_id):
    return random.Random(user_id)  # noqa: S311 - per user: threads never share a generator
