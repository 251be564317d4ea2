"""Claim codes, redemption exactly once, undoing it, and holds that expire back to stock.

Services and the API through Django's test client; the concurrent cases are
in tests/stress/test_redemptions.py, the served app in tests/test_redemptions_http.py.
"""

import itertools
import json
import threading
import time
from datetime import timedelta

from django.db import IntegrityError, connection, connections, transaction
from django.db.models import F
from django.test import Client, TestCase, TransactionTestCase
from django.test.utils import CaptureQueriesContext

from coupons.claim_codes import ALPHABET, BITS, format_code, new_claim_code, normalise_code
from coupons.exceptions import (
    AlreadyRedeemed,
    ClaimExpired,
    CodeNotFound,
    MalformedCode,
    NotRedeemed,
    RedemptionClosed,
)
from coupons.holds import expire_holds, seconds_until_next_deadline
from coupons.models import Claim, ClaimStatus, Coupon, RedemptionUndo
from coupons.selectors import database_now, get_coupon_detail
from coupons.services import claim_coupon, create_coupon, redeem_claim, release_claim, undo_redemption
from tests.helpers import JsonApiAssertions, service_log_lines
from tests.test_access import make_user, token_header
from tests.test_api_keys import api_key_header, new_key

OPERATOR_NUMBERS = itertools.count()
CODE_FORMAT = r"^[0-9A-HJKMNP-TV-Z]{4}(-[0-9A-HJKMNP-TV-Z]{4}){3}$"


def overdue(code, seconds=1):
    """Move the claim's hold deadline `seconds` into the past (by the database's clock)."""
    Claim.objects.filter(code=code).update(expires_at=database_now() - timedelta(seconds=seconds))


def stock_adds_up(test, name):
    """remaining_amount + held + redeemed = amount, from the rows and from the API's detail."""
    coupon = Coupon.objects.get(name=name)
    held = Claim.objects.filter(coupon=coupon, status=ClaimStatus.HELD).count()
    redeemed = Claim.objects.filter(coupon=coupon, status=ClaimStatus.REDEEMED).count()
    test.assertEqual(coupon.remaining_amount + held + redeemed, coupon.amount)
    detail = get_coupon_detail(name=name)
    test.assertEqual((detail.held_amount, detail.redeemed_amount), (held, redeemed))


class ClaimCodeTests(TestCase):
    def test_codes_are_80_random_bits_of_crockford_base32(self):
        codes = {new_claim_code() for _ in range(2000)}
        self.assertEqual(len(codes), 2000)
        self.assertEqual(BITS, 80)
        self.assertEqual(set("".join(codes)), set(ALPHABET))  # every symbol drawn, and no other
        self.assertFalse(set("ILOU") & set(ALPHABET))

    def test_shown_in_groups_of_four(self):
        self.assertEqual(format_code("7K3MQ9TDX2HBR4WN"), "7K3M-Q9TD-X2HB-R4WN")

    def test_read_back_in_any_case_with_or_without_hyphens_and_with_crockfords_aliases(self):
        for typed in [
            "7K3M-Q9TD-X2HB-R4WN",
            "7k3m-q9td-x2hb-r4wn",
            "7K3MQ9TDX2HBR4WN",
            "7k3m q9td x2hb r4wn",
            "7K3M-Q9TD-X2HB-R4WN".replace("-", "--"),
        ]:
            with self.subTest(typed=typed):
                self.assertEqual(normalise_code(typed), "7K3MQ9TDX2HBR4WN")
        self.assertEqual(normalise_code("IiLl-Oo00-1111-0000"), "1111000011110000")

    def test_anything_else_is_malformed(self):
        for text in [
            "",
            "7K3",  # shorter than any code (4, imported ones included)
            "7" * 65,  # longer than any (64)
            "7K3M-Q9TD-X2HB-R4W_",  # neither alphabet
            "7K3M-Q9TD-X2HB-R4W!",
            "7K3M-Q9TD-X2HB-R4W\x00",
            "7K3M-Q9TD-X2HB-R4W\n",
            "７K3M-Q9TD-X2HB-R4WN",  # a full-width digit
            "ßßßß-ßßßß",  # upper-cases to SSSS-SSSS... if case mapping came first
            "\u212a" * 16,  # the Kelvin sign, which lower-cases to k
            "A" * 10_000_000,
        ]:
            with self.subTest(text=text[:40]), self.assertRaises(MalformedCode):
                normalise_code(text)


class RedeemTests(TestCase):
    def setUp(self):
        create_coupon(name="PROMO", amount=3, hold_seconds=600)
        self.claim = claim_coupon(user_id="alice", coupon_name="PROMO")
        self.code = self.claim.code

    def test_a_granted_claim_has_a_code_and_is_held_until_its_deadline(self):
        self.assertRegex(format_code(self.code), CODE_FORMAT)
        claim = Claim.objects.get(code=self.code)
        self.assertEqual(claim.status, ClaimStatus.HELD)
        self.assertEqual(claim.expires_at - claim.created_at, timedelta(seconds=600))

    def test_redeemed_once_with_its_order_then_409_saying_when_and_for_which_order(self):
        redemption = redeem_claim(code=self.code, order_id="order-1")

        self.assertEqual(
            (redemption.coupon_name, redemption.user_id, redemption.status, redemption.order_id),
            ("PROMO", "alice", ClaimStatus.REDEEMED, "order-1"),
        )
        claim = Claim.objects.get(code=self.code)
        self.assertEqual(
            (claim.status, claim.order_id, claim.redeemed_at), ("redeemed", "order-1", redemption.redeemed_at)
        )
        with self.assertRaises(AlreadyRedeemed) as refused:
            redeem_claim(code=self.code, order_id="order-2")
        self.assertEqual((refused.exception.redeemed_at, refused.exception.order_id), (claim.redeemed_at, "order-1"))
        self.assertIn("order-1", str(refused.exception))
        self.assertEqual(Claim.objects.get(code=self.code).order_id, "order-1")
        stock_adds_up(self, "PROMO")
        self.assertEqual(Coupon.objects.get().remaining_amount, 2)  # a redemption keeps its unit

    def test_an_unknown_code_is_not_found(self):
        with self.assertRaises(CodeNotFound):
            redeem_claim(code=new_claim_code())

    def test_a_code_of_another_coupon_is_not_found_for_this_one(self):
        create_coupon(name="OTHER", amount=1)
        with self.assertRaises(CodeNotFound):
            redeem_claim(code=self.code, coupon_name="OTHER")
        self.assertEqual(Claim.objects.get(code=self.code).status, ClaimStatus.HELD)
        redeem_claim(code=self.code, coupon_name="PROMO")

    def test_a_released_claim_is_gone(self):
        release_claim(coupon_name="PROMO", user_id="alice", released_by="operator")
        with self.assertRaises(ClaimExpired):
            redeem_claim(code=self.code)
        self.assertEqual(Claim.objects.get(code=self.code).status, ClaimStatus.RELEASED)

    def test_past_its_deadline_a_claim_is_gone_even_before_the_worker_returns_its_unit(self):
        overdue(self.code)
        with self.assertRaises(ClaimExpired):
            redeem_claim(code=self.code)
        self.assertEqual(Claim.objects.get(code=self.code).status, ClaimStatus.HELD)

        self.assertEqual(expire_holds(), 1)
        with self.assertRaises(ClaimExpired):
            redeem_claim(code=self.code)
        stock_adds_up(self, "PROMO")

    def test_redemption_closes_at_redeem_until(self):
        Coupon.objects.update(redeem_until=database_now() - timedelta(seconds=1))
        with self.assertRaises(RedemptionClosed):
            redeem_claim(code=self.code)
        Coupon.objects.update(redeem_until=database_now() + timedelta(hours=1))
        redeem_claim(code=self.code)

    def test_a_redemption_locks_its_claim_then_numbers_its_event_and_leaves_the_stock_alone(self):
        with CaptureQueriesContext(connection) as queries:
            redeem_claim(code=self.code)
        statements = [q["sql"] for q in queries if "SAVEPOINT" not in q["sql"]]
        lock, update, *event = statements
        if connection.vendor == "postgresql":
            self.assertTrue(lock.endswith('FOR NO KEY UPDATE OF "coupons_claim"'), lock)
        self.assertTrue(update.startswith('UPDATE "coupons_claim"'))
        # Last, the coupon's event counter (which takes its row lock until the commit) and the event: one statement
        # on PostgreSQL (a writable CTE), two on SQLite.
        self.assertEqual(len(event), 1 if connection.vendor == "postgresql" else 2)
        self.assertIn("UPDATE coupons_coupon SET last_event_sequence = last_event_sequence + 1", event[0])
        self.assertIn("INSERT INTO coupons_event", event[-1])
        self.assertFalse(any("remaining_amount" in sql for sql in statements))


class UndoTests(TestCase):
    def setUp(self):
        create_coupon(name="PROMO", amount=3, hold_seconds=600)
        self.code = claim_coupon(user_id="alice", coupon_name="PROMO").code

    def test_undone_the_claim_is_held_again_and_the_redemption_is_audited(self):
        redemption = redeem_claim(code=self.code, order_id="order-1")

        undone = undo_redemption(code=self.code, undone_by="shop", reason="order cancelled")

        claim = Claim.objects.get(code=self.code)
        self.assertEqual((claim.status, claim.redeemed_at, claim.order_id), (ClaimStatus.HELD, None, ""))
        self.assertEqual(
            (undone.claim_id, undone.order_id, undone.redeemed_at, undone.undone_by, undone.reason),
            (claim.id, "order-1", redemption.redeemed_at, "shop", "order cancelled"),
        )
        self.assertEqual(Coupon.objects.get().remaining_amount, 2)  # not back to stock
        # And it can be redeemed again, for another order.
        self.assertEqual(redeem_claim(code=self.code, order_id="order-2").order_id, "order-2")

    def test_nothing_to_undo(self):
        with self.assertRaises(NotRedeemed):
            undo_redemption(code=self.code, undone_by="shop")
        with self.assertRaises(CodeNotFound):
            undo_redemption(code=new_claim_code(), undone_by="shop")
        redeem_claim(code=self.code)
        release_claim(coupon_name="PROMO", user_id="alice", released_by="operator")
        with self.assertRaises(ClaimExpired):
            undo_redemption(code=self.code, undone_by="shop")
        self.assertFalse(RedemptionUndo.objects.exists())

    def test_undone_after_its_deadline_the_claim_expires_at_the_next_pass(self):
        redeem_claim(code=self.code)
        # The deadline just after the redemption (the database refuses one before it), and now past.
        Claim.objects.filter(code=self.code).update(expires_at=F("redeemed_at") + timedelta(milliseconds=1))
        time.sleep(0.01)
        undo_redemption(code=self.code, undone_by="shop")

        self.assertEqual(expire_holds(), 1)
        self.assertEqual(Claim.objects.get(code=self.code).status, ClaimStatus.EXPIRED)
        stock_adds_up(self, "PROMO")


class ExpiryTests(TestCase):
    def setUp(self):
        create_coupon(name="PROMO", amount=3, hold_seconds=60)
        self.codes = [claim_coupon(user_id=user, coupon_name="PROMO").code for user in ["ann", "bob", "cat"]]

    def test_only_holds_past_their_deadline_expire_each_returning_its_unit_once(self):
        overdue(self.codes[0])
        overdue(self.codes[1])
        redeem_claim(code=self.codes[2])

        self.assertEqual(expire_holds(), 2)
        self.assertEqual(expire_holds(), 0)  # a second pass finds nothing

        statuses = dict(Claim.objects.values_list("user_id", "status"))
        self.assertEqual(statuses, {"ann": "expired", "bob": "expired", "cat": "redeemed"})
        self.assertEqual(Coupon.objects.get(name="PROMO").remaining_amount, 2)
        stock_adds_up(self, "PROMO")
        for claim in Claim.objects.filter(status=ClaimStatus.EXPIRED):
            self.assertGreaterEqual(claim.returned_at, claim.expires_at)

    def test_an_expired_user_may_claim_again_with_a_new_code(self):
        overdue(self.codes[0])
        expire_holds()

        again = claim_coupon(user_id="ann", coupon_name="PROMO")

        self.assertNotEqual(again.code, self.codes[0])
        self.assertEqual(
            sorted(Claim.objects.filter(user_id="ann").values_list("status", flat=True)), ["expired", "held"]
        )
        self.assertEqual(get_coupon_detail(name="PROMO").claimed_by, ["bob", "cat", "ann"])

    def test_a_coupon_without_hold_seconds_never_expires(self):
        create_coupon(name="FOREVER", amount=1)
        claim = claim_coupon(user_id="ann", coupon_name="FOREVER")
        self.assertIsNone(claim.expires_at)
        self.assertEqual(expire_holds(), 0)

    def test_the_next_deadline_is_read_from_the_database_clock(self):
        self.assertAlmostEqual(seconds_until_next_deadline(), 60, delta=5)
        overdue(self.codes[1], seconds=3)
        self.assertAlmostEqual(seconds_until_next_deadline(), -3, delta=1)
        redeem_claim(code=self.codes[0])
        Claim.objects.filter(code__in=self.codes[1:]).delete()
        self.assertIsNone(seconds_until_next_deadline())

    def test_the_worker_command_runs_one_pass(self):
        from io import StringIO

        from django.core.management import call_command

        overdue(self.codes[0])
        out = StringIO()
        call_command("expire_holds", "--once", stdout=out)
        self.assertEqual(out.getvalue().strip(), "1 hold(s) expired.")


class ExpirySkipsLockedClaimsTests(TransactionTestCase):
    """A pass never waits behind a redemption holding its claim's row lock (while it holds the coupon's)."""

    def test_a_claim_locked_by_a_redemption_is_skipped_then_expired_by_the_next_pass(self):
        if connection.vendor != "postgresql":
            self.skipTest("row locks: SQLite locks the whole database")
        create_coupon(name="PROMO", amount=2, hold_seconds=60)
        locked, free = (claim_coupon(user_id=user, coupon_name="PROMO").code for user in ["ann", "bob"])
        overdue(locked)
        overdue(free)
        other = connections.create_connection("default")
        try:
            with other.cursor() as cursor:
                cursor.execute("BEGIN")
                cursor.execute("SELECT 1 FROM coupons_claim WHERE code = %s FOR NO KEY UPDATE", [locked])
                result = {}

                def one_pass():
                    try:
                        result["expired"] = expire_holds()
                    finally:
                        connection.close()  # the thread's own connection

                worker = threading.Thread(target=one_pass)
                worker.start()
                worker.join(timeout=10)
                self.assertFalse(worker.is_alive(), "the pass waited for the locked claim")
                cursor.execute("ROLLBACK")
        finally:
            other.close()
        self.assertEqual(result["expired"], 1)
        self.assertEqual(Claim.objects.get(code=free).status, ClaimStatus.EXPIRED)
        self.assertEqual(Claim.objects.get(code=locked).status, ClaimStatus.HELD)
        self.assertEqual(expire_holds(), 1)
        self.assertEqual(Coupon.objects.get(name="PROMO").remaining_amount, 2)


class LifecycleConstraintTests(TestCase):
    """The database itself refuses what the services never do."""

    def setUp(self):
        self.coupon = create_coupon(name="PROMO", amount=5, hold_seconds=60)
        self.claim = claim_coupon(user_id="ann", coupon_name="PROMO")

    def assert_refused(self, **changes):
        with self.assertRaises(IntegrityError), transaction.atomic():
            Claim.objects.filter(pk=self.claim.pk).update(**changes)

    def test_refused_states(self):
        now = database_now()
        deadline = Claim.objects.get(pk=self.claim.pk).expires_at
        cases = {
            "an unknown status": {"status": "lost"},
            "a code of the wrong length": {"code": "ABC"},
            "redeemed without a time": {"status": "redeemed"},
            "held with a redemption": {"redeemed_at": now},
            "expired before its deadline": {"status": "expired", "returned_at": deadline - timedelta(seconds=1)},
            "expired without returning its unit": {"status": "expired"},
            "redeemed at its deadline": {"status": "redeemed", "redeemed_at": deadline},
            "released without returning its unit": {"status": "released"},
            "held with its unit returned": {"returned_at": now},
        }
        for label, changes in cases.items():
            with self.subTest(label):
                self.assert_refused(**changes)

    def test_codes_are_unique(self):
        other = claim_coupon(user_id="bob", coupon_name="PROMO")
        with self.assertRaises(IntegrityError), transaction.atomic():
            Claim.objects.filter(pk=other.pk).update(code=self.claim.code)

    def test_one_live_claim_per_user_and_any_number_of_ended_ones(self):
        now = database_now()
        with self.assertRaises(IntegrityError), transaction.atomic():
            Claim.objects.create(coupon=self.coupon, user_id="ann", status=ClaimStatus.REDEEMED, redeemed_at=now)
        Claim.objects.create(coupon=self.coupon, user_id="ann", status=ClaimStatus.RELEASED, returned_at=now)
        Claim.objects.create(coupon=self.coupon, user_id="ann", status=ClaimStatus.RELEASED, returned_at=now)
        Claim.objects.create(
            coupon=self.coupon, user_id="ann", status=ClaimStatus.EXPIRED, expires_at=now, returned_at=now
        )
        self.assertEqual(Claim.objects.filter(user_id="ann").count(), 4)


class RedemptionApiTests(JsonApiAssertions, TestCase):
    def setUp(self):
        create_coupon(name="PROMO", amount=3, hold_seconds=600)
        self.code = claim_coupon(user_id="alice", coupon_name="PROMO").code

    def redeem(self, body, **extra):
        return self.post_json("/api/redemptions", body, **extra)

    def assert_unchanged(self):
        claim = Claim.objects.get(code=self.code)
        self.assertEqual((claim.status, claim.redeemed_at, claim.order_id), (ClaimStatus.HELD, None, ""))
        self.assertEqual(Coupon.objects.get(name="PROMO").remaining_amount, 2)

    def test_redeemed_then_409_with_when_and_which_order(self):
        response = self.redeem({"code": format_code(self.code), "order_id": "order-1"})

        self.assertEqual(response.status_code, 201, response.content)
        body = response.json()
        claim = Claim.objects.get(code=self.code)
        self.assertEqual(
            body,
            {
                "coupon_name": "PROMO",
                "user_id": "alice",
                "code": format_code(self.code),
                "status": "redeemed",
                "order_id": "order-1",
                "redeemed_at": body["redeemed_at"],
                "claimed_at": body["claimed_at"],
                "expires_at": body["expires_at"],
            },
        )
        self.assertEqual(body["redeemed_at"], claim.redeemed_at.isoformat().replace("+00:00", "Z"))

        again = self.redeem({"code": self.code, "order_id": "order-2"})
        self.assertEqual(again.status_code, 409)
        self.assertEqual(
            again.json(),
            {
                "error": f"This code was redeemed at {body['redeemed_at']} for order order-1.",
                "code": "already_redeemed",
                "redeemed_at": body["redeemed_at"],
                "order_id": "order-1",
            },
        )

    def test_without_an_order_the_order_is_null(self):
        response = self.redeem({"code": self.code, "order_id": None})
        self.assertEqual(response.json()["order_id"], None)
        self.assertIsNone(self.redeem({"code": self.code}).json()["order_id"])

    def test_lowercase_and_hyphenless_forms_are_the_same_code(self):
        for typed in [format_code(self.code).lower(), self.code.lower(), f"  {self.code}  ".strip()]:
            with self.subTest(typed=typed):
                self.assertEqual(self.client.get(f"/api/redemptions/{typed}").json()["code"], format_code(self.code))
        self.assertEqual(self.redeem({"code": self.code.lower()}).status_code, 201)

    def test_bad_input_is_a_clear_4xx_and_changes_nothing(self):
        other = create_coupon(name="OTHER", amount=1)
        other_code = claim_coupon(user_id="bob", coupon_name=other.name).code
        cases = [
            ({"code": "ABC"}, 400, "invalid"),  # length: shorter than any code, imported ones included
            ({"code": "A" * 65}, 400, "invalid"),
            ({"code": self.code[:-1] + "_"}, 400, "invalid"),  # alphabet
            # Another length, or U, could be an imported code (coupons/claim_codes.py): looked up, not found.
            ({"code": self.code[:-1]}, 404, "code_not_found"),
            ({"code": self.code + "A"}, 404, "code_not_found"),
            ({"code": self.code[:-1] + "U"}, 404, "code_not_found"),
            ({"code": self.code[:-1] + "\x00"}, 400, "invalid"),  # NUL
            ({"code": "🎉" * 16}, 400, "invalid"),
            ({"code": 1234567890123456}, 400, "invalid"),
            ({"code": None}, 400, "invalid"),
            ({}, 400, "invalid"),
            ({"code": self.code, "order_id": ""}, 400, "invalid"),
            ({"code": self.code, "order_id": "x" * 256}, 400, "invalid"),
            ({"code": self.code, "order_id": "a\x00b"}, 400, "invalid"),
            ({"code": self.code, "order_id": 7}, 400, "invalid"),
            ({"code": self.code, "coupon_name": "OTHER"}, 404, "code_not_found"),  # a code of another coupon
            ({"code": other_code, "coupon_name": "PROMO"}, 404, "code_not_found"),
            ({"code": new_claim_code()}, 404, "code_not_found"),
        ]
        for body, status, code in cases:
            with self.subTest(body=json.dumps(body)[:60]):
                self.assert_error(self.redeem(body), status, code)
                self.assert_unchanged()
        self.assertEqual(Claim.objects.get(code=other_code).status, ClaimStatus.HELD)
        self.assert_error(self.post_raw("/api/redemptions", b'{"code": "' + b"A" * 10_000_000 + b'"}'), 413)
        self.assert_error(self.post_raw("/api/redemptions", b"{"), 400, "invalid")
        self.assert_error(self.post_raw("/api/redemptions", self.code.encode(), content_type="text/plain"), 415)
        self.assert_unchanged()

    def test_malformed_codes_in_the_path(self):
        for path in [self.code[:-1] + "_", "A" * 5000, self.code + "/x", "%F0%9F%8E%89", "ABC"]:
            with self.subTest(path=path[:30]):
                self.assert_error(self.client.get(f"/api/redemptions/{path}"), 400, "invalid")
                self.assert_error(self.client.delete(f"/api/redemptions/{path}", **self.staff()), 400, "invalid")
        self.assert_error(self.client.get(f"/api/redemptions/{self.code[:-1]}%00"), 404, "not_found")  # NUL guard
        self.assert_error(self.client.get(f"/api/redemptions/{new_claim_code()}"), 404, "code_not_found")
        self.assert_unchanged()

    def test_gone_and_closed(self):
        overdue(self.code)
        self.assert_error(self.redeem({"code": self.code}), 410, "claim_expired")
        Claim.objects.filter(code=self.code).update(expires_at=database_now() + timedelta(hours=1))
        Coupon.objects.update(redeem_until=database_now())
        self.assert_error(self.redeem({"code": self.code}), 403, "redemption_closed")
        self.assert_unchanged()

    def test_the_state_reads_back(self):
        state = self.client.get(f"/api/redemptions/{self.code}").json()
        self.assertEqual((state["status"], state["order_id"], state["redeemed_at"]), ("held", None, None))
        self.redeem({"code": self.code, "order_id": "o"})
        state = self.client.get(f"/api/redemptions/{self.code}").json()
        self.assertEqual((state["status"], state["order_id"]), ("redeemed", "o"))

    def staff(self):
        return token_header(make_user(f"operator{next(OPERATOR_NUMBERS)}", is_staff=True))

    def test_undo_is_never_anonymous(self):
        self.redeem({"code": self.code})
        for label, extra, status, code in [
            ("no credentials", {}, 401, "unauthorized"),
            ("a bogus token", {"HTTP_AUTHORIZATION": "Token not-a-token"}, 401, "unauthorized"),
            ("non-staff", token_header(make_user("shopper")), 403, "forbidden"),
            ("a key without redeem", api_key_header(new_key("claim", "read", "release")), 403, "forbidden"),
        ]:
            with self.subTest(label):
                self.assert_error(self.client.delete(f"/api/redemptions/{self.code}", **extra), status, code)
        self.assertEqual(Claim.objects.get(code=self.code).status, ClaimStatus.REDEEMED)

        response = self.client.delete(
            f"/api/redemptions/{format_code(self.code).lower()}",
            data=json.dumps({"reason": "order cancelled"}),
            content_type="application/json",
            **api_key_header(new_key("redeem")),
        )
        self.assertEqual(response.status_code, 204, response.content)
        self.assertEqual(Claim.objects.get(code=self.code).status, ClaimStatus.HELD)
        undone = RedemptionUndo.objects.get()
        self.assertTrue(undone.undone_by.startswith("API key "))
        self.assertEqual(undone.reason, "order cancelled")
        self.assert_error(self.client.delete(f"/api/redemptions/{self.code}", **self.staff()), 409, "not_redeemed")

    def test_undo_by_an_admin_session_needs_its_csrf_token(self):
        self.redeem({"code": self.code})
        self.client = Client(enforce_csrf_checks=True)
        self.client.force_login(make_user("admin-operator", is_staff=True))
        self.assert_error(self.client.delete(f"/api/redemptions/{self.code}"), 403, "forbidden")
        self.client.get("/admin/")
        response = self.client.delete(
            f"/api/redemptions/{self.code}", HTTP_X_CSRFTOKEN=self.client.cookies["csrftoken"].value
        )
        self.assertEqual(response.status_code, 204)
        self.assertEqual(RedemptionUndo.objects.get().undone_by, "admin-operator")

    def test_with_api_keys_required_the_redeem_scope_opens_the_redemption_endpoints(self):
        with self.settings(API_KEYS_REQUIRED=True):
            self.assert_error(self.redeem({"code": self.code}), 401, "unauthorized")
            self.assert_error(self.redeem({"code": self.code}, **api_key_header(new_key("claim", "read"))), 403)
            self.assert_error(self.client.get(f"/api/redemptions/{self.code}"), 401, "unauthorized")
            key = api_key_header(new_key("redeem"))
            self.assertEqual(self.client.get(f"/api/redemptions/{self.code}", **key).status_code, 200)
            self.assertEqual(self.redeem({"code": self.code}, **key).status_code, 201)

    def test_a_users_claims_carry_codes_and_statuses_and_can_be_listed_by_status(self):
        create_coupon(name="SECOND", amount=1)
        second = claim_coupon(user_id="alice", coupon_name="SECOND").code
        release_claim(coupon_name="SECOND", user_id="alice", released_by="operator")
        redeem_claim(code=self.code, order_id="o")

        live = self.client.get("/api/users/alice/claims").json()["claims"]
        self.assertEqual(
            [(c["coupon_name"], c["status"], c["code"]) for c in live], [("PROMO", "redeemed", format_code(self.code))]
        )
        self.assertIsNotNone(live[0]["redeemed_at"])
        every = self.client.get("/api/users/alice/claims?status=held&status=redeemed&status=released").json()["claims"]
        self.assertEqual(
            [(c["coupon_name"], c["status"], c["code"]) for c in every],
            [
                ("SECOND", "released", format_code(second)),
                ("PROMO", "redeemed", format_code(self.code)),
            ],
        )
        self.assert_error(self.client.get("/api/users/alice/claims?status=lost"), 400, "invalid")


class CodesNeverLoggedTests(TestCase):
    """Paths carrying a code are logged with [code] in its place: the request log's and Django's own lines."""

    def test_no_code_in_any_log_line(self):
        create_coupon(name="PROMO", amount=2)
        code = claim_coupon(user_id="alice", coupon_name="PROMO").code
        staff = token_header(make_user("operator", is_staff=True))
        with service_log_lines() as output:
            self.client.post("/api/redemptions", {"code": code}, content_type="application/json")
            self.client.get(f"/api/redemptions/{format_code(code).lower()}")
            self.client.delete(f"/api/redemptions/{code}", **staff)
            self.client.delete(f"/api/redemptions/{code}", **staff)  # 409
            self.client.get(f"/api/redemptions/{new_claim_code()}")  # 404
            self.client.get(f"/api/redemptions/{code[:-1]}")  # 400

        lines = output.getvalue().splitlines()
        requests = [line for line in lines if "/api/redemptions/[code]" in line]
        self.assertGreaterEqual(len(requests), 5, lines)
        for line in lines:
            flat = line.upper().replace("-", "")
            self.assertNotIn(code, flat)
            self.assertNotIn(code[:-1], flat)
