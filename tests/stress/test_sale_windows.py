"""A sale opening and closing under load: real threads, each with its own connection, claiming in a tight loop.

The crowd is released by a barrier a little before the instant, and keeps
claiming across it. The service decides with the database's clock; the test
compares with its own, which on one machine is the same clock.
"""

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.test import TransactionTestCase

from coupons.exceptions import OutOfStock, SaleEnded, SaleNotStarted
from coupons.models import Claim, Coupon
from coupons.selectors import database_now
from coupons.services import claim_coupon, create_coupon
from tests.stress.base import OneStressClassAtATime, run_simultaneously

logger = logging.getLogger(__name__)

CROWD = 24
STOCK = 10
LEAD_TIME = timedelta(seconds=1.5)  # from coupon creation to the instant
PAUSE_SECONDS = 0.005  # between one caller's attempts: tight, but leaves the CPU to the database


@dataclass(frozen=True)
class Attempt:
    sent_at: datetime
    answered_at: datetime
    outcome: str
    retry_after: int | None = None


def attempt(user_id, coupon_name):
    sent_at = datetime.now(UTC)
    try:
        claim_coupon(user_id=user_id, coupon_name=coupon_name)
    except SaleNotStarted as exc:
        return Attempt(sent_at, datetime.now(UTC), "sale_not_started", exc.retry_after_seconds)
    except SaleEnded:
        return Attempt(sent_at, datetime.now(UTC), "sale_ended")
    except OutOfStock:
        return Attempt(sent_at, datetime.now(UTC), "out_of_stock")
    return Attempt(sent_at, datetime.now(UTC), "claimed")


def milliseconds(delta):
    return round(delta / timedelta(milliseconds=1), 1)


class SaleWindowInstantTests(OneStressClassAtATime, TransactionTestCase):
    def test_a_sale_opens_on_time_under_load(self):
        starts_at = database_now() + LEAD_TIME
        create_coupon(name="OPENING", amount=STOCK, starts_at=starts_at)

        def one_user(user_id):
            """Claim until the sale answers with something other than "not started"."""
            attempts = [attempt(user_id, "OPENING")]
            while attempts[-1].outcome == "sale_not_started":
                time.sleep(PAUSE_SECONDS)
                attempts.append(attempt(user_id, "OPENING"))
            return attempts

        per_user = run_simultaneously([lambda user=f"user_{i}": one_user(user) for i in range(CROWD)])

        attempts = [one for user_attempts in per_user for one in user_attempts]
        early = [one for one in attempts if one.outcome == "sale_not_started"]
        finals = sorted(user_attempts[-1].outcome for user_attempts in per_user)
        self.assertEqual(finals, ["claimed"] * STOCK + ["out_of_stock"] * (CROWD - STOCK), "stock exactly sold")
        claims = list(Claim.objects.values_list("created_at", flat=True))
        self.assertEqual(len(claims), STOCK)
        self.assertEqual(Coupon.objects.get(name="OPENING").remaining_amount, 0)
        self.assertGreaterEqual(min(claims), starts_at, "no claim before the start")
        self.assertGreater(len(early), CROWD, "the crowd was there before the start")
        for one in early:
            # Refused only when sent before the start, and told to wait at
            # most the whole seconds that were left when it was sent.
            self.assertLess(one.sent_at, starts_at)
            left = -((one.sent_at - starts_at) // timedelta(seconds=1))
            self.assertTrue(1 <= one.retry_after <= left, (one, starts_at))
        logger.info(
            f"opening: {len(attempts)} attempts by {CROWD} users, {len(early)} refused as early"
            f" (Retry-After {min(one.retry_after for one in early)}..{max(one.retry_after for one in early)} s);"
            f" last early answer {milliseconds(max(one.answered_at for one in early) - starts_at)} ms,"
            f" first claim {milliseconds(min(claims) - starts_at)} ms,"
            f" sold out {milliseconds(max(claims) - starts_at)} ms after starts_at"
        )

    def test_a_sale_closes_on_time_under_load(self):
        ends_at = database_now() + LEAD_TIME
        create_coupon(name="CLOSING", amount=1_000_000, ends_at=ends_at)

        def one_caller(caller):
            """Claim for new users until the sale answers "ended"."""
            attempts = []
            while not attempts or attempts[-1].outcome == "claimed":
                attempts.append(attempt(f"{caller}_{len(attempts)}", "CLOSING"))
                time.sleep(PAUSE_SECONDS)
            return attempts

        per_caller = run_simultaneously([lambda caller=f"caller_{i}": one_caller(caller) for i in range(CROWD)])

        attempts = [one for caller_attempts in per_caller for one in caller_attempts]
        granted = [one for one in attempts if one.outcome == "claimed"]
        self.assertEqual({caller_attempts[-1].outcome for caller_attempts in per_caller}, {"sale_ended"})
        self.assertEqual(len(granted) + len(per_caller), len(attempts), "only claims, then one refusal each")
        claims = list(Claim.objects.values_list("created_at", flat=True))
        self.assertEqual(len(claims), len(granted))
        self.assertEqual(Coupon.objects.get(name="CLOSING").remaining_amount, 1_000_000 - len(claims))
        self.assertLess(max(claims), ends_at, "no claim at or after the end")
        for caller_attempts in per_caller:
            self.assertGreaterEqual(caller_attempts[-1].answered_at, ends_at, "refused only once the sale ended")
        logger.info(
            f"closing: {len(granted)} claims by {CROWD} callers; last claim"
            f" {milliseconds(ends_at - max(claims))} ms before ends_at, first refusal answered"
            f" {milliseconds(min(c[-1].answered_at for c in per_caller) - ends_at)} ms after it"
        )
