"""API keys for client applications (API_KEYS_REQUIRED): 401, 403, scopes, revocation delay, per-key rate limit."""

import json
import tempfile
import time
import uuid
from datetime import timedelta
from io import StringIO
from pathlib import Path
from unittest import mock

from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import SimpleTestCase, TestCase, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory
from rest_framework.views import APIView

from coupons import api_keys
from coupons.api.key_access import ApiKeyRequired
from coupons.api.throttling import ClaimRateThrottle
from coupons.api_keys import create_api_key
from coupons.models import API_KEY_SCOPES, Claim, ClientApiKey, Coupon
from coupons.services import create_coupon
from tests.helpers import JsonApiAssertions, manage, structlog_events

KEYS_TABLE = ClientApiKey._meta.db_table


def api_key_header(key):
    return {"HTTP_AUTHORIZATION": f"Api-Key {key}"}


def new_key(*scopes, **fields):
    return create_api_key(name="test client", scopes=set(scopes), **fields)[1]


class ApiKeyTestCase(JsonApiAssertions, TestCase):
    def setUp(self):
        create_coupon(name="PROMO", amount=10)

    # One request per endpoint and the scope it needs; each changes something if it gets through.
    def create(self, **extra):
        return self.post_json("/api/coupons", {"name": f"NEW {uuid.uuid4()}", "amount": 1}, **extra)

    def claim(self, user_id=None, **extra):
        body = {"user_id": user_id or str(uuid.uuid4()), "coupon_name": "PROMO"}
        return self.post_json("/api/coupons/claim", body, **extra)

    def read(self, **extra):
        return self.client.get("/api/coupons/PROMO", **extra)

    def read_claim(self, **extra):
        return self.client.get("/api/coupons/claim", **extra)

    ENDPOINTS = {"create": create, "claim": claim, "read": read, "read the coupon named claim": read_claim}
    SCOPE_OF = {"create": "create", "claim": "claim", "read": "read", "read the coupon named claim": "read"}

    def state(self):
        return list(Coupon.objects.values_list("name", "remaining_amount").order_by("name")), Claim.objects.count()


class ApiKeysOffTests(ApiKeyTestCase):
    def test_off_by_default_every_endpoint_is_open_and_any_key_is_ignored(self):
        create_coupon(name="claim", amount=1)
        for label, send in self.ENDPOINTS.items():
            for extra in [{}, api_key_header("not-a-key"), api_key_header("\x00")]:
                with self.subTest(label, extra=extra):
                    self.assertIn(send(self, **extra).status_code, {200, 201})


@override_settings(API_KEYS_REQUIRED=True)
class ApiKeysRequiredTests(ApiKeyTestCase):
    def setUp(self):
        super().setUp()
        create_coupon(name="claim", amount=1)

    def assert_refused(self, response, status_code):
        message = self.assert_error(response, status_code)
        if status_code == 401:
            self.assertEqual(response["WWW-Authenticate"], "Api-Key")
        return message

    def test_every_endpoint_refuses_a_missing_unknown_expired_or_revoked_key_with_401(self):
        all_scopes = set(API_KEY_SCOPES)
        revoked_row, revoked = create_api_key(name="revoked", scopes=all_scopes)
        ClientApiKey.objects.filter(pk=revoked_row.pk).update(revoked=True)
        expired = new_key(*all_scopes, expiry_date=timezone.now() - timedelta(seconds=1))
        valid = new_key(*all_scopes)
        credentials = {
            "no header": {},
            "another scheme": {"HTTP_AUTHORIZATION": f"Token {valid}"},
            "empty key": api_key_header(""),
            "malformed key": api_key_header("not-a-key"),
            "NUL": api_key_header(valid[:20] + "\x00" + valid[21:]),
            "unknown secret": api_key_header(valid[:9] + "x" * 32),
            "unknown prefix": api_key_header("x" * 8 + valid[8:]),
            "revoked": api_key_header(revoked),
            "expired": api_key_header(expired),
        }
        before = self.state()
        for label, send in self.ENDPOINTS.items():
            for credential, extra in credentials.items():
                with self.subTest(label, credential=credential):
                    message = self.assert_refused(send(self, **extra), 401)
                    if credential == "expired":
                        self.assertEqual(message, "This API key has expired.")
        self.assertEqual(self.state(), before)

    def test_a_key_without_the_endpoints_scope_is_a_403_and_changes_nothing(self):
        before = self.state()
        for label, send in self.ENDPOINTS.items():
            other_scopes = set(API_KEY_SCOPES) - {self.SCOPE_OF[label]}
            with self.subTest(label):
                self.assert_refused(send(self, **api_key_header(new_key(*other_scopes))), 403)
        self.assertEqual(self.state(), before)

    def test_a_key_with_the_endpoints_scope_gets_the_contracts_answer(self):
        expected = {"create": 201, "claim": 201, "read": 200, "read the coupon named claim": 200}
        for label, send in self.ENDPOINTS.items():
            with self.subTest(label):
                response = send(self, **api_key_header(new_key(self.SCOPE_OF[label])))
                self.assertEqual(response.status_code, expected[label], response.content)

    def test_one_key_may_hold_several_scopes(self):
        key = api_key_header(new_key("claim", "read"))
        self.assertEqual(self.claim("alice", **key).status_code, 201)
        self.assertEqual(self.read(**key).json()["claimed_by"], ["alice"])
        self.assert_refused(self.create(**key), 403)

    def test_the_claim_log_line_names_the_key_by_its_prefix(self):
        row, key = create_api_key(name="shop", scopes={"claim"})
        with structlog_events() as events:
            self.assertEqual(self.claim("alice", **api_key_header(key)).status_code, 201)
        [line] = [event for event in events if event["logger"] == "couponsite.request_logs"]
        self.assertEqual((line["claim"]["outcome"], line["api_key"]), ("success", row.prefix))

    def test_a_key_that_expires_stops_working_at_its_expiry_even_while_remembered(self):
        key = api_key_header(new_key("read", expiry_date=timezone.now() + timedelta(hours=1)))
        self.assertEqual(self.read(**key).status_code, 200)
        with mock.patch("django.utils.timezone.now", return_value=timezone.now() + timedelta(hours=1, seconds=1)):
            self.assert_refused(self.read(**key), 401)

    def test_health_metrics_schema_and_docs_stay_open(self):
        for path in ["/health", "/metrics", "/api/schema/", "/api/docs/"]:
            with self.subTest(path):
                self.assertEqual(self.client.get(path).status_code, 200)

    def test_schema_documents_the_key_and_its_401_and_403(self):
        schema = self.client.get("/api/schema/", {"format": "json"}).json()
        self.assertEqual(schema["components"]["securitySchemes"]["apiKeyAuth"]["type"], "apiKey")
        for path, method in [
            ("/api/coupons", "post"),
            ("/api/coupons/claim", "post"),
            ("/api/coupons/{name}", "get"),
        ]:
            with self.subTest(path=path, method=method):
                operation = schema["paths"][path][method]
                self.assertEqual(operation["security"], [{"apiKeyAuth": []}])
                self.assertLessEqual({"401", "403"}, set(operation["responses"]))


@override_settings(API_KEYS_REQUIRED=True, COUPON_CREATE_REQUIRES_STAFF=True)
class ApiKeysAndStaffCreationTests(ApiKeyTestCase):
    """Both on: a coupon is created by a staff user or with a key holding `create`."""

    def test_either_credential_creates(self):
        staff = get_user_model().objects.create_user("operator", password="pw", is_staff=True)
        self.assertEqual(
            self.create(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=staff).key}").status_code, 201
        )
        self.assertEqual(self.create(**api_key_header(new_key("create"))).status_code, 201)

    def test_neither_is_refused(self):
        shopper = get_user_model().objects.create_user("shopper", password="pw")
        response = self.create()
        self.assert_error(response, 401)
        self.assertEqual(response["WWW-Authenticate"], "Api-Key")
        self.assert_error(self.create(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=shopper).key}"), 403)
        self.assert_error(self.create(**api_key_header(new_key("claim", "read"))), 403)
        self.assertEqual(Coupon.objects.count(), 1)


@override_settings(API_KEYS_REQUIRED=True, API_KEY_CACHE_SECONDS=5)
class RememberedKeyTests(ApiKeyTestCase):
    """A verified key is remembered for API_KEY_CACHE_SECONDS: no query per request, revocation bites after that."""

    def setUp(self):
        super().setUp()
        self.clock = 1000.0
        self.enterContext(mock.patch.object(api_keys, "monotonic", lambda: self.clock))
        self.row, key = create_api_key(name="shop", scopes={"claim", "read"})
        self.key = api_key_header(key)

    def key_queries(self, send):
        with CaptureQueriesContext(connection) as queries:
            response = send()
        return response, [query["sql"] for query in queries if KEYS_TABLE in query["sql"]]

    def test_a_warm_key_costs_no_query(self):
        response, queries = self.key_queries(lambda: self.claim(**self.key))
        self.assertEqual((response.status_code, len(queries)), (201, 1))  # the first claim reads the key
        for _ in range(3):
            response, queries = self.key_queries(lambda: self.claim(**self.key))
            self.assertEqual((response.status_code, queries), (201, []))

    def test_a_revoked_key_works_until_the_cache_time_has_passed_then_is_refused(self):
        self.assertEqual(self.read(**self.key).status_code, 200)
        ClientApiKey.objects.filter(pk=self.row.pk).update(revoked=True)

        self.clock += 4.9
        self.assertEqual(self.read(**self.key).status_code, 200)
        self.clock += 0.1
        self.assert_error(self.read(**self.key), 401)

    def test_a_withdrawn_scope_bites_after_the_cache_time_too(self):
        self.assertEqual(self.claim(**self.key).status_code, 201)
        ClientApiKey.objects.filter(pk=self.row.pk).update(scope_claim=False)
        self.clock += 5
        self.assert_error(self.claim(**self.key), 403)

    @override_settings(API_KEY_CACHE_SECONDS=0)
    def test_zero_reads_the_key_on_every_request(self):
        for _ in range(2):
            response, queries = self.key_queries(lambda: self.read(**self.key))
            self.assertEqual((response.status_code, len(queries)), (200, 1))


@override_settings(API_KEYS_REQUIRED=True, API_KEY_CACHE_SECONDS=1)
class RevocationDelayTests(ApiKeyTestCase):
    def test_a_revocation_bites_within_the_cache_time_on_the_real_clock(self):
        row, key = create_api_key(name="shop", scopes={"read"})
        before_verification = time.monotonic()
        self.assertEqual(self.read(**api_key_header(key)).status_code, 200)  # verified and remembered
        ClientApiKey.objects.filter(pk=row.pk).update(revoked=True)
        while self.read(**api_key_header(key)).status_code == 200:
            self.assertLess(time.monotonic() - before_verification, 3, "the revocation never bit")
            time.sleep(0.02)
        # Remembered for the whole second, never longer than it takes to ask again.
        self.assertGreaterEqual(time.monotonic() - before_verification, 1)


@override_settings(API_KEYS_REQUIRED=True, CLAIM_RATE_LIMIT="", CLAIM_RATE_LIMIT_PER_KEY="3/m")
class PerKeyRateLimitTests(ApiKeyTestCase):
    def setUp(self):
        super().setUp()
        self.enterContext(
            override_settings(
                CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "keys"}}
            )
        )
        # Held still 20 s before a minute's end (tests/test_rate_limit.py).
        self.enterContext(mock.patch.object(ClaimRateThrottle, "timer", lambda *args: 1_000_000_000.0))

    def test_over_the_limit_a_key_gets_a_json_429_with_retry_after_and_claims_nothing(self):
        key = api_key_header(new_key("claim"))
        for i in range(3):
            self.assertEqual(self.claim(f"user_{i}", **key).status_code, 201)

        response = self.claim("user_3", **key)

        self.assertIn("throttled", self.assert_error(response, 429))
        self.assertEqual(response["Retry-After"], "20")
        self.assertFalse(Claim.objects.filter(user_id="user_3").exists())

    def test_each_key_has_its_own_count_whatever_the_address(self):
        first, second = api_key_header(new_key("claim")), api_key_header(new_key("claim"))
        for i in range(3):
            self.claim(f"a_{i}", REMOTE_ADDR="10.0.0.1", **first)
        self.assert_error(self.claim("a_3", REMOTE_ADDR="10.0.0.2", **first), 429)
        self.assertEqual(self.claim("b_0", REMOTE_ADDR="10.0.0.1", **second).status_code, 201)

    @override_settings(API_KEYS_REQUIRED=False)
    def test_without_keys_there_is_nothing_to_count_by(self):
        self.assertEqual({self.claim(f"user_{i}").status_code for i in range(5)}, {201})


@override_settings(API_KEYS_REQUIRED=True)
class ReusablePermissionTests(TestCase):
    """A later endpoint (e.g. releasing a claim) needs only its scope named: here, "release"."""

    class ReleaseView(ApiKeyRequired, APIView):
        api_key_scopes = {"DELETE": "release"}

        def delete(self, request):
            return Response(status=204)

    def send(self, key=None):
        headers = api_key_header(key) if key else {}
        request = APIRequestFactory().delete("/api/somewhere", **headers)
        return self.ReleaseView.as_view()(request)

    def test_release_scope(self):
        self.assertEqual(self.send().status_code, 401)
        self.assertEqual(self.send(new_key("claim", "read", "create")).status_code, 403)
        self.assertEqual(self.send(new_key("release")).status_code, 204)


class CreateApiKeyCommandTests(TestCase):
    def test_prints_the_key_alone_on_the_last_line_and_stores_only_its_hash(self):
        out = StringIO()
        call_command("create_api_key", "web-shop", "--scopes", "claim,read", stdout=out)
        key = out.getvalue().splitlines()[-1]

        row = ClientApiKey.objects.get()
        self.assertEqual((row.name, row.scopes, row.expiry_date), ("web-shop", {"claim", "read"}, None))
        self.assertEqual(ClientApiKey.objects.get_from_key(key), row)
        stored = json.dumps(list(ClientApiKey.objects.values()), default=str)
        self.assertNotIn(key.partition(".")[2], stored, "the secret part of the key is stored")
        with override_settings(API_KEYS_REQUIRED=True):
            create_coupon(name="PROMO", amount=1)
            self.assertEqual(self.client.get("/api/coupons/PROMO", **api_key_header(key)).status_code, 200)

    def test_expiry_date(self):
        call_command(
            "create_api_key", "temp", "--scopes", "read", "--expires", "2030-01-01T00:00:00Z", stdout=StringIO()
        )
        self.assertEqual(ClientApiKey.objects.get().expiry_date.year, 2030)

    def test_refuses_unknown_or_missing_scopes_and_bad_dates(self):
        for args in [
            ["--scopes", "claim,delete"],
            ["--scopes", ","],
            ["--scopes", "read", "--expires", "tomorrow"],
            ["--scopes", "read", "--expires", "2030-01-01T00:00:00"],  # no offset
        ]:
            with self.subTest(args=args), self.assertRaises(CommandError):
                call_command("create_api_key", "x", *args)
        self.assertFalse(ClientApiKey.objects.exists())


class CreateApiKeyProcessTests(SimpleTestCase):
    """As a script uses it: a fresh process on the project's settings, key taken with `tail -n 1`."""

    def test_the_last_line_is_the_key(self):
        with tempfile.TemporaryDirectory() as directory:
            database = {"DATABASE_URL": f"sqlite:///{Path(directory) / 'keys.sqlite3'}"}
            self.assertEqual(manage("migrate", "--noinput", **database).returncode, 0)
            result = manage("create_api_key", "script", "--scopes", "read", **database)
        self.assertEqual(result.returncode, 0, result.stderr)
        key = result.stdout.splitlines()[-1]
        self.assertRegex(key, r"^[A-Za-z0-9]{8}\.[A-Za-z0-9]{32}$")
        self.assertNotIn(key, result.stdout.splitlines()[0])


class ApiKeyAdminTests(JsonApiAssertions, TestCase):
    CHANGELIST = "/admin/coupons/clientapikey/"

    def setUp(self):
        self.operator = get_user_model().objects.create_superuser("operator", "op@example.com", "secret-password")
        self.client.force_login(self.operator)
        create_coupon(name="PROMO", amount=5)

    def create_in_admin(self, name, *scopes):
        fields = {"name": name, **{f"scope_{scope}": "on" for scope in scopes}}
        response = self.client.post(f"{self.CHANGELIST}add/", fields, follow=True)
        message = next(str(m) for m in response.context["messages"] if "The API key for" in str(m))
        return message.split(" is: ")[1].split(". ")[0]

    def use(self, key):
        with override_settings(API_KEYS_REQUIRED=True, API_KEY_CACHE_SECONDS=0):
            return self.client.get("/api/coupons/PROMO", **api_key_header(key)).status_code

    def test_an_operator_creates_a_key_shown_once_and_lists_it_with_its_scopes(self):
        key = self.create_in_admin("mobile app", "claim", "read")

        row = ClientApiKey.objects.get()
        self.assertEqual((row.name, row.scopes), ("mobile app", {"claim", "read"}))
        self.assertEqual(self.use(key), 200)
        listing = self.client.get(self.CHANGELIST)
        self.assertContains(listing, row.prefix)
        self.assertContains(listing, "mobile app")
        self.assertNotContains(listing, key)
        self.assertNotContains(self.client.get(f"{self.CHANGELIST}{row.pk}/change/"), key.partition(".")[2])

    def test_revoke_and_expire_actions(self):
        revoked, expired, kept = (self.create_in_admin(name, "read") for name in ["revoked", "expired", "kept"])
        by_name = dict(ClientApiKey.objects.values_list("name", "pk"))

        for action, name in [("revoke_keys", "revoked"), ("expire_keys_now", "expired")]:
            response = self.client.post(self.CHANGELIST, {"action": action, "_selected_action": [by_name[name]]})
            self.assertEqual(response.status_code, 302)

        self.assertEqual((self.use(revoked), self.use(expired), self.use(kept)), (401, 401, 200))
        self.assertTrue(ClientApiKey.objects.get(name="revoked").revoked)
        self.assertTrue(ClientApiKey.objects.get(name="expired").has_expired)

    def test_a_revoked_key_cannot_be_unrevoked_or_deleted(self):
        self.create_in_admin("gone", "read")
        row = ClientApiKey.objects.get()
        ClientApiKey.objects.filter(pk=row.pk).update(revoked=True)
        self.client.post(f"{self.CHANGELIST}{row.pk}/change/", {"name": "back", "revoked": "", "scope_read": "on"})
        self.assertTrue(ClientApiKey.objects.get().revoked)
        self.assertEqual(self.client.post(f"{self.CHANGELIST}{row.pk}/delete/", {"post": "yes"}).status_code, 403)
        self.assertTrue(ClientApiKey.objects.exists())
