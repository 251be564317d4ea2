import os
import re
import secrets
from unittest import mock

from django.test import SimpleTestCase, override_settings

from couponsite.settings import database_settings
from tests.helpers import ROOT, manage

PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "SECURE_SSL_REDIRECT": "1",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_PRELOAD": "1",
    # Admission tokens' own key (admission/tokens.py): 32 random bytes in base64url.
    "ADMISSION_SIGNING_KEYS": "k1:" + secrets.token_urlsafe(32),
}


class DeploySettingsTests(SimpleTestCase):
    def test_production_settings_pass_the_deploy_checks(self):
        result = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("no issues", result.stdout)

    def test_every_deploy_warning_of_a_partial_configuration_is_explained_in_the_operator_guide(self):
        guide = (ROOT / "docs" / "operator-guide.md").read_text()
        for label, environment in {
            "DEBUG off, a real key, the rest at defaults": {"DEBUG": "0", "SECRET_KEY": PRODUCTION["SECRET_KEY"]},
            "no SECRET_KEY": {"DEBUG": "0"},
            "HSTS without preload": {**PRODUCTION, "SECURE_HSTS_PRELOAD": "0"},
        }.items():
            with self.subTest(label):
                result = manage("check", "--deploy", **environment)
                self.assertEqual(result.returncode, 0, result.stderr)  # warnings only
                reported = re.findall(r"^\?: \((\w+\.\w+)\)", result.stderr, re.MULTILINE)
                self.assertTrue(reported, result.stderr)
                for check_id in reported:
                    self.assertIn(
                        f"`{check_id}`", guide, f"{check_id} is reported but the operator guide does not explain it"
                    )

    def test_missing_secret_key_is_flagged(self):
        result = manage("check", "--deploy", **{**PRODUCTION, "SECRET_KEY": ""})
        self.assertIn("security.W009", result.stderr)

    def test_invalid_boolean_is_refused_loudly(self):
        result = manage("check", DEBUG="maybe")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("DEBUG must be a boolean", result.stderr)

    def test_the_admin_time_zone_must_be_a_real_one(self):
        self.assertEqual(manage("check", ADMIN_TIME_ZONE="Europe/Paris").returncode, 0)
        result = manage("check", ADMIN_TIME_ZONE="Mars/Olympus_Mons")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("ADMIN_TIME_ZONE must be an IANA time zone", result.stderr)


@override_settings(DEBUG=False, ROOT_URLCONF="tests.urls_failing")
class ServerErrorTests(SimpleTestCase):
    def setUp(self):
        self.client.raise_request_exception = False

    def test_a_bug_is_a_json_500_without_internals(self):
        for path in ["/broken", "/api/broken"]:
            with self.subTest(path=path):
                response = self.client.get(path)
                self.assertEqual(response.status_code, 500)
                self.assertEqual(response["Content-Type"], "application/json")
                self.assertEqual(response.json(), {"error": "Internal server error.", "code": "internal_error"})
                self.assertNotIn(b"secret internals", response.content)


@override_settings(DEBUG=False)
class DisallowedHostTests(SimpleTestCase):
    def test_unknown_host_is_a_json_400(self):
        response = self.client.get("/health", HTTP_HOST="evil.example")
        self.assertEqual(response.status_code, 400)
        self.assertEqual(response.json(), {"error": "Bad request.", "code": "invalid"})


# The defaults, whatever the environment running the tests says.
@mock.patch.dict(
    os.environ,
    {
        "DATABASE_STATEMENT_TIMEOUT": "",
        "DATABASE_LOCK_TIMEOUT": "",
        "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT": "",
        "DATABASE_CONNECT_TIMEOUT": "",
    },
)
class DatabaseSettingsTests(SimpleTestCase):
    def test_postgres_connections_bound_statements_and_lock_waits(self):
        options = database_settings("postgres://u@db.example:5432/coupons")["OPTIONS"]
        self.assertEqual(
            options["options"],
            "-c statement_timeout=15000 -c lock_timeout=10000 -c idle_in_transaction_session_timeout=2000",
        )
        self.assertEqual(options["connect_timeout"], 5)

    def test_parameters_of_the_url_are_kept(self):
        options = database_settings("postgres://u@db.example:5432/coupons?sslmode=require")["OPTIONS"]
        self.assertEqual(options["sslmode"], "require")
        self.assertIn("statement_timeout", options["options"])
