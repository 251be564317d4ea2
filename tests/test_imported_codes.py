"""Imported codes (coupons/imported_codes.py): the import, all or nothing, and claims handing them out."""

import io
import json

from django.contrib import admin
from django.test import TestCase, TransactionTestCase
from rest_framework.test import APIClient

from coupons import imported_codes
from coupons.admin import CouponAdmin
from coupons.claim_codes import format_code, normalise_code
from coupons.exceptions import ImportRejected, MalformedCode, OutOfStock
from coupons.imported_codes import CSV, JSON_LINES, MALFORMED
from coupons.models import Claim, Coupon, Event, ImportedCode
from coupons.services import claim_coupon, create_coupon, import_codes, redeem_claim, release_claim


def csv_stream(text):
    return {"stream": io.BytesIO(text.encode()), "content_format": CSV}


class ImportCodesApiTests(TestCase):
    def setUp(self):
        self.client = APIClient()
        create_coupon(name="POS", amount=1)

    def upload(self, body, content_type="text/csv", name="POS", query=""):
        return self.client.generic("POST", f"/api/coupons/{name}/codes{query}", body, content_type=content_type)

    def test_a_csv_import_sets_the_stock_and_claims_get_the_codes_in_order(self):
        answer = self.upload("code\nsummer-0001\nSUMMER-0002\nsummer 0003\n")

        self.assertEqual(answer.status_code, 201, answer.content)
        self.assertEqual(
            answer.json(),
            {"coupon_name": "POS", "imported": 3, "unused_codes": 3, "amount": 3, "remaining_amount": 3},
        )
        codes = [claim_coupon(user_id=user, coupon_name="POS").code for user in ("ann", "bob", "cat")]
        self.assertEqual(codes, ["SUMMER0001", "SUMMER0002", "SUMMER0003"])
        with self.assertRaises(OutOfStock):
            claim_coupon(user_id="dan", coupon_name="POS")
        self.assertEqual(ImportedCode.objects.filter(handed_out=False).count(), 0)
        restocked = Event.objects.get(type="coupon.restocked")
        self.assertEqual(restocked.data, {"amount_before": 1, "amount": 3, "remaining_amount": 3})

    def test_json_lines_and_a_lower_amount(self):
        body = "\n".join([json.dumps({"code": "ABCD-1234"}), json.dumps("efgh5678"), json.dumps({"code": "ZZZZ9"})])

        answer = self.upload(body, content_type="application/x-ndjson", query="?amount=2")

        self.assertEqual(answer.status_code, 201, answer.content)
        self.assertEqual((answer.json()["amount"], answer.json()["unused_codes"]), (2, 3))

    def test_refused_rows_are_reported_by_line_and_nothing_is_kept(self):
        create_coupon(name="OTHER", amount=1)
        self.upload("TAKEN-01\n", name="OTHER")

        answer = self.upload("code\nGOOD-0001\nab\nGOOD-0001\nTAKEN-01\nno-ünicode\nHELLOWORLD123456\n")

        self.assertEqual(answer.status_code, 400)
        body = answer.json()
        self.assertEqual(body["code"], "import_rejected")
        self.assertEqual(
            [(error["line"], error["reason"]) for error in body["errors"]],
            [(3, "malformed"), (4, "duplicate"), (5, "in_use"), (6, "malformed"), (7, "malformed")],
        )
        self.assertEqual(body["error_count"], 5)
        self.assertEqual(list(ImportedCode.objects.values_list("code", flat=True)), ["TAKEN01"])
        coupon = Coupon.objects.get(name="POS")
        self.assertEqual((coupon.amount, coupon.imported_codes), (1, False))

    def test_a_code_a_claim_holds_already_is_in_use(self):
        taken = claim_coupon(user_id="ann", coupon_name="POS").code

        answer = self.upload(f"{format_code(taken)}\n")

        self.assertEqual(answer.json()["errors"], [{"line": 1, "reason": "in_use", "code": taken}])

    def test_bad_requests_change_nothing(self):
        self.assertEqual(self.upload("A-1\n", content_type="application/json").status_code, 415)
        self.assertEqual(self.upload("ABCD1\n", name="NOPE").json()["code"], "not_found")
        self.assertEqual(self.upload("").json()["code"], "import_rejected")
        self.assertEqual(self.upload("ABCD1\n", query="?amount=0").json()["code"], "invalid")
        self.assertEqual(self.upload("ABCD1\n", query="?amount=5").json()["code"], "import_rejected")
        self.assertFalse(ImportedCode.objects.exists())

    def test_imported_codes_are_redeemed_however_they_are_typed(self):
        self.upload("Summer-0001\n")
        claim_coupon(user_id="ann", coupon_name="POS")

        answer = self.client.post("/api/redemptions", {"code": "summer 0001", "order_id": "o1"}, format="json")

        self.assertEqual(answer.status_code, 201, answer.content)
        self.assertEqual(answer.json()["code"], "SUMMER0001")

    def test_a_released_claims_code_is_never_handed_out_again(self):
        self.upload("CODE-0001\nCODE-0002\n")
        first = claim_coupon(user_id="ann", coupon_name="POS").code
        release_claim(coupon_name="POS", user_id="ann", released_by="op")

        again = claim_coupon(user_id="ann", coupon_name="POS").code
        self.assertNotEqual(first, again)
        with self.assertRaises(OutOfStock):  # a unit back in stock, but no code left to give
            claim_coupon(user_id="bob", coupon_name="POS")


class RowRulesTests(TestCase):
    """PostgreSQL reads an import's rows in SQL, SQLite in Python (coupons/imported_codes.py): the same rows, the
    same codes, the same refusals by line, whichever runs."""

    CSV_LINES = [
        "code",
        '"QUOTED-0001",more',
        '"QU""OTE-02"',
        '"OPEN-0003',
        '"CLOSED"-0004',
        "PLAIN-0005,second,third",
        "TAB\tINSIDE",
        "BACK\\SLASH",
        "CRLF-0006\r",
        "ÄBCD-0007",
        "",
        "HELLOWORLD123456",
        "hello-w0r1d-1234-5678",
        "ab",
        "A" * 65,
        " SPACED 0008 ",
        "\\N",
    ]
    JSON_LINES = ['{"code": "json-0001", "note": "x"}', '"json-0002"', '{"code": 3}', "[1]", "not json", '"a\\nb-0003"']

    def assert_same_as_python(self, body, content_format):
        expected = list(imported_codes._rows(io.BytesIO(body), content_format))
        malformed = [(line, MALFORMED, text) for line, text, code in expected if code is None]
        create_coupon(name=f"RULES-{content_format}", amount=1)

        with self.assertRaises(ImportRejected) as refused:
            import_codes(coupon_name=f"RULES-{content_format}", stream=io.BytesIO(body), content_format=content_format)

        errors = refused.exception.errors
        self.assertEqual([(e["line"], e["reason"], e["code"]) for e in errors], malformed)
        good = b"\n".join(
            line for number, line in enumerate(body.split(b"\n"), 1) if number not in {m[0] for m in malformed}
        )
        self.assertEqual(
            import_codes(
                coupon_name=f"RULES-{content_format}", stream=io.BytesIO(good), content_format=content_format
            ).imported,
            len(expected) - len(malformed),
        )
        kept = list(ImportedCode.objects.order_by("id").values_list("code", flat=True))
        self.assertEqual(kept, [code for _, _, code in expected if code is not None])

    def test_csv(self):
        self.assert_same_as_python("\n".join(self.CSV_LINES).encode() + b"\nNOT-UTF8-\xff\n", CSV)

    def test_json_lines(self):
        self.assert_same_as_python("\n".join(self.JSON_LINES).encode(), JSON_LINES)

    def test_a_nul_is_malformed_by_line(self):
        create_coupon(name="NUL", amount=1)
        with self.assertRaises(ImportRejected) as refused:
            import_codes(coupon_name="NUL", stream=io.BytesIO(b"GOOD-0001\nBAD\x00-0002\n"), content_format=CSV)
        self.assertEqual([(e["line"], e["reason"]) for e in refused.exception.errors], [(2, MALFORMED)])


class NormalisationTests(TestCase):
    def test_ours_keep_crockfords_reading_and_imported_ones_are_upper_case_without_separators(self):
        self.assertEqual(normalise_code("7k3m-q9td-x2hb-r4wn"), "7K3MQ9TDX2HBR4WN")
        self.assertEqual(normalise_code("IiLl-Oo00-1111-0000"), "1111000011110000")
        self.assertEqual(normalise_code("summer-2026 abc"), "SUMMER2026ABC")
        self.assertEqual(normalise_code("7K3M-Q9TD-X2HB-R4WU"), "7K3MQ9TDX2HBR4WU")  # U: not ours, imported
        for text in ("abc", "A" * 65, "AB_CD", "ABCD\x00", "ÄBCD", "\u212a" * 16):
            with self.subTest(text=text), self.assertRaises(MalformedCode):
                normalise_code(text)


class ImportAtomicityTests(TransactionTestCase):
    def test_two_overlapping_imports_one_after_the_other_the_second_is_refused_whole(self):
        create_coupon(name="A", amount=1)
        create_coupon(name="B", amount=1)
        import_codes(coupon_name="A", **csv_stream("X-0001\nX-0002\n"))

        with self.assertRaises(ImportRejected) as refused:
            import_codes(coupon_name="B", **csv_stream("X-0003\nX-0002\n"))

        self.assertEqual(refused.exception.errors, [{"line": 2, "reason": "in_use", "code": "X0002"}])
        self.assertEqual(sorted(ImportedCode.objects.values_list("code", flat=True)), ["X0001", "X0002"])
        self.assertFalse(Coupon.objects.get(name="B").imported_codes)

    def test_claims_keep_generated_codes_on_coupons_without_imports(self):
        create_coupon(name="GEN", amount=2)
        self.assertEqual(len(claim_coupon(user_id="ann", coupon_name="GEN").code), 16)
        self.assertFalse(Claim.objects.filter(code__in=ImportedCode.objects.values("code")).exists())

    def test_redeem_through_the_service(self):
        create_coupon(name="R", amount=1, hold_seconds=60)
        import_codes(coupon_name="R", **csv_stream("shop-code-1\n"))
        claim_coupon(user_id="ann", coupon_name="R")
        self.assertEqual(redeem_claim(code=normalise_code("SHOP CODE 1"), order_id="o").status, "redeemed")


class DeletionTests(TestCase):
    def test_deleting_a_coupon_in_the_admin_deletes_its_codes(self):
        create_coupon(name="GONE", amount=1)
        import_codes(coupon_name="GONE", **csv_stream("GONE-0001\nGONE-0002\n"))

        CouponAdmin(Coupon, admin.site).delete_model(None, Coupon.objects.get(name="GONE"))

        self.assertFalse(ImportedCode.objects.exists())
