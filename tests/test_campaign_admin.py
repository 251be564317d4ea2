"""The campaigns' admin: live counts, caps set once."""

from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import TestCase

from campaigns.models import Campaign, CampaignCoupon
from campaigns.services import create_campaign
from coupons.models import Coupon, ImportedCode
from coupons.services import claim_coupon, create_coupon


class CampaignAdminTests(TestCase):
    def setUp(self):
        staff = get_user_model().objects.create_superuser("admin", "a@example.com", "pw")
        self.client.force_login(staff)

    def test_the_list_shows_live_counts(self):
        create_campaign(name="BF", max_claims=10)
        create_coupon(name="TV", amount=5, options={"campaign": "BF"})
        claim_coupon(user_id="ann", coupon_name="TV")

        page = self.client.get("/admin/campaigns/campaign/").content.decode()

        self.assertIn("BF", page)
        self.assertInHTML('<td class="field-taken">1</td>', page)
        self.assertInHTML('<td class="field-remaining">9</td>', page)

    def test_created_in_the_admin_then_caps_read_only(self):
        answer = self.client.post(
            "/admin/campaigns/campaign/add/",
            {
                "name": "CM",
                "max_claims": "5",
                "max_claims_per_user": "1",
                "memberships-TOTAL_FORMS": "0",
                "memberships-INITIAL_FORMS": "0",
            },
        )
        self.assertEqual(answer.status_code, 302)
        campaign = Campaign.objects.get(name="CM")

        page = self.client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
        self.assertNotIn('name="max_claims"', page)


class CouponAddWithCampaignTests(TestCase):
    def setUp(self):
        staff = get_user_model().objects.create_superuser("admin", "a@example.com", "pw")
        self.client.force_login(staff)

    def test_the_add_form_offers_the_campaigns_and_the_coupon_joins_one(self):
        create_campaign(name="BF", max_claims=10)
        form = {"name": "TV", "amount": "5", "releases-TOTAL_FORMS": "0", "releases-INITIAL_FORMS": "0"}

        self.assertIn('<option value="BF">BF</option>', self.client.get("/admin/coupons/coupon/add/").content.decode())
        answer = self.client.post("/admin/coupons/coupon/add/", {**form, "campaign": "BF"})
        self.assertEqual(answer.status_code, 302, answer.content.decode()[-2000:])
        self.assertEqual(CampaignCoupon.objects.get().coupon.name, "TV")

        # An unknown campaign is a form error: nothing created.
        answer = self.client.post("/admin/coupons/coupon/add/", {**form, "name": "PC", "campaign": "nope"})
        self.assertEqual(answer.status_code, 200)
        self.assertFalse(Coupon.objects.filter(name="PC").exists())


class ImportCodesAdminTests(TestCase):
    def setUp(self):
        staff = get_user_model().objects.create_superuser("admin", "a@example.com", "pw")
        self.client.force_login(staff)
        self.coupon = create_coupon(name="POS", amount=1)
        self.url = f"/admin/coupons/coupon/{self.coupon.pk}/import-codes/"

    def test_a_file_is_imported_and_a_bad_one_reported_by_line(self):
        self.assertEqual(self.client.get(self.url).status_code, 200)

        bad = SimpleUploadedFile("codes.csv", b"code\nGOOD-0001\nab\n", content_type="text/csv")
        page = self.client.post(self.url, {"file": bad}).content.decode()
        self.assertIn("line 3: malformed", page)
        self.assertFalse(ImportedCode.objects.exists())

        good = SimpleUploadedFile("codes.jsonl", b'{"code": "GOOD-0001"}\n"GOOD-0002"\n')
        answer = self.client.post(self.url, {"file": good})
        self.assertEqual(answer.status_code, 302)
        self.assertEqual(Coupon.objects.get(pk=self.coupon.pk).amount, 2)
        self.assertEqual(claim_coupon(user_id="ann", coupon_name="POS").code, "GOOD0001")
