import json

from django.conf import settings
from django.test import SimpleTestCase, TestCase

from coupons.api.error_codes import ErrorCode
from coupons.claim_codes import format_code
from coupons.exceptions import CouponError
from coupons.models import Claim, Coupon
from coupons.services import claim_coupon, create_coupon
from tests.helpers import JsonApiAssertions


class ApiTestCase(JsonApiAssertions, TestCase):
    pass


class CreateCouponApiTests(ApiTestCase):
    def test_created(self):
        response = self.post_json("/api/coupons", {"name": "PROMO_SUPER", "amount": 100})

        self.assertEqual(response.status_code, 201)
        self.assertEqual(
            response.json(),
            {
                "name": "PROMO_SUPER",
                "amount": 100,
                "remaining_amount": 100,
                "starts_at": None,
                "ends_at": None,
                "hold_seconds": None,
                "redeem_until": None,
                "campaign": None,  # the campaigns app's (campaigns/extension.py): in none
            },
        )
        self.assertEqual(Coupon.objects.get().remaining_amount, 100)

    def test_unknown_fields_are_ignored(self):
        response = self.post_json("/api/coupons", {"name": "P", "amount": 1, "remaining_amount": 0})
        self.assertEqual(response.status_code, 201)
        self.assertEqual(Coupon.objects.get().remaining_amount, 1)

    def test_largest_amount(self):
        response = self.post_json("/api/coupons", {"name": "BIG", "amount": 2**31 - 1})
        self.assertEqual(response.status_code, 201)

    def test_duplicate_name(self):
        create_coupon(name="PROMO_SUPER", amount=5)

        response = self.post_json("/api/coupons", {"name": "PROMO_SUPER", "amount": 100})

        self.assert_error(response, 409, "coupon_exists")
        self.assertEqual(Coupon.objects.get().amount, 5)

    def test_invalid_bodies(self):
        cases = {
            "missing name": {"amount": 1},
            "missing amount": {"name": "P"},
            "empty object": {},
            "amount true": {"name": "P", "amount": True},
            "amount false": {"name": "P", "amount": False},
            "amount float": {"name": "P", "amount": 1.5},
            "amount integral float": {"name": "P", "amount": 5.0},
            "amount string": {"name": "P", "amount": "5"},
            "amount null": {"name": "P", "amount": None},
            "amount list": {"name": "P", "amount": [5]},
            "amount object": {"name": "P", "amount": {"n": 5}},
            "amount zero": {"name": "P", "amount": 0},
            "amount negative": {"name": "P", "amount": -1},
            "amount over int32": {"name": "P", "amount": 2**31},
            "amount huge": {"name": "P", "amount": 10**40},
            "name number": {"name": 123, "amount": 1},
            "name null": {"name": None, "amount": 1},
            "name true": {"name": True, "amount": 1},
            "name list": {"name": ["P"], "amount": 1},
            "name object": {"name": {"n": "P"}, "amount": 1},
            "name empty": {"name": "", "amount": 1},
            "name blank": {"name": "   ", "amount": 1},
            "name over 255": {"name": "x" * 256, "amount": 1},
            "name with NUL": {"name": "a\x00b", "amount": 1},
            "name with newline": {"name": "a\nb", "amount": 1},
            "name with tab": {"name": "a\tb", "amount": 1},
            "name with DEL": {"name": "a\x7fb", "amount": 1},
            "name with zero-width space": {"name": "a\u200bb", "amount": 1},
            "name with line separator": {"name": "a\u2028b", "amount": 1},
            # Found by Schemathesis (tests/test_fuzz.py): C1 controls, unassigned and private-use code points.
            "name with C1 control": {"name": "a\x90b", "amount": 1},
            "name with unassigned code point": {"name": "a\U0006eb66", "amount": 1},
            "name with private-use character": {"name": "a\ue000", "amount": 1},
            "name dot": {"name": ".", "amount": 1},
            "name dot dot": {"name": "..", "amount": 1},
        }
        for label, body in cases.items():
            with self.subTest(label):
                self.assert_error(self.post_json("/api/coupons", body), 400, "invalid")
        self.assertFalse(Coupon.objects.exists())

    def test_body_not_a_json_object(self):
        for raw in [b"[]", b'[{"name": "P", "amount": 1}]', b'"PROMO"', b"42", b"null", b"true"]:
            with self.subTest(raw):
                self.assert_error(self.post_raw("/api/coupons", raw), 400, "invalid")
        self.assertFalse(Coupon.objects.exists())

    def test_malformed_json(self):
        bodies = [
            b"{",
            b'{"name": "P", "amount": 1,}',
            b"{'name': 'P', 'amount': 1}",
            b'{"name": "P", "amount": NaN}',
            b'{"name": "P", "amount": Infinity}',
            b'{"name": "P", "amount": 1e400}',
            b"not json",
            b"\x00\x01\x02",
        ]
        for raw in bodies:
            with self.subTest(raw):
                self.assert_error(self.post_raw("/api/coupons", raw), 400, "invalid")
        self.assertFalse(Coupon.objects.exists())

    def test_empty_body(self):
        self.assert_error(self.post_raw("/api/coupons", b""), 400, "invalid")

    def test_invalid_utf8(self):
        self.assert_error(self.post_raw("/api/coupons", b'{"name": "P\xff\xfe", "amount": 1}'), 400, "invalid")
        self.assertFalse(Coupon.objects.exists())

    def test_lone_surrogate_escape(self):
        self.assert_error(self.post_raw("/api/coupons", b'{"name": "P\\ud800", "amount": 1}'), 400, "invalid")
        self.assertFalse(Coupon.objects.exists())

    def test_absurdly_nested_json(self):
        for depth in [1_000, 5_000]:
            with self.subTest(depth=depth):
                raw = b'{"name": ' + b"[" * depth + b"]" * depth + b', "amount": 1}'
                self.assert_error(self.post_raw("/api/coupons", raw), 400, "invalid")

    def test_huge_integer_literal(self):
        self.assert_error(
            self.post_raw("/api/coupons", b'{"name": "P", "amount": ' + b"9" * 5000 + b"}"), 400, "invalid"
        )

    def test_oversized_body(self):
        raw = json.dumps({"name": "P", "amount": 1, "padding": "x" * settings.MAX_REQUEST_BODY_BYTES}).encode()
        self.assert_error(self.post_raw("/api/coupons", raw), 413, "payload_too_large")
        self.assertFalse(Coupon.objects.exists())

    def test_chunked_body_is_refused_with_411(self):
        response = self.post_raw("/api/coupons", b'{"name": "P", "amount": 1}', HTTP_TRANSFER_ENCODING="chunked")
        self.assert_error(response, 411, "length_required")
        self.assertFalse(Coupon.objects.exists())

    def test_unsupported_content_types(self):
        for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]:
            with self.subTest(content_type):
                response = self.post_raw("/api/coupons", b'{"name": "P", "amount": 1}', content_type)
                self.assert_error(response, 415, "unsupported_media_type")
        self.assertFalse(Coupon.objects.exists())

    def test_json_with_charset_is_accepted(self):
        response = self.post_raw("/api/coupons", b'{"name": "P", "amount": 1}', "application/json; charset=utf-8")
        self.assertEqual(response.status_code, 201)

    def test_answers_json_whatever_the_accept_header(self):
        for accept in ["text/html", "application/xml", "text/plain"]:
            with self.subTest(accept):
                response = self.client.post(
                    "/api/coupons",
                    data=json.dumps({"name": accept, "amount": 1}),
                    content_type="application/json",
                    HTTP_ACCEPT=accept,
                )
                self.assertEqual(response.status_code, 201)
                self.assertEqual(response["Content-Type"], "application/json")

    def test_get_is_not_allowed(self):
        self.assert_error(self.client.get("/api/coupons"), 405, "method_not_allowed")


class ClaimApiTests(ApiTestCase):
    def setUp(self):
        create_coupon(name="PROMO_SUPER", amount=1)

    def claim(self, user_id="user_12345", coupon_name="PROMO_SUPER"):
        return self.post_json("/api/coupons/claim", {"user_id": user_id, "coupon_name": coupon_name})

    def test_claimed(self):
        response = self.claim()

        self.assertEqual(response.status_code, 201)
        body = response.json()
        claim = Claim.objects.get()
        self.assertEqual(
            body,
            {
                "user_id": "user_12345",
                "coupon_name": "PROMO_SUPER",
                "code": format_code(claim.code),
                "status": "held",
                "expires_at": None,
            },
        )
        self.assertRegex(body["code"], r"^[0-9A-HJKMNP-TV-Z]{4}(-[0-9A-HJKMNP-TV-Z]{4}){3}$")
        self.assertEqual(Coupon.objects.get().remaining_amount, 0)

    def test_already_claimed(self):
        self.claim()
        self.assert_error(self.claim(), 409, "already_claimed")
        self.assertEqual(Claim.objects.count(), 1)

    def test_no_stock(self):
        self.claim("user_1")
        self.assert_error(self.claim("user_2"), 400, "out_of_stock")
        self.assertEqual(Claim.objects.count(), 1)

    def test_repeat_claimer_of_a_sold_out_coupon_gets_409(self):
        self.claim("user_1")
        self.assert_error(self.claim("user_1"), 409, "already_claimed")

    def test_unknown_coupon(self):
        self.assert_error(self.claim(coupon_name="NOPE"), 404, "not_found")
        self.assertFalse(Claim.objects.exists())

    def test_invalid_bodies(self):
        cases = {
            "empty object": {},
            "missing user_id": {"coupon_name": "PROMO_SUPER"},
            "missing coupon_name": {"user_id": "u"},
            "user_id number": {"user_id": 12345, "coupon_name": "PROMO_SUPER"},
            "user_id null": {"user_id": None, "coupon_name": "PROMO_SUPER"},
            "user_id true": {"user_id": True, "coupon_name": "PROMO_SUPER"},
            "user_id list": {"user_id": ["u"], "coupon_name": "PROMO_SUPER"},
            "user_id empty": {"user_id": "", "coupon_name": "PROMO_SUPER"},
            "user_id blank": {"user_id": "  ", "coupon_name": "PROMO_SUPER"},
            "user_id over 255": {"user_id": "u" * 256, "coupon_name": "PROMO_SUPER"},
            "user_id with NUL": {"user_id": "u\x00", "coupon_name": "PROMO_SUPER"},
            "user_id with newline": {"user_id": "u\n1", "coupon_name": "PROMO_SUPER"},
            "coupon_name number": {"user_id": "u", "coupon_name": 1},
            "coupon_name null": {"user_id": "u", "coupon_name": None},
            "coupon_name empty": {"user_id": "u", "coupon_name": ""},
            "coupon_name over 255": {"user_id": "u", "coupon_name": "P" * 256},
            "coupon_name with NUL": {"user_id": "u", "coupon_name": "PROMO\x00"},
            "user_id with unassigned code point": {"user_id": "u\U000bd25f", "coupon_name": "PROMO_SUPER"},
            "coupon_name with C1 control": {"user_id": "u", "coupon_name": "PROMO\x9f"},
        }
        for label, body in cases.items():
            with self.subTest(label):
                self.assert_error(self.post_json("/api/coupons/claim", body), 400, "invalid")
        self.assertFalse(Claim.objects.exists())
        self.assertEqual(Coupon.objects.get().remaining_amount, 1)

    def test_every_invalid_field_is_named_in_the_one_error(self):
        message = self.assert_error(
            self.post_json("/api/coupons/claim", {"user_id": "u\x90", "coupon_name": ""}), 400, "invalid"
        )
        self.assertIn("user_id: Must not contain control or non-printable characters (found U+0090).", message)
        self.assertIn("coupon_name: This field may not be blank.", message)

    def test_malformed_and_non_object_bodies(self):
        for raw in [b"{", b"[]", b"null", b'"x"', b"", b'{"user_id": "\xff", "coupon_name": "PROMO_SUPER"}']:
            with self.subTest(raw):
                self.assert_error(self.post_raw("/api/coupons/claim", raw), 400, "invalid")
        self.assertFalse(Claim.objects.exists())

    def test_unsupported_content_type(self):
        response = self.post_raw("/api/coupons/claim", b"user_id=u&coupon_name=PROMO_SUPER", "text/plain")
        self.assert_error(response, 415, "unsupported_media_type")
        self.assertFalse(Claim.objects.exists())

    def test_longest_user_id(self):
        self.assertEqual(self.claim(user_id="u" * 255).status_code, 201)


class CouponDetailApiTests(ApiTestCase):
    def test_detail(self):
        create_coupon(name="PROMO_SUPER", amount=5)
        for user_id in ["user_2", "user_1", "user_3"]:
            claim_coupon(user_id=user_id, coupon_name="PROMO_SUPER")

        response = self.client.get("/api/coupons/PROMO_SUPER")

        self.assertEqual(response.status_code, 200)
        self.assertEqual(
            response.json(),
            {
                "name": "PROMO_SUPER",
                "amount": 5,
                "remaining_amount": 2,
                "starts_at": None,
                "ends_at": None,
                "hold_seconds": None,
                "redeem_until": None,
                "status": "live",
                "claimed_by": ["user_2", "user_1", "user_3"],
                "held_amount": 3,
                "redeemed_amount": 0,
                "campaign": None,  # the campaigns app's (campaigns/extension.py): in none
            },
        )

    def test_unknown(self):
        self.assert_error(self.client.get("/api/coupons/NOPE"), 404, "not_found")

    def test_every_creatable_name_reads_back(self):
        names = [
            "with space",
            " leading and trailing ",
            "100%",
            "%41",
            "a/b",
            "a//b/",
            "/",
            "what?",
            "a?b=c&d",
            "#hash",
            "a+b",
            "semi;colon",
            "...",
            "ünïcödé",
            "促销",
            "🎉 party",
            "claim",
            "claim/",
            "x" * 255,
        ]
        for name in names:
            with self.subTest(name=name):
                created = self.post_json("/api/coupons", {"name": name, "amount": 3})
                self.assertEqual(created.status_code, 201, created.content)
                claimed = self.post_json("/api/coupons/claim", {"user_id": "u", "coupon_name": name})
                self.assertEqual(claimed.status_code, 201, claimed.content)

                response = self.get_coupon(name)

                self.assertEqual(response.status_code, 200, response.content)
                self.assertEqual(response.json()["name"], name)
                self.assertEqual(response.json()["claimed_by"], ["u"])

    def test_coupon_named_claim_is_readable_with_get(self):
        create_coupon(name="claim", amount=2)
        response = self.client.get("/api/coupons/claim")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.json()["name"], "claim")

    def test_trailing_slash_is_part_of_the_name_not_a_redirect(self):
        create_coupon(name="PROMO", amount=1)
        response = self.client.get("/api/coupons/PROMO/")
        self.assert_error(response, 404, "not_found")

    def test_post_is_not_allowed(self):
        create_coupon(name="PROMO", amount=1)
        self.assert_error(self.post_json("/api/coupons/PROMO", {}), 405, "method_not_allowed")


class NoRedirectsAndJsonEverywhereTests(ApiTestCase):
    def test_paths_without_trailing_slash_answer_directly(self):
        create_coupon(name="PROMO", amount=1)
        for method, path in [
            ("post", "/api/coupons"),
            ("post", "/api/coupons/claim"),
            ("get", "/api/coupons/PROMO"),
            ("get", "/health"),
            ("get", "/api/schema"),
        ]:
            with self.subTest(path=path):
                response = getattr(self.client, method)(path)
                self.assertNotIn(response.status_code, {301, 302, 307, 308})

    def test_unknown_paths_are_json_404(self):
        for path in ["/", "/nope", "/api", "/api/", "/api/coupons/", "/api/claim", "/admin"]:
            with self.subTest(path=path):
                self.assert_error(self.client.get(path), 404, "not_found")


class DomainErrorMappingTests(SimpleTestCase):
    def test_every_domain_error_has_a_client_error_status_and_a_code(self):
        # Imported here: coupons.api.errors is loaded through DRF's settings,
        # which it imports itself.
        from coupons.api.errors import DOMAIN_ERRORS

        # The service's own (an extension maps its own: coupons/extensions.py).
        for error in (error for error in CouponError.__subclasses__() if error.__module__ == "coupons.exceptions"):
            with self.subTest(error=error.__name__):
                status_code, code = DOMAIN_ERRORS[error]
                self.assertIn(status_code, range(400, 500))
                self.assertIn(code, list(ErrorCode))
