"""What the fault tests share: a private cluster with the schema, and ways to look at it."""

import logging

from django.test import SimpleTestCase

from coupons.claim_codes import format_code
from tests.faults.cluster import PrivateCluster
from tests.helpers import manage

logger = logging.getLogger("tests.faults")


class FaultTestCase(SimpleTestCase):
    """Tests against the service in its server (tests/faults/service.py) on a private cluster of their own.

    The test process never touches the shared test database: it reads the
    private cluster directly with psycopg. `cluster_settings` are the
    cluster's server settings.
    """

    cluster_settings = {}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.cluster = cls.enterClassContext(PrivateCluster(**cls.cluster_settings))
        result = manage("migrate", "--noinput", DATABASE_URL=cls.cluster.url)
        if result.returncode != 0:
            raise RuntimeError(f"migrate failed on the private cluster:\n{result.stderr}")

    def claimers(self, coupon_name):
        """The users holding a claim on the coupon, read straight from the database."""
        with self.cluster.connect() as connection:
            rows = connection.execute(
                "SELECT claim.user_id FROM coupons_claim claim"
                " JOIN coupons_coupon coupon ON coupon.id = claim.coupon_id"
                " WHERE coupon.name = %s AND claim.status IN ('held', 'redeemed')",
                [coupon_name],
            ).fetchall()
        return sorted(user_id for (user_id,) in rows)

    def live_code(self, coupon_name, user_id):
        """The code of the user's live claim of the coupon, as the API prints it (grouped)."""
        with self.cluster.connect() as connection:
            (code,) = connection.execute(
                "SELECT claim.code FROM coupons_claim claim JOIN coupons_coupon coupon ON coupon.id = claim.coupon_id"
                " WHERE coupon.name = %s AND claim.user_id = %s AND claim.status IN ('held', 'redeemed')",
                [coupon_name, user_id],
            ).fetchone()
        return format_code(code)

    def remaining(self, coupon_name):
        with self.cluster.connect() as connection:
            return connection.execute(
                "SELECT remaining_amount FROM coupons_coupon WHERE name = %s", [coupon_name]
            ).fetchone()[0]

    def assert_unavailable(self, reply):
        """A clean 503: JSON with an "error" and the code "unavailable" (the API's and /health's), and Retry-After."""
        self.assertEqual(reply.status, 503, reply)
        self.assertTrue(reply.is_json, reply)
        self.assertIsInstance(reply.body["error"], str)
        self.assertEqual(reply.body["code"], "unavailable")
        self.assertIn("retry-after", reply.headers)

    def create_coupon(self, service, name, amount):
        reply = service.request("POST", "/api/coupons", {"name": name, "amount": amount})
        self.assertEqual(reply.status, 201, reply)
