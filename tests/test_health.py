from contextlib import contextmanager

from django.db import connection
from django.test import TransactionTestCase

from coupons.models import Claim, Coupon
from coupons.services import create_coupon
from tests.helpers import free_port


@contextmanager
def unreachable_database():
    """Point this thread's connection at a database that is not there.

    A real connection failure, not a mock: a port nothing listens on
    (PostgreSQL), or a file in a directory that does not exist (SQLite).
    """
    saved = dict(connection.settings_dict)
    connection.close()
    if connection.vendor == "sqlite":
        connection.settings_dict["NAME"] = "/nonexistent-directory/coupons.sqlite3"
    else:
        connection.settings_dict.update(HOST="127.0.0.1", PORT=str(free_port()))
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


class HealthTests(TransactionTestCase):
    def test_healthy(self):
        response = self.client.get("/health")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.json(), {"status": "healthy"})

    def test_database_unreachable_then_back(self):
        with unreachable_database():
            response = self.client.get("/health")

        self.assertEqual(response.status_code, 503)
        self.assertEqual(response["Content-Type"], "application/json")
        self.assertEqual(response.json()["status"], "unhealthy")
        self.assertEqual(response.json()["code"], "unavailable")
        self.assertIn("Retry-After", response)

        self.assertEqual(self.client.get("/health").status_code, 200)


class DatabaseUnavailableApiTests(TransactionTestCase):
    def assert_unavailable(self, response):
        self.assertEqual(response.status_code, 503, response.content)
        self.assertEqual(response["Content-Type"], "application/json")
        self.assertEqual(response.json()["code"], "unavailable")
        self.assertEqual(list(response.json()), ["error", "code"])
        self.assertEqual(response["Retry-After"], "1")

    def test_api_answers_503_json_and_recovers(self):
        create_coupon(name="PROMO", amount=5)
        claim = {"user_id": "u1", "coupon_name": "PROMO"}

        with unreachable_database():
            self.assert_unavailable(self.client.post("/api/coupons/claim", claim, content_type="application/json"))
            self.assert_unavailable(
                self.client.post("/api/coupons", {"name": "NEW", "amount": 1}, content_type="application/json")
            )
            self.assert_unavailable(self.client.get("/api/coupons/PROMO"))

        # Nothing happened while the database was away; the same process recovers.
        self.assertFalse(Claim.objects.exists())
        self.assertEqual(Coupon.objects.count(), 1)
        response = self.client.post("/api/coupons/claim", claim, content_type="application/json")
        self.assertEqual(response.status_code, 201)
