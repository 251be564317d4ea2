"""Claims refused before DRF's request cycle (coupons/api/memory_refusals.py): the same answers, only faster.

Every refusal the claim path answers from memory is compared, byte for
byte, with ClaimApi's own answer to the same request (this module's URL
patterns serve ClaimApi without the wrapper), through every middleware.
ClaimApi's dispatch is watched (wrapped, not replaced) to tell which of the
two answered. The database is real throughout.
"""

import json
import string
import unittest
from datetime import timedelta
from unittest import mock

from django.db import connection
from django.test import TransactionTestCase, override_settings
from django.urls import include, path
from hypothesis import given, settings
from hypothesis import strategies as st

from coupons.api.serializers import ClaimInputSerializer, is_plain_claim_input
from coupons.api.views import ClaimApi
from coupons.api_keys import create_api_key
from coupons.coupon_states import coupon_states
from coupons.selectors import database_now
from coupons.services import create_coupon
from tests.faults.service import Service
from tests.helpers import structlog_events, subprocess_database_url

# This module as a URL conf: the claim path served by ClaimApi alone, every other path as the project serves it.
urlpatterns = [
    path("api/coupons/claim", ClaimApi.as_view(), name="coupon-claim"),
    path("", include("couponsite.urls")),
]
DRF_ONLY = override_settings(ROOT_URLCONF=__name__)


# On SQLite a state lasts COUPON_STATE_TTL_SQLITE (100 ms): long enough here for a loaded machine's test steps.
@override_settings(COUPON_STATE_TTL_SQLITE=60)
class MemoryRefusalTests(TransactionTestCase):
    def setUp(self):
        self.assertTrue(coupon_states.wait_until_listening(), "the process does not keep coupon states")
        coupon_states.forget_all()

    def post(self, body, **headers):
        data = body if isinstance(body, bytes) else json.dumps(body)
        content_type = headers.pop("content_type", "application/json")
        return self.client.post("/api/coupons/claim", data, content_type=content_type, **headers)

    def answered(self, body, **headers):
        """(the answer, whether ClaimApi's dispatch ran for it)."""
        with mock.patch.object(ClaimApi, "dispatch", autospec=True, side_effect=ClaimApi.dispatch) as dispatch:
            response = self.post(body, **headers)
        return response, dispatch.called

    def taught(self, name, user_id="teacher"):
        """Claims until this process refuses the coupon from memory (its first refusals read the database)."""
        for _ in range(3):
            response, through_drf = self.answered({"coupon_name": name, "user_id": user_id})
            if not through_drf:
                return response
        self.fail(f"{name}: never refused from memory")

    def assert_same_answer(self, body, **headers):
        """The wrapped view's answer (from memory: ClaimApi's dispatch never runs) is ClaimApi's, byte for byte."""
        fast, through_drf = self.answered(body, **dict(headers))
        self.assertFalse(through_drf, "ClaimApi answered: the claim was not refused from memory")
        with DRF_ONLY:
            slow, through_drf = self.answered(body, **dict(headers))
        self.assertTrue(through_drf)
        self.assertEqual(fast.status_code, slow.status_code)
        self.assertEqual(fast.content, slow.content)
        self.assertEqual(dict(fast.items()), dict(slow.items()))
        return fast

    def sold_out(self, name):
        create_coupon(name=name, amount=1)
        self.assertEqual(self.post({"coupon_name": name, "user_id": "first"}).status_code, 201)
        self.taught(name)

    def test_a_sold_out_coupon_is_refused_from_memory_as_claimapi_refuses_it(self):
        self.sold_out("GONE")
        with self.assertNumQueries(0):
            response = self.assert_same_answer({"coupon_name": "GONE", "user_id": "second"})
        self.assertEqual(response.status_code, 400)
        self.assertEqual(response.json()["code"], "out_of_stock")
        self.assertEqual(response["Allow"], "GET, POST, HEAD, OPTIONS")  # DRF's, on every APIView answer

    def test_closed_windows_and_unknown_coupons_are_refused_from_memory_as_claimapi_refuses_them(self):
        now = database_now()
        create_coupon(name="LATER", amount=5, starts_at=now + timedelta(seconds=3600.5))
        create_coupon(name="OVER", amount=5, starts_at=now - timedelta(days=2), ends_at=now - timedelta(days=1))
        for name, status, code in [
            ("LATER", 403, "sale_not_started"),
            ("OVER", 403, "sale_ended"),
            ("NO SUCH COUPON", 404, "not_found"),
        ]:
            with self.subTest(name):
                self.taught(name)
                response = self.assert_same_answer({"coupon_name": name, "user_id": "someone"})
                self.assertEqual((response.status_code, response.json()["code"]), (status, code))
        self.assertEqual(self.post({"coupon_name": "LATER", "user_id": "x"})["Retry-After"], "3601")

    def test_a_holders_repeat_goes_to_claimapi_and_hears_409(self):
        self.sold_out("HELD")
        response, through_drf = self.answered({"coupon_name": "HELD", "user_id": "first"})
        self.assertTrue(through_drf)
        self.assertEqual(response.json()["code"], "already_claimed")

    def test_what_memory_cannot_decide_alone_goes_to_claimapi(self):
        self.sold_out("DECIDED ELSEWHERE")
        plain = {"coupon_name": "DECIDED ELSEWHERE", "user_id": "someone"}
        cases = {
            "an Idempotency-Key (the answer is stored)": (plain, {"HTTP_IDEMPOTENCY_KEY": "k-1"}, 400),
            "an extension's field": ({**plain, "admission_token": "x"}, {}, 400),
            "a field too many": ({**plain, "extra": 1}, {}, 400),
            "a field missing": ({"coupon_name": plain["coupon_name"]}, {}, 400),
            "a non-ASCII user id": ({**plain, "user_id": "Zoë"}, {}, 400),
            "a blank user id": ({**plain, "user_id": " "}, {}, 400),
            "a user id that is no string": ({**plain, "user_id": 7}, {}, 400),
            "a body that is no JSON": (b"{", {}, 400),
            "a charset parameter": (plain, {"content_type": "application/json; charset=utf-8"}, 400),
            "another media type": (plain, {"content_type": "text/plain"}, 415),
        }
        for case, (body, headers, status) in cases.items():
            with self.subTest(case):
                response, through_drf = self.answered(body, **headers)
                self.assertTrue(through_drf)
                self.assertEqual(response.status_code, status, response.content)
        for limits in ({"CLAIM_RATE_LIMIT": "1000/s"}, {"CLAIM_RATE_LIMIT_PER_KEY": "1000/s"}):
            with self.subTest(**limits), override_settings(**limits):
                self.assertTrue(self.answered(plain)[1], "a rate limit counts every claim: ClaimApi's throttles")

    @override_settings(API_KEYS_REQUIRED=True)
    def test_with_api_keys_only_a_key_holding_claim_is_refused_from_memory(self):
        _, claim_key = create_api_key(name="shop", scopes={"claim"})
        _, read_key = create_api_key(name="reader", scopes={"read"})
        create_coupon(name="KEYED", amount=1)
        authorised = {"HTTP_AUTHORIZATION": f"Api-Key {claim_key}"}
        self.assertEqual(self.post({"coupon_name": "KEYED", "user_id": "first"}, **authorised).status_code, 201)
        for _ in range(2):  # the first refusals read the database
            self.post({"coupon_name": "KEYED", "user_id": "teacher"}, **authorised)

        self.assert_same_answer({"coupon_name": "KEYED", "user_id": "second"}, **authorised)
        for headers, status in [
            ({}, 401),
            ({"HTTP_AUTHORIZATION": "Api-Key not-a-key"}, 401),
            ({"HTTP_AUTHORIZATION": f"Api-Key {read_key}"}, 403),
        ]:
            with self.subTest(headers=headers):
                response, through_drf = self.answered({"coupon_name": "KEYED", "user_id": "second"}, **headers)
                self.assertTrue(through_drf)
                self.assertEqual(response.status_code, status)

    def test_a_refusal_from_memory_is_counted_and_logged_as_claimapi_does(self):
        self.sold_out("COUNTED")
        with structlog_events() as events:
            self.assertFalse(self.answered({"coupon_name": "COUNTED", "user_id": "someone"})[1])
        (line,) = [event for event in events if event["logger"] == "couponsite.request_logs"]
        self.assertEqual(line["claim"], {"outcome": "out_of_stock", "user_id": "someone", "coupon": "COUNTED"})
        metrics = self.client.get("/metrics").content.decode()
        self.assertIn('coupon_claims_total{outcome="out_of_stock"}', metrics)


class PlainClaimInputTests(unittest.TestCase):
    """is_plain_claim_input is a sufficient condition: whatever it passes, the input serializer accepts unchanged."""

    values = st.one_of(
        st.text(alphabet=string.printable, max_size=300),
        st.text(max_size=20),
        st.sampled_from([".", "..", " ", "", "a" * 255, "a" * 256, "\x00", "\x7f"]),
        st.integers(),
        st.none(),
    )

    @settings(max_examples=2000, deadline=None)
    @given(st.dictionaries(st.sampled_from(["coupon_name", "user_id", "other"]), values))
    def test_what_it_passes_the_serializer_accepts_as_it_is(self, data):
        if is_plain_claim_input(data):
            serializer = ClaimInputSerializer(data=data)
            self.assertTrue(serializer.is_valid(), serializer.errors)
            self.assertEqual(dict(serializer.validated_data), data)

    def test_it_passes_the_plain_claims_a_sale_sends(self):
        self.assertTrue(is_plain_claim_input({"coupon_name": "BLACK FRIDAY", "user_id": "user-123"}))
        self.assertFalse(is_plain_claim_input({"coupon_name": "..", "user_id": "user-123"}))


@unittest.skipUnless(
    connection.vendor == "postgresql",
    "the served app keeps states by LISTEN (on SQLite for COUPON_STATE_TTL_SQLITE_MS only)",
)
class ServedMemoryRefusalTests(TransactionTestCase):
    def test_the_served_answer_from_memory_is_claimapis(self):
        create_coupon(name="SERVED", amount=1)
        with Service(subprocess_database_url(), WEB_CONCURRENCY="1", WEB_THREADS="1") as served:
            self.assertEqual(served.claim("first", "SERVED").status, 201)
            for _ in range(2):  # the first refusals read the database
                self.assertEqual(served.claim("teacher", "SERVED").status, 400)
            body = {"coupon_name": "SERVED", "user_id": "second"}
            from_memory = served.request("POST", "/api/coupons/claim", body)
            # A charset parameter is not the memory path's: ClaimApi answers it, from the same coupon state.
            by_claimapi = served.request(
                "POST", "/api/coupons/claim", body, headers={"Content-Type": "application/json; charset=utf-8"}
            )
        for reply in (from_memory, by_claimapi):
            reply.headers.pop("date", None)
        self.assertEqual((from_memory.status, from_memory.body), (400, by_claimapi.body))
        self.assertEqual(from_memory.headers, by_claimapi.headers)
