import contextlib
from unittest import mock

from django.db import IntegrityError, connection, transaction
from django.db.models import ProtectedError
from django.test import TestCase, TransactionTestCase
from django.test.utils import CaptureQueriesContext

from coupons import services
from coupons.exceptions import (
    AlreadyClaimed,
    AmountBelowClaimed,
    CouponAlreadyExists,
    CouponNotFound,
    OutOfStock,
    SaleEnded,
)
from coupons.models import Claim, Coupon
from coupons.selectors import database_now, get_claim_eligibility, get_coupon_detail
from coupons.services import claim_coupon, create_coupon, restock_coupon
from tests.stress.base import run_simultaneously


class CreateCouponTests(TestCase):
    def test_new_coupon_starts_with_full_stock(self):
        coupon = create_coupon(name="PROMO_SUPER", amount=100)

        coupon.refresh_from_db()
        self.assertEqual((coupon.name, coupon.amount, coupon.remaining_amount), ("PROMO_SUPER", 100, 100))
        self.assertIsNotNone(coupon.created_at)

    def test_duplicate_name_is_refused_and_leaves_the_transaction_usable(self):
        create_coupon(name="PROMO", amount=1)

        with self.assertRaises(CouponAlreadyExists):
            create_coupon(name="PROMO", amount=5)

        # The surrounding transaction (the test's own) still works.
        self.assertEqual(Coupon.objects.get(name="PROMO").amount, 1)

    def test_names_are_case_sensitive(self):
        create_coupon(name="promo", amount=1)
        create_coupon(name="PROMO", amount=1)
        self.assertEqual(Coupon.objects.count(), 2)


class ClaimCouponTests(TestCase):
    def setUp(self):
        self.coupon = create_coupon(name="PROMO", amount=2)

    def test_claim_records_the_user_and_takes_one_unit(self):
        claim = claim_coupon(user_id="user_1", coupon_name="PROMO")

        self.assertEqual((claim.user_id, claim.coupon_id), ("user_1", self.coupon.pk))
        self.coupon.refresh_from_db()
        self.assertEqual(self.coupon.remaining_amount, 1)
        self.assertEqual(list(Claim.objects.values_list("user_id", flat=True)), ["user_1"])

    def test_unknown_coupon(self):
        with self.assertRaises(CouponNotFound):
            claim_coupon(user_id="user_1", coupon_name="NOPE")
        self.assertFalse(Claim.objects.exists())

    def test_second_claim_by_the_same_user_is_refused(self):
        claim_coupon(user_id="user_1", coupon_name="PROMO")

        with self.assertRaises(AlreadyClaimed):
            claim_coupon(user_id="user_1", coupon_name="PROMO")

        self.coupon.refresh_from_db()
        self.assertEqual(self.coupon.remaining_amount, 1)
        self.assertEqual(Claim.objects.count(), 1)

    def test_sold_out_coupon_is_refused(self):
        claim_coupon(user_id="user_1", coupon_name="PROMO")
        claim_coupon(user_id="user_2", coupon_name="PROMO")

        with self.assertRaises(OutOfStock):
            claim_coupon(user_id="user_3", coupon_name="PROMO")

        self.coupon.refresh_from_db()
        self.assertEqual(self.coupon.remaining_amount, 0)
        self.assertEqual(Claim.objects.count(), 2)

    def test_repeat_claimer_hears_already_claimed_even_when_sold_out(self):
        claim_coupon(user_id="user_1", coupon_name="PROMO")
        claim_coupon(user_id="user_2", coupon_name="PROMO")

        with self.assertRaises(AlreadyClaimed):
            claim_coupon(user_id="user_1", coupon_name="PROMO")

    def test_one_user_may_claim_different_coupons(self):
        create_coupon(name="OTHER", amount=1)

        claim_coupon(user_id="user_1", coupon_name="PROMO")
        claim_coupon(user_id="user_1", coupon_name="OTHER")

        self.assertEqual(Claim.objects.filter(user_id="user_1").count(), 2)


class StaleReadTests(TransactionTestCase):
    """Races lost between the lock-free eligibility read and the locked write.

    Each test takes a real eligibility read, lets the world move on, then
    claims with that stale read, exactly as a request that lost the race.
    """

    def setUp(self):
        self.coupon = create_coupon(name="PROMO", amount=2)

    def claim_with(self, stale, user_id):
        with mock.patch.object(services, "get_claim_eligibility", return_value=stale):
            return claim_coupon(user_id=user_id, coupon_name="PROMO")

    def test_duplicate_is_stopped_under_the_lock(self):
        stale = get_claim_eligibility(coupon_name="PROMO", user_id="user_1")
        claim_coupon(user_id="user_1", coupon_name="PROMO")

        with self.assertRaises(AlreadyClaimed):
            self.claim_with(stale, "user_1")

        # Rolled back as a whole: no second row, no unit taken, connection usable.
        self.coupon.refresh_from_db()
        self.assertEqual(self.coupon.remaining_amount, 1)
        self.assertEqual(Claim.objects.filter(user_id="user_1").count(), 1)
        claim_coupon(user_id="user_2", coupon_name="PROMO")

    def test_sold_out_since_the_read_is_rechecked_under_the_lock(self):
        stale = get_claim_eligibility(coupon_name="PROMO", user_id="user_3")
        claim_coupon(user_id="user_1", coupon_name="PROMO")
        claim_coupon(user_id="user_2", coupon_name="PROMO")

        with self.assertRaises(OutOfStock):
            self.claim_with(stale, "user_3")

        self.assertFalse(Claim.objects.filter(user_id="user_3").exists())
        self.coupon.refresh_from_db()
        self.assertEqual(self.coupon.remaining_amount, 0)

    def test_sale_ended_since_the_read_is_rechecked_under_the_lock(self):
        stale = get_claim_eligibility(coupon_name="PROMO", user_id="user_1")
        Coupon.objects.filter(pk=self.coupon.pk).update(ends_at=database_now())

        with self.assertRaises(SaleEnded):
            self.claim_with(stale, "user_1")

        self.assertFalse(Claim.objects.exists())
        self.coupon.refresh_from_db()
        self.assertEqual(self.coupon.remaining_amount, 2)

    def test_coupon_deleted_since_the_read(self):
        stale = get_claim_eligibility(coupon_name="PROMO", user_id="user_1")
        self.coupon.delete()

        with self.assertRaises(CouponNotFound):
            self.claim_with(stale, "user_1")

        self.assertFalse(Claim.objects.exists())


class ConstraintTests(TestCase):
    """The database itself refuses states the services never produce."""

    def setUp(self):
        self.coupon = create_coupon(name="PROMO", amount=3)

    def assert_refused(self, **changes):
        with self.assertRaises(IntegrityError), transaction.atomic():
            Coupon.objects.filter(pk=self.coupon.pk).update(**changes)

    def test_remaining_cannot_go_negative(self):
        self.assert_refused(remaining_amount=-1)

    def test_remaining_cannot_exceed_amount(self):
        self.assert_refused(remaining_amount=4)

    def test_amount_must_be_positive(self):
        self.assert_refused(amount=0, remaining_amount=0)

    def test_one_claim_per_user_per_coupon(self):
        Claim.objects.create(coupon=self.coupon, user_id="user_1")
        with self.assertRaises(IntegrityError), transaction.atomic():
            Claim.objects.create(coupon=self.coupon, user_id="user_1")

    def test_coupon_with_claims_cannot_be_deleted(self):
        claim_coupon(user_id="user_1", coupon_name="PROMO")
        with self.assertRaises(ProtectedError):
            self.coupon.delete()
        self.assertTrue(Coupon.objects.filter(pk=self.coupon.pk).exists())


class CouponDetailSelectorTests(TestCase):
    def test_claimers_in_claim_order(self):
        create_coupon(name="PROMO", amount=5)
        for user_id in ["zed", "amy", "max"]:
            claim_coupon(user_id=user_id, coupon_name="PROMO")

        detail = get_coupon_detail(name="PROMO")

        self.assertEqual((detail.amount, detail.remaining_amount), (5, 2))
        self.assertEqual(detail.claimed_by, ["zed", "amy", "max"])

    def test_coupon_without_claims(self):
        create_coupon(name="PROMO", amount=5)
        self.assertEqual(get_coupon_detail(name="PROMO").claimed_by, [])

    def test_only_this_coupons_claimers(self):
        create_coupon(name="A", amount=5)
        create_coupon(name="B", amount=5)
        claim_coupon(user_id="u1", coupon_name="A")
        claim_coupon(user_id="u2", coupon_name="B")
        self.assertEqual(get_coupon_detail(name="A").claimed_by, ["u1"])

    def test_detail_is_one_query(self):
        create_coupon(name="PROMO", amount=5)
        claim_coupon(user_id="u1", coupon_name="PROMO")
        with self.assertNumQueries(1):
            get_coupon_detail(name="PROMO")

    def test_unknown(self):
        with self.assertRaises(CouponNotFound):
            get_coupon_detail(name="NOPE")


class ClaimStatementTests(TransactionTestCase):
    """What a claim sends, outside any surrounding transaction (as in a request)."""

    def capture_claim(self, user_id):
        with CaptureQueriesContext(connection) as queries:
            with contextlib.suppress(AlreadyClaimed, OutOfStock):
                claim_coupon(user_id=user_id, coupon_name="PROMO")
        return [query["sql"] for query in queries.captured_queries]

    def test_success_is_a_read_then_lock_holders_insert_update_event_commit(self):
        create_coupon(name="PROMO", amount=5)

        sql = self.capture_claim("u1")

        self.assertFalse([s for s in sql if "SAVEPOINT" in s.upper()])
        read, applies, begin, lock, holders, insert, *update_and_event, commit = sql
        # The campaigns app's applies_to (coupons/extensions.py), before the transaction: read per claim until
        # issue 22's coupon states read it once per state load.
        self.assertIn("campaigns_campaigncoupon", applies)
        # The stock's UPDATE and the events' INSERT: one statement on PostgreSQL, two on SQLite.
        self.assertEqual(len(update_and_event), 1 if connection.vendor == "postgresql" else 2)
        update = update_and_event[0]
        if connection.vendor == "postgresql":
            self.assertTrue(update.startswith("WITH taken AS (UPDATE"), update)
            update = update.removeprefix("WITH taken AS (")
        self.assertNotIn("FOR", read)  # the eligibility read takes no lock
        self.assertIn("u.user_id IN", holders)
        self.assertTrue(insert.startswith("INSERT"))
        self.assertTrue(update.startswith("UPDATE"))
        self.assertEqual(commit, "COMMIT")
        if connection.vendor == "sqlite":
            # No row locks on SQLite: the write lock taken at BEGIN serialises claims.
            self.assertEqual(begin, "BEGIN IMMEDIATE")
        else:
            self.assertEqual(begin, "BEGIN")
            self.assertTrue(lock.endswith("FOR NO KEY UPDATE"), lock)

    def test_refusals_are_one_read_without_a_transaction(self):
        create_coupon(name="PROMO", amount=1)
        claim_coupon(user_id="u1", coupon_name="PROMO")

        for user_id in ["u1", "u2"]:  # already claimed, then sold out
            with self.subTest(user_id=user_id):
                sql = self.capture_claim(user_id)
                self.assertEqual(len(sql), 1, sql)
                self.assertTrue(sql[0].startswith("SELECT"))


class RestockCouponTests(TestCase):
    def setUp(self):
        self.coupon = create_coupon(name="PROMO", amount=3)
        claim_coupon(user_id="u1", coupon_name="PROMO")
        claim_coupon(user_id="u2", coupon_name="PROMO")

    def assert_stock(self, amount, remaining_amount):
        self.coupon.refresh_from_db()
        self.assertEqual((self.coupon.amount, self.coupon.remaining_amount), (amount, remaining_amount))

    def test_raising_the_amount_adds_the_difference_to_the_remaining_stock(self):
        coupon = restock_coupon(coupon_name="PROMO", amount=10)

        self.assertEqual((coupon.amount, coupon.remaining_amount), (10, 8))
        self.assert_stock(10, 8)

    def test_a_sold_out_coupon_is_back_on_sale(self):
        claim_coupon(user_id="u3", coupon_name="PROMO")
        restock_coupon(coupon_name="PROMO", amount=4)

        claim_coupon(user_id="u4", coupon_name="PROMO")

        self.assert_stock(4, 0)

    def test_lowering_to_exactly_what_is_claimed_sells_out(self):
        restock_coupon(coupon_name="PROMO", amount=2)

        self.assert_stock(2, 0)
        with self.assertRaises(OutOfStock):
            claim_coupon(user_id="u3", coupon_name="PROMO")

    def test_lowering_below_what_is_claimed_is_refused_and_changes_nothing(self):
        with self.assertRaisesMessage(AmountBelowClaimed, "2 units already claimed"):
            restock_coupon(coupon_name="PROMO", amount=1)

        self.assert_stock(3, 1)

    def test_unknown_coupon(self):
        with self.assertRaises(CouponNotFound):
            restock_coupon(coupon_name="NOPE", amount=5)


def done_or_refused(action, refusal):
    """Run `action`; "refused" if it raised the domain error `refusal`, else "done"."""
    try:
        action()
    except refusal:
        return "refused"
    return "done"


class RestockRaceTests(TransactionTestCase):
    """A restock and claims at the same moment, on real threads: every change lands, none is lost."""

    ROUNDS = 5

    def race(self, name, *, claimers, restock_to):
        claims_before = Claim.objects.filter(coupon__name=name).count()
        calls = [
            lambda user_id=f"user_{i}": done_or_refused(
                lambda: claim_coupon(user_id=user_id, coupon_name=name), OutOfStock
            )
            for i in range(claimers)
        ]
        calls.append(
            lambda: done_or_refused(lambda: restock_coupon(coupon_name=name, amount=restock_to), AmountBelowClaimed)
        )
        outcomes = run_simultaneously(calls)
        coupon = Coupon.objects.get(name=name)
        claims = Claim.objects.filter(coupon=coupon).count()
        # Whichever order the row lock gave them, every success has its row
        # and the stock is exactly what the claims left.
        self.assertEqual(claims_before + outcomes[:-1].count("done"), claims)
        self.assertEqual(coupon.remaining_amount, coupon.amount - claims)
        return outcomes[-1], coupon.amount, claims

    def test_raising_while_the_crowd_claims(self):
        for round_number in range(self.ROUNDS):
            with self.subTest(round=round_number):
                name = f"RAISE RACE {round_number}"
                create_coupon(name=name, amount=2)

                restock, amount, claims = self.race(name, claimers=5, restock_to=4)

                self.assertEqual((restock, amount), ("done", 4))
                self.assertIn(claims, range(2, 5))

    def test_lowering_while_the_crowd_claims_never_undercuts_a_claim(self):
        for round_number in range(self.ROUNDS):
            with self.subTest(round=round_number):
                name = f"LOWER RACE {round_number}"
                create_coupon(name=name, amount=6)
                claim_coupon(user_id="early", coupon_name=name)

                restock, amount, claims = self.race(name, claimers=3, restock_to=3)

                # Lowered before the fourth claim: the stock stops at three.
                # Otherwise four are claimed and the lower amount is refused.
                expected = ("done", 3, 3) if restock == "done" else ("refused", 6, 4)
                self.assertEqual((restock, amount, claims), expected)
