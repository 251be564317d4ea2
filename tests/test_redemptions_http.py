"""The redemption endpoints against the served app: couponsite/serve.py (granian), DEBUG off, real HTTP.

Its access log on, at INFO: not one line of its output (granian's access log
and its own lines, the request lines) may carry a claim code.
"""

import http.client
import json

from django.contrib.auth import get_user_model
from django.db import connection
from django.test import TransactionTestCase
from rest_framework.authtoken.models import Token

from coupons.claim_codes import format_code
from coupons.models import Claim, ClaimStatus, RedemptionUndo
from tests.faults.service import Service
from tests.helpers import subprocess_database_url


class ServedRedemptionTests(TransactionTestCase):
    def setUp(self):
        if connection.vendor != "postgresql":
            self.skipTest("the server in another process needs a shared database: PostgreSQL")
        self.service = Service(
            subprocess_database_url(), WEB_CONCURRENCY="1", LOG_LEVEL="INFO", WEB_ACCESS_LOG="1"
        ).__enter__()
        self.addCleanup(self.service.__exit__, None, None, None)
        operator = get_user_model().objects.create_user("operator", is_staff=True)
        self.token = Token.objects.create(user=operator).key

    def send(self, method, path, body=None, *, raw=None, headers=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.service.port, timeout=30)
        try:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            try:
                connection.request(
                    method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})}
                )
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered (a 413) and closed before the whole body was sent: read the answer
            response = connection.getresponse()
            content = response.read()
        finally:
            connection.close()
        if response.status == 204:
            return 204, None
        self.assertEqual(response.getheader("Content-Type"), "application/json", content[:200])
        return response.status, json.loads(content)

    def test_the_journey_over_http_with_no_code_in_the_logs(self):
        self.assertEqual(self.send("POST", "/api/coupons", {"name": "PROMO", "amount": 2, "hold_seconds": 600})[0], 201)
        status, claim = self.send("POST", "/api/coupons/claim", {"user_id": "alice", "coupon_name": "PROMO"})
        self.assertEqual(status, 201)
        code = claim["code"]
        staff = {"Authorization": f"Token {self.token}"}

        status, redemption = self.send("POST", "/api/redemptions", {"code": code.lower(), "order_id": "order-1"})
        self.assertEqual((status, redemption["status"], redemption["order_id"]), (201, "redeemed", "order-1"))
        status, conflict = self.send("POST", "/api/redemptions", {"code": code.replace("-", "")})
        self.assertEqual((status, conflict["code"], conflict["order_id"]), (409, "already_redeemed", "order-1"))
        status, state = self.send("GET", f"/api/redemptions/{code.lower()}")
        self.assertEqual((status, state["status"], state["code"]), (200, "redeemed", code))
        self.assertEqual(self.send("DELETE", f"/api/redemptions/{code}")[0], 401)
        self.assertEqual(self.send("DELETE", f"/api/redemptions/{code}", headers=staff), (204, None))
        status, again = self.send("DELETE", f"/api/redemptions/{code}", headers=staff)
        self.assertEqual((status, again["code"]), (409, "not_redeemed"))
        self.assertEqual(Claim.objects.get().status, ClaimStatus.HELD)
        self.assertEqual(RedemptionUndo.objects.get().undone_by, "operator")

        # Bad input through the real server: clear JSON 4xx, never a 5xx, nothing changed.
        bad = [
            ("POST", "/api/redemptions", {"raw": json.dumps({"code": "A" * 10_000_000}).encode()}, 413),
            ("POST", "/api/redemptions", {"body": {"code": code[:-1] + "_"}}, 400),
            ("POST", "/api/redemptions", {"body": {"code": code[:-1] + "\x00"}}, 400),
            ("POST", "/api/redemptions", {"body": {"code": code, "coupon_name": "OTHER"}}, 404),
            # A long path reaches Django (granian refuses only lines over its 408 KiB buffer): malformed.
            ("GET", "/api/redemptions/" + "A" * 5000, {}, 400),
            ("GET", "/api/redemptions/" + code[:-1] + "%00", {}, 404),
            ("GET", "/api/redemptions/" + code[:-1] + "_", {}, 400),
        ]
        for method, path, body, expected in bad:
            with self.subTest(path=path[:40], body=str(body)[:40]):
                status, answer = self.send(method, path, **body)
                self.assertEqual(status, expected, answer)
                self.assertIn("code", answer)
        self.assertEqual(Claim.objects.get().status, ClaimStatus.HELD)

        output = self.service.output()
        self.assertIn("/api/redemptions/[code]", output)
        self.assertIn('GET /api/redemptions/[code] HTTP/1.1\\" 200', output)  # granian's access log
        flat = output.upper().replace("-", "")
        for secret in (code.replace("-", ""), code.replace("-", "")[:-1]):
            self.assertNotIn(secret, flat)
        self.assertIn(format_code(Claim.objects.get().code), code)
