from django.contrib.auth import get_user_model
from django.test import Client, TestCase

from coupons.models import Claim, Coupon
from coupons.services import claim_coupon, create_coupon

# The coupon page's read-only claims inline still posts an (empty) formset.
CLAIMS_INLINE = {"claims-TOTAL_FORMS": "0", "claims-INITIAL_FORMS": "0"}


class CouponAdminTests(TestCase):
    def setUp(self):
        self.operator = get_user_model().objects.create_superuser("operator", "op@example.com", "secret-password")
        self.client.force_login(self.operator)

    def add_coupon(self, **fields):
        return self.client.post("/admin/coupons/coupon/add/", {**fields, **CLAIMS_INLINE})

    def test_operator_creates_a_coupon_and_sees_it_listed(self):
        self.assertEqual(self.client.get("/admin/coupons/coupon/add/").status_code, 200)

        response = self.add_coupon(name="ADMIN_PROMO", amount=10)

        self.assertEqual(response.status_code, 302, response.content[:2000])
        coupon = Coupon.objects.get(name="ADMIN_PROMO")
        self.assertEqual((coupon.amount, coupon.remaining_amount), (10, 10))
        changelist = self.client.get("/admin/coupons/coupon/")
        self.assertContains(changelist, "ADMIN_PROMO")

    def test_changelist_shows_stock_and_claim_count_and_searches_by_name(self):
        create_coupon(name="SUMMER", amount=3)
        create_coupon(name="WINTER", amount=3)
        claim_coupon(user_id="u1", coupon_name="SUMMER")
        claim_coupon(user_id="u2", coupon_name="SUMMER")

        response = self.client.get("/admin/coupons/coupon/", {"q": "SUMM"})

        self.assertContains(response, "SUMMER")
        self.assertNotContains(response, "WINTER")
        row = response.context["cl"].result_list.get(name="SUMMER")
        self.assertEqual((row.remaining_amount, row.claim_count), (1, 2))
        for column in ["Amount", "Remaining amount", "Claims", "Created at"]:
            self.assertContains(response, column, msg_prefix=column)

    def test_admin_applies_the_api_validation(self):
        create_coupon(name="TAKEN", amount=1)
        for fields in [
            {"name": "TAKEN", "amount": 1},
            {"name": "", "amount": 1},
            {"name": "a\nb", "amount": 1},
            {"name": "..", "amount": 1},
            {"name": "x" * 256, "amount": 1},
            {"name": "OK", "amount": 0},
            {"name": "OK", "amount": 2**31},
        ]:
            with self.subTest(fields=fields):
                response = self.add_coupon(**fields)
                self.assertEqual(response.status_code, 200)  # the form again, with errors
                self.assertTrue(response.context["adminform"].form.errors)
        self.assertEqual(Coupon.objects.count(), 1)

    def test_coupon_page_shows_claims_read_only(self):
        coupon = create_coupon(name="PROMO", amount=5)
        claim_coupon(user_id="alice", coupon_name="PROMO")

        response = self.client.get(f"/admin/coupons/coupon/{coupon.pk}/change/")

        self.assertContains(response, "alice")
        self.assertNotContains(response, 'name="name"')  # fixed once created
        self.assertNotContains(response, 'name="claims-0-user_id"')

    def test_claims_are_browsable_but_never_made_by_hand(self):
        create_coupon(name="PROMO", amount=5)
        claim = claim_coupon(user_id="alice", coupon_name="PROMO")

        listing = self.client.get("/admin/coupons/claim/", {"q": "ali", "coupon__id__exact": claim.coupon_id})
        self.assertContains(listing, "alice")
        self.assertEqual(self.client.get("/admin/coupons/claim/add/").status_code, 403)
        self.client.post(f"/admin/coupons/claim/{claim.pk}/change/", {"user_id": "mallory"})
        self.client.post(f"/admin/coupons/claim/{claim.pk}/delete/", {"post": "yes"})
        self.assertEqual(list(Claim.objects.values_list("user_id", flat=True)), ["alice"])


class AdminAccessTests(TestCase):
    def test_admin_needs_a_staff_login(self):
        response = self.client.get("/admin/coupons/coupon/")
        self.assertEqual(response.status_code, 302)
        self.assertIn("/admin/login/", response["Location"])

    def test_a_non_staff_user_cannot_log_in(self):
        get_user_model().objects.create_user("shopper", password="secret-password")
        response = self.client.post("/admin/login/", {"username": "shopper", "password": "secret-password"})
        self.assertEqual(response.status_code, 200)  # the login form again
        self.assertFalse(response.context["form"].is_valid())
        self.assertEqual(self.client.get("/admin/coupons/coupon/").status_code, 302)

    def test_admin_keeps_csrf(self):
        get_user_model().objects.create_superuser("operator", "op@example.com", "secret-password")
        client = Client(enforce_csrf_checks=True)
        response = client.post("/admin/login/", {"username": "operator", "password": "secret-password"})
        self.assertEqual(response.status_code, 403)
