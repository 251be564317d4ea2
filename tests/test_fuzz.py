"""Hostile input generated from the service's own OpenAPI schema, by Schemathesis.

For each operation, requests that follow the schema (positive) and, where
the operation takes input, requests that break it (negative) go to the WSGI
application that the server serves. Every answer must be no 5xx, a documented
status code with a JSON body matching that status code's schema and
documented headers, and every schema-breaking request must be refused with
a 4xx. Run with `-o log_cli=true --log-cli-level=INFO` to see how many
cases ran and what they were answered.
"""

import logging
from collections import Counter

import schemathesis
from django.test import TransactionTestCase
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from coupons.services import claim_coupon, create_coupon
from couponsite.wsgi import application
from tests.test_api_keys import api_key_header, new_key

logger = logging.getLogger(__name__)

CASES_PER_OPERATION_AND_MODE = 200

# Half of the generated claims and reads are steered to coupons and users
# that exist, so that the fuzzing reaches 201, 409 and "no stock" too.
IN_STOCK = "PROMO"
SOLD_OUT = "SOLD OUT"
HOLDER = "alice"  # holds the one SOLD OUT unit
CODES = 50  # claims of IN_STOCK whose codes half of the generated redemptions use

# "Schema-valid data must be accepted" cannot hold: the validators refuse
# characters (control, format, unassigned...) that no portable JSON Schema
# pattern can describe, and the schema says so in words. tests/test_api.py
# covers those rules one by one.
EXCLUDED_CHECKS = [positive_data_acceptance]
# How schema-breaking writes are refused. 422: Schemathesis sends the same
# few Idempotency-Keys ("0", "") with different bodies, which is a key reused.
REFUSED_WRITES = {400, 413, 415, 422}


def steered(*strategies):
    """One of `strategies` half the time, else None (keep what Schemathesis generated)."""
    return st.one_of(st.none(), st.one_of(*strategies))


EXISTING_COUPON = steered(st.just(IN_STOCK), st.just(SOLD_OUT))
# The holder of the SOLD OUT unit, or a user who has claimed nothing yet.
KNOWN_OR_NEW_USER = steered(st.just(HOLDER), st.uuids().map(str))


class SchemathesisTests(TransactionTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)

    def setUp(self):
        create_coupon(name=IN_STOCK, amount=1_000_000)
        create_coupon(name=SOLD_OUT, amount=1)
        claim_coupon(user_id=HOLDER, coupon_name=SOLD_OUT)

    def fuzz(self, method, path, mode, steer=None, headers=None):
        """Send generated cases to one operation (with `headers`, credentials say); return how many got each status
        code."""
        operation = self.schema[path][method]
        statuses = Counter()

        @settings(
            max_examples=CASES_PER_OPERATION_AND_MODE,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
        def send(case, data):
            if steer is not None:
                steer(case, data)
            response = case.call_and_validate(headers=headers, excluded_checks=EXCLUDED_CHECKS)
            statuses[response.status_code] += 1

        send()
        logger.info("%s %s, %s: %d cases, %s", method, path, mode.value, statuses.total(), dict(statuses))
        return statuses

    def test_create_coupon(self):
        positive = self.fuzz("POST", "/api/coupons", GenerationMode.POSITIVE)
        negative = self.fuzz("POST", "/api/coupons", GenerationMode.NEGATIVE)

        self.assertIn(201, positive)
        self.assertTrue(set(negative) <= REFUSED_WRITES, negative)

    def test_claim(self):
        def steer(case, data):
            if isinstance(case.body, dict):
                for field, strategy in [("coupon_name", EXISTING_COUPON), ("user_id", KNOWN_OR_NEW_USER)]:
                    if (value := data.draw(strategy)) is not None:
                        case.body = {**case.body, field: value}

        positive = self.fuzz("POST", "/api/coupons/claim", GenerationMode.POSITIVE, steer)
        negative = self.fuzz("POST", "/api/coupons/claim", GenerationMode.NEGATIVE)

        self.assertTrue({201, 400, 404, 409} <= set(positive), positive)
        self.assertTrue(set(negative) <= REFUSED_WRITES, negative)

    def test_redeem(self):
        codes = [claim_coupon(user_id=f"shopper-{i}", coupon_name=IN_STOCK).code for i in range(CODES)]
        typed_codes = steered(st.sampled_from(codes), st.sampled_from(codes).map(lambda code: code.lower()))

        def steer(case, data):
            if isinstance(case.body, dict):
                for field, strategy in [("code", typed_codes), ("coupon_name", EXISTING_COUPON)]:
                    if (value := data.draw(strategy)) is not None:
                        case.body = {**case.body, field: value}

        positive = self.fuzz("POST", "/api/redemptions", GenerationMode.POSITIVE, steer)
        negative = self.fuzz("POST", "/api/redemptions", GenerationMode.NEGATIVE)

        self.assertTrue({201, 400, 404, 409} <= set(positive), positive)
        self.assertTrue(set(negative) <= REFUSED_WRITES, negative)

    def test_read_a_code(self):
        code = claim_coupon(user_id="shopper", coupon_name=IN_STOCK).code

        def steer(case, data):
            if (typed := data.draw(steered(st.just(code), st.just(code.lower())))) is not None:
                case.path_parameters = {**case.path_parameters, "code": typed}

        statuses = self.fuzz("GET", "/api/redemptions/{code}", GenerationMode.POSITIVE, steer)

        # The schema's pattern is every code the API reads: a generated code is someone's (200) or no one's (404),
        # never malformed (400).
        self.assertEqual(set(statuses), {200, 404})

    def test_read_coupon(self):
        def steer(case, data):
            if (name := data.draw(EXISTING_COUPON)) is not None:
                case.path_parameters = {**case.path_parameters, "name": name}

        # A path parameter is text whatever it holds: there is no schema-breaking read.
        statuses = self.fuzz("GET", "/api/coupons/{name}", GenerationMode.POSITIVE, steer)

        self.assertTrue({200, 404} <= set(statuses), statuses)

    def test_events(self):
        # Positive only: an empty `?limit=` reads as absent (DRF's rule for query parameters, as for a user's
        # claims), which Schemathesis counts as accepting a string; tests/test_outbox.py has the refusals.
        # Never anonymous: a key with the read scope (Schemathesis also checks that without it the answer is 401/403).
        reader = {"Authorization": api_key_header(new_key("read"))["HTTP_AUTHORIZATION"]}
        statuses = self.fuzz("GET", "/api/events", GenerationMode.POSITIVE, headers=reader)

        self.assertTrue({200, 400} <= set(statuses), statuses)
