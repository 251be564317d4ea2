"""The text people write is accepted, what disguises text is refused, and no input is a 5xx, on any database.

CI runs this module on PostgreSQL (`make test`) and again on SQLite (.ci/run).
Run with `-o log_cli=true --log-cli-level=INFO` to see how many generated
cases each property test sent and what they were answered.
"""

import json
import logging
import unicodedata
from collections import Counter
from urllib.parse import quote

from django.contrib.auth import get_user_model
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase as HypothesisTestCase

import tests.test_admin as admin_tests
from coupons.models import Claim, Coupon
from coupons.services import create_coupon
from coupons.validators import validate_coupon_name
from tests.helpers import JsonApiAssertions

logger = logging.getLogger(__name__)

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # 👨‍👩‍👧, joined by U+200D ZERO WIDTH JOINER
PERSIAN = "\u0646\u0648\u0631\u0648\u0632\u200c\u062e\u0648\u0634"  # نوروز‌خوش, with U+200C ZERO WIDTH NON-JOINER
ACCEPTED = {
    "emoji family (ZWJ)": FAMILY,
    "Persian (ZWNJ)": PERSIAN,
    "Hindi with ZWNJ": "\u0915\u094d\u200c\u0937",
    "emoji presentation (variation selector 16)": "\u2764\ufe0f sale",
    "text presentation (variation selector 15)": "\u2764\ufe0e sale",
    "ideographic variation selector": "\u845b\U000e0100",
    "combining acute accent": "Cafe\u0301",
    "stacked combining marks": "a\u0300\u0301\u0302",
    "flag (regional indicators)": "\U0001f1eb\U0001f1f7",
    "skin tone modifier": "\U0001f44d\U0001f3fd",
    "a mark alone": "\u0301",
    "Thai": "\u0e25\u0e14\u0e23\u0e32\u0e04\u0e32",
}
REFUSED = {
    "NUL": "PROMO\x00",
    "C1 control": "PROMO\x9f",
    "zero width space": "zero\u200bwidth",
    "left-to-right embedding": "a\u202ab",
    "right-to-left override": "invoice\u202egnp.exe",
    "pop directional formatting": "a\u202cb",
    "left-to-right isolate": "a\u2066b",
    "pop directional isolate": "a\u2069b",
    "byte order mark": "\ufeffPROMO",
    "private use": "PROMO\ue000",
    "unassigned": "PROMO\U000bd25f",
    "noncharacter U+FDD0": "PROMO\ufdd0",
    "noncharacter U+FFFE": "PROMO\ufffe",
    "noncharacter U+10FFFF": "PROMO\U0010ffff",
    "lone surrogate": "PROMO\ud800",
    "line separator": "a\u2028b",
    "only a joiner": "\u200d",
    "only joiners and spaces": " \u200c\u200d ",
    "only a variation selector": "\ufe0f",
    "only an ideographic variation selector": "\U000e0100",
}


class UnicodeRuleTests(JsonApiAssertions, HypothesisTestCase):
    def test_real_world_text_creates_claims_and_reads_back_byte_identical(self):
        for label, text in ACCEPTED.items():
            with self.subTest(label):
                created = self.post_json("/api/coupons", {"name": text, "amount": 2})
                self.assertEqual(created.status_code, 201, created.content)
                claimed = self.post_json("/api/coupons/claim", {"user_id": text, "coupon_name": text})
                self.assertEqual(claimed.status_code, 201, claimed.content)

                body = self.get_coupon(text).json()

                self.assertEqual(body["name"].encode(), text.encode())
                self.assertEqual([user_id.encode() for user_id in body["claimed_by"]], [text.encode()])
                self.assertEqual(Coupon.objects.get(name=text).name.encode(), text.encode())

    def test_dangerous_text_is_refused_as_a_name_and_as_a_user_id_and_changes_nothing(self):
        create_coupon(name="PROMO", amount=5)
        for label, text in REFUSED.items():
            with self.subTest(label):
                self.assert_error(self.post_json("/api/coupons", {"name": text, "amount": 1}), 400)
                self.assert_error(self.post_json("/api/coupons/claim", {"user_id": text, "coupon_name": "PROMO"}), 400)
        self.assertEqual(Coupon.objects.count(), 1)
        self.assertFalse(Claim.objects.exists())

    def test_every_route_for_nul_is_a_4xx(self):
        create_coupon(name="PROMO", amount=5)
        operator = get_user_model().objects.create_superuser("operator", "op@example.com", "secret-password")
        anonymous = [
            ("GET", "/api/coupons/%00", 404),
            ("GET", "/api/coupons/PRO%00MO", 404),
            ("GET", "/api/coupons/claim?x=%00", 400),
            ("GET", "/api/coupons/PROMO?%00", 400),
            ("GET", "/health?check=%00", 400),
            ("GET", "/metrics?%00", 400),
            ("GET", "/admin/login/?next=%00", 400),
        ]
        for method, path, status_code in anonymous:
            with self.subTest(path=path):
                self.assert_error(self.client.generic(method, path), status_code)
        self.assert_error(self.post_json("/api/coupons", {"name": "\x00", "amount": 1}), 400)
        self.assert_error(self.post_json("/api/coupons/claim", {"user_id": "u", "coupon_name": "\x00"}), 400)
        self.client.cookies["sessionid"] = "a" * 8 + "\x00"
        self.assert_error(self.client.get("/admin/"), 400)
        del self.client.cookies["sessionid"]

        self.client.force_login(operator)
        coupon = Coupon.objects.get()
        admin_gets = [
            "/admin/coupons/coupon/?q=%00",
            "/admin/coupons/claim/?q=%00",
            f"/admin/coupons/coupon/{coupon.pk}/change/?claims_page=%00",
            "/admin/coupons/clientapikey/%00/change/",
            "/admin/coupons/clientapikey/?q=%00",
            "/admin/autocomplete/?term=%00&app_label=coupons&model_name=claim&field_name=coupon",
        ]
        for path in admin_gets:
            with self.subTest(path=path):
                self.assertIn(self.client.get(path).status_code, {400, 404})
        admin_posts = [
            ("/admin/coupons/coupon/add/", {"name": "a\x00", "amount": "1"}),
            (f"/admin/coupons/coupon/{coupon.pk}/restock/", {"amount": "\x00"}),
            ("/admin/coupons/clientapikey/add/", {"name": "k\x00", "scope_read": "on"}),
            ("/admin/coupons/clientapikey/", {"action": "revoke_keys", "_selected_action": ["\x00"]}),
        ]
        for path, form in admin_posts:
            with self.subTest(path=path):
                self.assert_error(self.client.post(path, form), 400)
        self.assertEqual(Coupon.objects.count(), 1)


class AdminAcceptsTheSameTextTests(admin_tests.SameValidationAsTheApiTests):
    """The admin and the API accept exactly the same set, for the new rule's cases too.

    Not NUL (the middleware refuses a form holding one outright, tested above)
    nor a lone surrogate (no browser sends one in a form: it cannot be encoded).
    """

    CASES = [
        {"name": text, "amount": 1}
        for text in [*ACCEPTED.values(), *REFUSED.values()]
        if "\x00" not in text and not any(unicodedata.category(char) == "Cs" for char in text)
    ]


# Generated text: every plane, surrogates included (escaped in JSON, as
# JavaScript clients send them), the characters the rule names, real-world
# sequences, and strings far over every length limit.
NAMED_CHARACTERS = st.sampled_from(
    ["\x00", "\u200c", "\u200d", "\ufe0f", "\u0301", "\u202e", "\u2066", "\ufdd0", "\uffff", "%", "/", ".", " "]
)
ANY_CHARACTER = st.one_of(st.characters(), st.characters(categories=["Cs"]), NAMED_CHARACTERS)
TEXT = st.one_of(
    st.text(ANY_CHARACTER, min_size=1, max_size=40),
    st.sampled_from([*ACCEPTED.values(), *REFUSED.values(), ".", ".."]),
    st.tuples(st.text(ANY_CHARACTER, min_size=1, max_size=4), st.integers(60, 4000)).map(
        lambda pair: pair[0] * pair[1]
    ),
)
PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def acceptable(text):
    """What the rule accepts (the property is that the API agrees)."""
    try:
        validate_coupon_name(text)
    except Exception:
        return False
    return len(text) <= 255


def json_body(value, ascii_only):
    """JSON as clients send it: \\u-escaped (lone surrogates included), or raw UTF-8 (surrogates passed through)."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


class NoServerErrorPropertyTests(JsonApiAssertions, HypothesisTestCase):
    """Whatever text arrives, wherever: never a 5xx; accepted text reads back identical."""

    statuses = Counter()  # "<test> <what> <status>" -> how many generated cases got it

    @classmethod
    def setUpTestData(cls):
        create_coupon(name="PROMO", amount=1_000_000)

    @classmethod
    def tearDownClass(cls):
        for test in sorted({key.split(" ")[0] for key in cls.statuses}):
            counts = {
                key.partition(" ")[2]: count for key, count in sorted(cls.statuses.items()) if key.startswith(test)
            }
            logger.info("%s on %s: %d cases, %s", test, connection.vendor, sum(counts.values()), counts)
        super().tearDownClass()

    def answered(self, label, response):
        self.statuses[f"{self._testMethodName} {label} {response.status_code}"] += 1
        self.assertLess(response.status_code, 500, (label, response.content[:300]))
        self.assertEqual(response["Content-Type"], "application/json")
        return response

    @PROPERTY_SETTINGS
    @given(name=TEXT, ascii_only=st.booleans())
    def test_create_then_read_back(self, name, ascii_only):
        response = self.answered(
            "create", self.post_raw("/api/coupons", json_body({"name": name, "amount": 1}, ascii_only))
        )
        valid_utf8 = ascii_only or not any(unicodedata.category(char) == "Cs" for char in name)
        self.assertEqual(response.status_code == 201, acceptable(name) and valid_utf8 and name != "PROMO")
        if response.status_code == 201:
            read = self.answered("read back", self.get_coupon(name))
            self.assertEqual(read.status_code, 200)
            self.assertEqual(read.json()["name"].encode(), name.encode())

    @PROPERTY_SETTINGS
    @given(user_id=TEXT, coupon_name=st.one_of(st.just("PROMO"), TEXT), ascii_only=st.booleans())
    def test_claim_then_read_back(self, user_id, coupon_name, ascii_only):
        body = json_body({"user_id": user_id, "coupon_name": coupon_name}, ascii_only)
        response = self.answered("claim", self.post_raw("/api/coupons/claim", body))
        if response.status_code == 201:
            self.assertEqual(coupon_name, "PROMO")
            claimed_by = self.get_coupon("PROMO").json()["claimed_by"]
            self.assertEqual([claimer.encode() for claimer in claimed_by], [user_id.encode()])

    @PROPERTY_SETTINGS
    @given(name=TEXT)
    def test_read_any_path(self, name):
        path = "/api/coupons/" + quote(name.encode("utf-8", "surrogatepass"), safe="")
        response = self.answered("read", self.client.get(path))
        self.assertEqual(response.status_code, 200 if name == "PROMO" else 404)

    @PROPERTY_SETTINGS
    @given(value=TEXT, where=st.sampled_from(["/api/coupons/PROMO", "/api/coupons/claim", "/health", "/admin/"]))
    def test_any_query_string(self, value, where):
        query = quote(value.encode("utf-8", "surrogatepass"), safe="")
        response = self.client.get(f"{where}?q={query}&{query}")
        self.statuses[f"{self._testMethodName} {where} {response.status_code}"] += 1
        self.assertLess(response.status_code, 500, response.content[:300])
        if "\x00" in value:
            self.assertEqual(response.status_code, 400)
