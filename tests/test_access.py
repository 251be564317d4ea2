from django.contrib.auth import get_user_model
from django.test import Client, TestCase, override_settings
from rest_framework.authtoken.models import Token

from coupons.models import Coupon
from coupons.services import create_coupon
from tests.helpers import JsonApiAssertions

NEW_COUPON = {"name": "PROMO", "amount": 10}


def make_user(username, **flags):
    return get_user_model().objects.create_user(username, password="secret-password", **flags)


def token_header(user):
    return {"HTTP_AUTHORIZATION": f"Token {Token.objects.create(user=user).key}"}


class UnrestrictedCouponCreationTests(JsonApiAssertions, TestCase):
    """The default: the contract's anonymous POST /api/coupons, whatever credentials come along."""

    def test_anonymous_creates(self):
        self.assertEqual(self.post_json("/api/coupons", NEW_COUPON).status_code, 201)

    def test_credentials_are_ignored(self):
        staff = make_user("operator", is_staff=True)
        csrf_client = Client(enforce_csrf_checks=True)
        csrf_client.force_login(staff)
        for label, client, extra in [
            ("bogus token", self.client, {"HTTP_AUTHORIZATION": "Token not-a-token"}),
            ("admin session without a CSRF token", csrf_client, {}),
        ]:
            with self.subTest(label):
                self.client = client
                response = self.post_json("/api/coupons", {"name": label, "amount": 1}, **extra)
                self.assertEqual(response.status_code, 201, response.content)


@override_settings(COUPON_CREATE_REQUIRES_STAFF=True)
class StaffOnlyCouponCreationTests(JsonApiAssertions, TestCase):
    def test_anonymous_is_a_json_401_naming_the_scheme(self):
        response = self.post_json("/api/coupons", NEW_COUPON)
        self.assert_error(response, 401, "unauthorized")
        self.assertEqual(response["WWW-Authenticate"], "Token")
        self.assertFalse(Coupon.objects.exists())

    def test_invalid_token_is_a_401(self):
        self.assert_error(
            self.post_json("/api/coupons", NEW_COUPON, HTTP_AUTHORIZATION="Token not-a-token"), 401, "unauthorized"
        )
        self.assertFalse(Coupon.objects.exists())

    def test_inactive_staff_token_is_a_401(self):
        extra = token_header(make_user("gone", is_staff=True, is_active=False))
        self.assert_error(self.post_json("/api/coupons", NEW_COUPON, **extra), 401, "unauthorized")

    def test_non_staff_token_is_a_403(self):
        self.assert_error(
            self.post_json("/api/coupons", NEW_COUPON, **token_header(make_user("shopper"))), 403, "forbidden"
        )
        self.assertFalse(Coupon.objects.exists())

    def test_staff_token_creates(self):
        response = self.post_json("/api/coupons", NEW_COUPON, **token_header(make_user("operator", is_staff=True)))
        self.assertEqual(response.status_code, 201, response.content)
        self.assertTrue(Coupon.objects.filter(name="PROMO").exists())

    def test_staff_session_creates_with_its_csrf_token_only(self):
        self.client = Client(enforce_csrf_checks=True)
        self.client.force_login(make_user("operator", is_staff=True))

        self.assert_error(self.post_json("/api/coupons", NEW_COUPON), 403, "forbidden")
        self.assertFalse(Coupon.objects.exists())

        self.client.get("/admin/")  # sets the CSRF cookie, as the admin's pages do
        csrf = {"HTTP_X_CSRFTOKEN": self.client.cookies["csrftoken"].value}
        self.assertEqual(self.post_json("/api/coupons", NEW_COUPON, **csrf).status_code, 201)

    def test_claims_and_reads_stay_anonymous(self):
        create_coupon(name="PROMO", amount=1)
        response = self.post_json("/api/coupons/claim", {"user_id": "user_1", "coupon_name": "PROMO"})
        self.assertEqual(response.status_code, 201)
        self.assertEqual(self.client.get("/api/coupons/PROMO").status_code, 200)

    def test_schema_documents_the_security_schemes(self):
        schema = self.client.get("/api/schema/", {"format": "json"}).json()
        # apiKeyAuth: a release takes a `release` key whether or not keys are required.
        self.assertEqual(set(schema["components"]["securitySchemes"]), {"tokenAuth", "cookieAuth", "apiKeyAuth"})
        self.assertEqual(schema["paths"]["/api/coupons"]["post"]["security"], [{"tokenAuth": []}, {"cookieAuth": []}])
        self.assertEqual(schema["paths"]["/api/coupons/claim"]["post"]["security"], [{}])  # anonymous
