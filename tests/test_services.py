import contextlib
from unittest import mock

from django.db import IntegrityError, connection, transaction
from django.db.models import ProtectedError
from django.test import TestCase, TransactionTestCase
from django.test.utils import CaptureQueriesContext

from coupons import services
from coupons.exceptions import AlreadyClaimed, CouponAlreadyExists, CouponNotFound, OutOfStock
from coupons.models import Claim, Coupon
from coupons.selectors import get_claim_eligibility, get_coupon_detail
from coupons.services import claim_coupon, create_coupon


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

    def test_duplicate_is_stopped_by_the_unique_constraint(self):
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

    def test_success_locks_the_row_only_for_the_decrement(self):
        create_coupon(name="PROMO", amount=5)

        sql = self.capture_claim("u1")

        self.assertFalse([s for s in sql if "SAVEPOINT" in s.upper()])
        read, begin, insert, lock, update, commit = sql
        self.assertNotIn("FOR", read)  # the eligibility read takes no lock
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
