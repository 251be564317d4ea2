"""Imports of codes under load, on real threads with real connections (PostgreSQL and SQLite).

- Many codes in one import, streamed: Python's allocations stay far below what the codes would take held
  (IMPORT_TEST_CODES, 200,000 by default: CI's time; `make test-import` runs the issue's 1,000,000).
- Two imports of overlapping codes at once: one wins every code it had, the other is refused whole.
- Claims of the coupon during an import of more of its codes: granted meanwhile, each with its own code.
"""

import itertools
import os
import threading
import time
import tracemalloc
from collections import Counter
from unittest import mock, skipUnless

import rest_framework.views  # noqa: F401 - first: coupons.api.errors is loaded through DRF's settings
from django.contrib import admin
from django.db import connection, transaction
from django.test import TransactionTestCase

from coupons import imported_codes
from coupons.admin import CouponAdmin
from coupons.imported_codes import CSV
from coupons.models import LIVE_STATUSES, Claim, Coupon, ImportedCode
from coupons.services import claim_coupon, create_coupon, import_codes
from tests.stress.base import OneStressClassAtATime, run_simultaneously
from tests.stress.test_campaigns import outcome_of

CODES = int(os.environ.get("IMPORT_TEST_CODES", "200000"))
CLAIMERS = 30


class NumberedCodes:
    """A CSV stream of `count` codes, made as it is read: nothing held."""

    def __init__(self, first, count, prefix="CODE"):
        self._lines = (f"{prefix}-{number:09d}\n".encode() for number in range(first, first + count))

    def read(self, size):
        return b"".join(itertools.islice(self._lines, max(1, size // 15)))


def numbered_rows(first, count, prefix="CODE"):
    return {"stream": NumberedCodes(first, count, prefix), "content_format": CSV}


class ImportStressTests(OneStressClassAtATime, TransactionTestCase):
    def test_many_codes_streamed(self):
        create_coupon(name="MANY", amount=1)

        tracemalloc.start()
        start = time.perf_counter()
        try:
            done = import_codes(coupon_name="MANY", **numbered_rows(0, CODES))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        elapsed = time.perf_counter() - start

        self.assertEqual((done.imported, done.amount, done.remaining_amount), (CODES, CODES, CODES))
        self.assertEqual(ImportedCode.objects.count(), CODES)
        # The codes held as Python strings alone would be ~60 bytes each (60 MB for a million); streamed, a batch
        # at a time, the peak does not grow with them (2.6 MB for a million, measured).
        self.assertLess(peak, max(5_000_000, CODES * 60 // 4), f"peak {peak / 1e6:.1f} MB")
        print(
            f"\n{connection.vendor}: {CODES} codes imported in {elapsed:.1f} s = {CODES / elapsed:,.0f} codes/s"
            f" (under tracemalloc, which slows Python's part), peak {peak / 1e6:.1f} MB"
        )
        self.assertEqual(claim_coupon(user_id="ann", coupon_name="MANY").code, "CODE000000000")

    def test_two_overlapping_imports_at_once_one_wins_each_code(self):
        for round_number in range(3):
            with self.subTest(round=round_number):
                a, b = f"A{round_number}", f"B{round_number}"
                create_coupon(name=a, amount=1)
                create_coupon(name=b, amount=1)
                prefix = f"R{round_number}"

                def importing(name, first, prefix=prefix):
                    return lambda: outcome_of(
                        lambda: import_codes(coupon_name=name, **numbered_rows(first, 20_000, prefix))
                    )

                outcomes = run_simultaneously([importing(a, 0), importing(b, 10_000)])

                self.assertEqual(Counter(outcomes), {"ok": 1, "import_rejected": 1})
                winner = a if outcomes[0] == "ok" else b
                self.assertEqual(ImportedCode.objects.filter(code__startswith=prefix).count(), 20_000)
                self.assertEqual(
                    set(ImportedCode.objects.filter(code__startswith=prefix).values_list("coupon__name", flat=True)),
                    {winner},
                )
                loser = Coupon.objects.get(name=b if winner == a else a)
                self.assertEqual((loser.amount, loser.imported_codes), (1, False))

    def test_claims_go_on_during_an_import_each_with_its_own_code(self):
        create_coupon(name="LIVE", amount=1)
        import_codes(coupon_name="LIVE", **numbered_rows(0, 100, "FIRST"))
        claimers = [f"user_{i}" for i in range(CLAIMERS)]

        def claim(user):
            return lambda: outcome_of(lambda: claim_coupon(user_id=user, coupon_name="LIVE"))

        outcomes = run_simultaneously(
            [lambda: outcome_of(lambda: import_codes(coupon_name="LIVE", **numbered_rows(0, 200_000, "MORE")))]
            + [claim(user) for user in claimers]
        )

        self.assertEqual(outcomes[0], "ok")
        self.assertEqual(Counter(outcomes[1:]), {"ok": CLAIMERS})
        codes = list(Claim.objects.filter(coupon__name="LIVE").values_list("code", flat=True))
        self.assertEqual(len(set(codes)), CLAIMERS)
        self.assertEqual(ImportedCode.objects.filter(code__in=codes, handed_out=True).count(), CLAIMERS)
        coupon = Coupon.objects.get(name="LIVE")
        live = Claim.objects.filter(coupon=coupon, status__in=LIVE_STATUSES).count()
        unused = ImportedCode.objects.filter(coupon=coupon, handed_out=False).count()
        self.assertEqual((coupon.amount, coupon.remaining_amount), (live + unused, unused))

    @skipUnless(connection.vendor == "postgresql", "SQLite: one writer at a time, nothing can run beside an import")
    def test_a_deletion_waits_for_a_running_import_then_takes_its_codes(self):
        # The import's FOR KEY SHARE on the coupon row and the admin's deletion locking it first: the deletion waits,
        # then takes the codes (sooner, its cascade would miss them, and the coupon's DELETE break their foreign key).
        create_coupon(name="DOOMED", amount=1)
        inserted, deleting = threading.Event(), threading.Event()
        insert_staged = imported_codes.insert_staged

        def insert_then_linger(**kwargs):
            done = insert_staged(**kwargs)
            inserted.set()
            deleting.wait(10)
            time.sleep(0.5)  # the deletion is under way, waiting for the row
            return done

        def delete():
            inserted.wait(10)
            deleting.set()
            with transaction.atomic():
                CouponAdmin(Coupon, admin.site).delete_model(None, Coupon.objects.get(name="DOOMED"))
            return "deleted"

        with mock.patch.object(imported_codes, "insert_staged", insert_then_linger):
            outcomes = run_simultaneously(
                [lambda: outcome_of(lambda: import_codes(coupon_name="DOOMED", **numbered_rows(0, 1000))), delete]
            )

        self.assertEqual(outcomes, ["ok", "deleted"])
        self.assertFalse(Coupon.objects.filter(name="DOOMED").exists())
        self.assertEqual(ImportedCode.objects.count(), 0, "no code outlives its coupon")
