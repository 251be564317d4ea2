"""Which middleware a request meets: the admin's pages the full stack, everything else without sessions,
authentication and messages (couponsite/middleware.py: AdminOnly)."""

import json

from django.contrib.auth.models import User
from django.test import TestCase
from rest_framework.renderers import JSONRenderer

from coupons.services import create_coupon


class RequestStackTests(TestCase):
    def test_the_api_health_and_metrics_run_without_sessions_users_or_messages(self):
        create_coupon(name="STACK", amount=5)
        requests = [
            self.client.post(
                "/api/coupons/claim", {"user_id": "alice", "coupon_name": "STACK"}, content_type="application/json"
            ),
            self.client.get("/api/coupons/STACK"),
            # Any path outside the admin, whatever view serves it (the redemptions, added later, included).
            self.client.post("/api/redemptions", {}, content_type="application/json"),
            self.client.get("/health"),
            self.client.get("/metrics"),
        ]
        for response in requests:
            with self.subTest(path=response.wsgi_request.path):
                for attribute in ("session", "_messages"):
                    self.assertFalse(hasattr(response.wsgi_request, attribute), attribute)
                # No lazy user of Django's auth (DRF's views set None: no authentication by default).
                self.assertIsNone(getattr(response.wsgi_request, "user", None))

    def test_the_admin_keeps_its_full_stack(self):
        User.objects.create_superuser("root", password="secret-password-1")
        self.client.login(username="root", password="secret-password-1")
        response = self.client.get("/admin/")
        self.assertEqual(response.status_code, 200)
        self.assertTrue(response.wsgi_request.user.is_superuser)
        self.assertTrue(hasattr(response.wsgi_request, "session"))
        self.assertTrue(hasattr(response.wsgi_request, "_messages"))

    def test_an_api_view_that_accepts_the_admin_session_still_reads_it(self):
        # Release (and a redemption's undo: tests/test_redemptions.py) accepts a staff user's admin session (with
        # its CSRF token): the session is loaded for it.
        coupon = create_coupon(name="RELEASE ME", amount=5)
        self.client.post(
            "/api/coupons/claim", {"user_id": "bob", "coupon_name": coupon.name}, content_type="application/json"
        )
        User.objects.create_superuser("root", password="secret-password-1")
        self.client.login(username="root", password="secret-password-1")
        response = self.client.delete("/api/coupons/RELEASE ME/claims/bob")
        self.assertEqual(response.status_code, 204, response.content)
        self.assertTrue(response.wsgi_request.user.is_superuser)


class ClaimViewJsonTests(TestCase):
    """The claim view parses and renders with orjson (coupons/api/views.py: ClaimApi); its answers are the bytes
    DRF's own JSON renderer writes for the same data, and its parser refuses what DRF's refuses."""

    def test_every_answer_is_the_bytes_drfs_renderer_writes(self):
        create_coupon(name="Café ☕ / 50%", amount=1)
        bodies = [
            {"user_id": "zoë 👩‍👩‍👧", "coupon_name": "Café ☕ / 50%"},  # 201: non-ASCII both ways
            {"user_id": "zoë 👩‍👩‍👧", "coupon_name": "Café ☕ / 50%"},  # 409
            {"user_id": "bob", "coupon_name": "Café ☕ / 50%"},  # 400 out_of_stock
            {"user_id": "bob", "coupon_name": "nowhere"},  # 404
            {"user_id": 7, "coupon_name": "Café ☕ / 50%"},  # 400 invalid, DRF's field message
        ]
        for body in bodies:
            response = self.client.post("/api/coupons/claim", body, content_type="application/json")
            with self.subTest(status=response.status_code):
                self.assertEqual(response.content, JSONRenderer().render(json.loads(response.content)))
                self.assertEqual(response["Content-Type"], "application/json")

    def test_what_drfs_parser_refuses_it_refuses(self):
        for body in ["{", '{"user_id": NaN, "coupon_name": "x"}', "[" * 5_000, '{"user_id": "a"} trailing']:
            with self.subTest(body=body[:40]):
                response = self.client.post("/api/coupons/claim", body, content_type="application/json")
                self.assertEqual((response.status_code, response.json()["code"]), (400, "invalid"))
