import os
import uuid
from unittest import mock

from django.conf import settings
from django.test import Client, SimpleTestCase, TestCase, TransactionTestCase, override_settings

from coupons.api.throttling import ClaimRateThrottle
from coupons.models import Claim, Coupon
from coupons.services import create_coupon
from couponsite.settings import cache_settings
from tests.helpers import JsonApiAssertions, free_port, manage
from tests.stress.base import run_simultaneously

# Redis runs on the development and CI machines; TEST_REDIS_URL points elsewhere.
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def local_memory_cache():
    """A local-memory cache of its own (a fresh LOCATION), so no count carries over from another test."""
    return {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": str(uuid.uuid4())}}


def redis_cache(url):
    """The production Redis cache (REDIS_URL), under a key prefix of this test's own.

    Never clear() it: on Redis that empties the whole shared database.
    """
    caches = cache_settings(url)
    caches["default"]["KEY_PREFIX"] = f"couponsite-test-{uuid.uuid4()}"
    return caches


class RateLimitTestCase(JsonApiAssertions):
    def setUp(self):
        self.enterContext(override_settings(CACHES=local_memory_cache()))
        # The throttle's clock, held still so that no test straddles two windows
        # by chance: 20 s before a minute's end, on a second's boundary.
        self.now = 1_000_000_000.0
        self.enterContext(mock.patch.object(ClaimRateThrottle, "timer", lambda *args: self.now))
        create_coupon(name="PROMO", amount=1000)

    def claim(self, user_id, **extra):
        return self.post_json("/api/coupons/claim", {"user_id": user_id, "coupon_name": "PROMO"}, **extra)


@override_settings(CLAIM_RATE_LIMIT="")
class ClaimRateLimitOffTests(RateLimitTestCase, TestCase):
    def test_empty_means_no_limit(self):
        statuses = {self.claim(f"user_{i}").status_code for i in range(120)}
        self.assertEqual(statuses, {201})


@override_settings(CLAIM_RATE_LIMIT="3/m")
class ClaimRateLimitTests(RateLimitTestCase, TestCase):
    def test_over_the_limit_is_a_json_429_with_retry_after_and_claims_nothing(self):
        for i in range(3):
            self.assertEqual(self.claim(f"user_{i}").status_code, 201)

        response = self.claim("user_3")

        self.assertIn("throttled", self.assert_error(response, 429, "rate_limited"))
        self.assertEqual(response["Retry-After"], "20")  # the seconds left in the minute
        self.assertFalse(Claim.objects.filter(user_id="user_3").exists())
        self.assertEqual(Coupon.objects.get().remaining_amount, 997)

    def test_every_claim_counts_whatever_its_answer(self):
        self.assertEqual(self.claim("user_1").status_code, 201)
        self.assertEqual(self.claim("user_1").status_code, 409)
        self.assertEqual(self.claim("user_1").status_code, 409)
        self.assert_error(self.claim("user_2"), 429, "rate_limited")

    def test_each_client_address_has_its_own_limit(self):
        for i in range(3):
            self.claim(f"a_{i}", REMOTE_ADDR="10.0.0.1")
        self.assert_error(self.claim("a_3", REMOTE_ADDR="10.0.0.1"), 429, "rate_limited")
        self.assertEqual(self.claim("b_0", REMOTE_ADDR="10.0.0.2").status_code, 201)

    def test_a_forged_forwarded_for_header_does_not_dodge_the_limit(self):
        for i in range(3):
            self.claim(f"user_{i}", HTTP_X_FORWARDED_FOR=f"192.0.2.{i}")
        self.assert_error(self.claim("user_3", HTTP_X_FORWARDED_FOR="192.0.2.99"), 429, "rate_limited")

    @override_settings(REST_FRAMEWORK={**settings.REST_FRAMEWORK, "NUM_PROXIES": 1})
    def test_behind_a_trusted_proxy_the_forwarded_address_is_the_client(self):
        for i in range(3):
            self.claim(f"a_{i}", HTTP_X_FORWARDED_FOR="198.51.100.7")
        self.assert_error(self.claim("a_3", HTTP_X_FORWARDED_FOR="198.51.100.7"), 429, "rate_limited")
        self.assertEqual(self.claim("b_0", HTTP_X_FORWARDED_FOR="198.51.100.8").status_code, 201)

    def test_reads_and_coupon_creation_are_not_limited(self):
        create_coupon(name="claim", amount=1)
        for i in range(5):
            self.assertEqual(self.client.get("/api/coupons/claim").status_code, 200)
            self.assertEqual(self.client.get("/api/coupons/PROMO").status_code, 200)
            self.assertEqual(self.post_json("/api/coupons", {"name": f"NEW {i}", "amount": 1}).status_code, 201)

    @override_settings(CLAIM_RATE_LIMIT="2/s")
    def test_the_next_window_lets_claims_through_again(self):
        self.claim("user_1")
        self.claim("user_2")
        response = self.claim("user_3")
        self.assert_error(response, 429, "rate_limited")
        self.assertEqual(response["Retry-After"], "1")

        self.now += 1

        self.assertEqual(self.claim("user_3").status_code, 201)


class ClaimRateLimitBurstTests(RateLimitTestCase, TransactionTestCase):
    """Simultaneous claims from one client: the limit holds exactly, in local memory and in Redis."""

    def assert_burst_limited(self, caches):
        body = {"coupon_name": "PROMO"}

        def claim(user_id):
            response = Client().post(
                "/api/coupons/claim", {**body, "user_id": user_id}, content_type="application/json"
            )
            return response.status_code

        with override_settings(CLAIM_RATE_LIMIT="5/m", CACHES=caches):
            statuses = run_simultaneously([lambda i=i: claim(f"user_{i}") for i in range(20)])

        self.assertEqual(sorted(statuses), [201] * 5 + [429] * 15)
        self.assertEqual(Claim.objects.count(), 5)

    def test_local_memory(self):
        self.assert_burst_limited(local_memory_cache())

    def test_redis(self):
        self.assert_burst_limited(redis_cache(TEST_REDIS_URL))

    def test_unreachable_redis_lets_claims_through_and_logs(self):
        unreachable = redis_cache(f"redis://127.0.0.1:{free_port()}/0")
        with override_settings(CLAIM_RATE_LIMIT="1/m", CACHES=unreachable), self.assertLogs("django_redis", "ERROR"):
            statuses = [self.claim(f"user_{i}").status_code for i in range(3)]
        self.assertEqual(statuses, [201, 201, 201])


class ClaimRateLimitSettingTests(SimpleTestCase):
    def test_off_unless_configured(self):
        result = manage(
            "shell",
            "--verbosity=0",
            "-c",
            "from django.conf import settings; print(repr(settings.CLAIM_RATE_LIMIT))",
            CLAIM_RATE_LIMIT=None,
        )
        self.assertEqual(result.stdout.strip(), "''", result.stderr)

    def test_a_malformed_limit_is_refused_at_startup(self):
        for value in ["100/week", "fast"]:
            with self.subTest(value=value):
                result = manage("check", CLAIM_RATE_LIMIT=value)
                self.assertNotEqual(result.returncode, 0)
                self.assertIn("CLAIM_RATE_LIMIT must look like", result.stderr)
