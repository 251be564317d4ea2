import csv
import io
import json
import re

from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.db.models import F
from django.test import Client, TestCase
from django.test.utils import CaptureQueriesContext

from coupons.admin import CLAIMS_PER_PAGE
from coupons.models import Claim, Coupon
from coupons.selectors import EXPORT_CHUNK_SIZE
from coupons.services import claim_coupon, create_coupon
from tests.helpers import structlog_events

CHANGELIST = "/admin/coupons/coupon/"


def change_page(coupon):
    return f"/admin/coupons/coupon/{coupon.pk}/change/"


def sell(coupon, count, *, prefix="user_"):
    """`count` claims on the coupon in one statement (the claim path is tested elsewhere)."""
    Claim.objects.bulk_create(Claim(coupon=coupon, user_id=f"{prefix}{i}") for i in range(count))
    Coupon.objects.filter(pk=coupon.pk).update(remaining_amount=F("remaining_amount") - count)
    coupon.refresh_from_db()


class OperatorTestCase(TestCase):
    def setUp(self):
        self.operator = get_user_model().objects.create_superuser("operator", "op@example.com", "secret-password")
        self.client.force_login(self.operator)


class CouponListTests(OperatorTestCase):
    def test_operator_creates_a_coupon_and_sees_it_listed(self):
        self.assertEqual(self.client.get(f"{CHANGELIST}add/").status_code, 200)

        response = self.client.post(f"{CHANGELIST}add/", {"name": "ADMIN_PROMO", "amount": 10})

        self.assertEqual(response.status_code, 302, response.content[:2000])
        coupon = Coupon.objects.get(name="ADMIN_PROMO")
        self.assertEqual((coupon.amount, coupon.remaining_amount), (10, 10))
        self.assertContains(self.client.get(CHANGELIST), "ADMIN_PROMO")

    def test_stock_is_a_progress_bar_next_to_the_remaining_count(self):
        create_coupon(name="SUMMER", amount=3)
        claim_coupon(user_id="u1", coupon_name="SUMMER")
        claim_coupon(user_id="u2", coupon_name="SUMMER")

        response = self.client.get(CHANGELIST)

        self.assertContains(response, '<progress value="2" max="3" title="66% claimed"></progress> 2 / 3', html=True)
        row = response.context["cl"].result_list.get(name="SUMMER")
        self.assertEqual((row.claimed, row.remaining_amount), (2, 1))
        for column in ["Claimed", "Remaining amount", "Amount", "Created at"]:
            self.assertContains(response, column, msg_prefix=column)

    def test_search_by_name(self):
        create_coupon(name="SUMMER", amount=3)
        create_coupon(name="WINTER", amount=3)

        response = self.client.get(CHANGELIST, {"q": "SUMM"})

        self.assertEqual([coupon.name for coupon in response.context["cl"].result_list], ["SUMMER"])

    def test_filter_sold_out_or_available(self):
        create_coupon(name="GONE", amount=1)
        claim_coupon(user_id="u1", coupon_name="GONE")
        create_coupon(name="LEFT", amount=2)
        claim_coupon(user_id="u1", coupon_name="LEFT")

        for stock, expected in [("sold_out", ["GONE"]), ("available", ["LEFT"]), (None, ["LEFT", "GONE"])]:
            with self.subTest(stock=stock):
                response = self.client.get(CHANGELIST, {"stock": stock} if stock else {})
                self.assertEqual([coupon.name for coupon in response.context["cl"].result_list], expected)

    def test_the_list_never_reads_claims(self):
        """Stock comes from the coupon rows: the list costs the same with no claims or thousands."""
        quiet = create_coupon(name="QUIET", amount=5000)
        with CaptureQueriesContext(connection) as before:
            self.client.get(CHANGELIST)
        sell(quiet, 3000)

        with CaptureQueriesContext(connection) as after:
            response = self.client.get(CHANGELIST)

        self.assertContains(response, "3000 / 5000")
        self.assertEqual(len(after), len(before))
        self.assertFalse([query["sql"] for query in after if "coupons_claim" in query["sql"]])

    def test_sort_by_claimed(self):
        for name, sold in [("A", 2), ("B", 0), ("C", 1)]:
            sell(create_coupon(name=name, amount=5), sold)

        response = self.client.get(CHANGELIST, {"o": "2"})  # the "claimed" column

        self.assertEqual([coupon.name for coupon in response.context["cl"].result_list], ["B", "C", "A"])


class SameValidationAsTheApiTests(OperatorTestCase):
    CASES = [
        {"name": "PROMO", "amount": 5},
        {"name": "a/b? #%", "amount": 1},
        {"name": "TAKEN", "amount": 1},
        {"name": "", "amount": 1},
        {"name": "   ", "amount": 1},
        {"name": "a\nb", "amount": 1},
        {"name": "zero\u200bwidth", "amount": 1},
        {"name": "..", "amount": 1},
        {"name": "x" * 255, "amount": 1},
        {"name": "x" * 256, "amount": 1},
        {"name": "OK", "amount": 0},
        {"name": "OK", "amount": -1},
        {"name": "OK", "amount": 2**31 - 1},
        {"name": "OK", "amount": 2**31},
    ]

    def setUp(self):
        super().setUp()
        self.taken = create_coupon(name="TAKEN", amount=1)

    def take_new_coupons(self):
        """Names of the coupons created since setUp, which are then deleted."""
        new = Coupon.objects.exclude(pk=self.taken.pk)
        names = list(new.values_list("name", flat=True))
        new.delete()
        return names

    def test_admin_accepts_and_refuses_exactly_what_the_api_does(self):
        for fields in self.CASES:
            with self.subTest(fields=fields):
                api = self.client.post("/api/coupons", json.dumps(fields), content_type="application/json")
                api_created = self.take_new_coupons()
                admin = self.client.post(f"{CHANGELIST}add/", fields)
                admin_created = self.take_new_coupons()

                self.assertEqual(admin_created, api_created, (api.content, admin.content[:300]))
                self.assertEqual(api.status_code, 201 if api_created else 400 if fields["name"] != "TAKEN" else 409)
                self.assertEqual(admin.status_code, 302 if admin_created else 200)
                if not admin_created:
                    self.assertTrue(admin.context["adminform"].form.errors)


class CouponPageTests(OperatorTestCase):
    def test_claims_are_listed_newest_first_a_page_at_a_time(self):
        coupon = create_coupon(name="PROMO", amount=2 * CLAIMS_PER_PAGE + 10)
        sell(coupon, 2 * CLAIMS_PER_PAGE + 10)

        first = self.client.get(change_page(coupon))
        last = self.client.get(change_page(coupon), {"claims_page": 3})

        newest = f"user_{2 * CLAIMS_PER_PAGE + 9}"
        self.assertEqual(
            [claim["user_id"] for claim in first.context["claims_page"]][:2],
            [newest, f"user_{2 * CLAIMS_PER_PAGE + 8}"],
        )
        self.assertEqual(len(first.context["claims_page"]), CLAIMS_PER_PAGE)
        self.assertContains(first, f'<td class="claim-user-id">{newest}</td>', html=True)
        self.assertNotContains(first, '<td class="claim-user-id">user_0</td>', html=True)
        self.assertContains(first, f"Claims: {2 * CLAIMS_PER_PAGE + 10}, newest first")
        self.assertContains(first, '<a href="?claims_page=3#claims">3</a>', html=True)
        self.assertEqual(len(last.context["claims_page"]), 10)
        self.assertContains(last, '<td class="claim-user-id">user_0</td>', html=True)

    def test_page_costs_the_same_queries_with_one_claim_or_hundreds(self):
        small = create_coupon(name="SMALL", amount=1)
        sell(small, 1)
        large = create_coupon(name="LARGE", amount=500)
        sell(large, 500)

        with CaptureQueriesContext(connection) as small_queries:
            self.client.get(change_page(small))
        with CaptureQueriesContext(connection) as large_queries:
            response = self.client.get(change_page(large))

        self.assertEqual(response.status_code, 200)
        self.assertEqual(len(large_queries), len(small_queries), [q["sql"] for q in large_queries])
        # The counts per status (one GROUP BY), then one page of claims, not counted again.
        counts, claim_read = [q["sql"] for q in large_queries if 'FROM "coupons_claim"' in q["sql"]]
        self.assertIn("GROUP BY", counts)
        self.assertIn(f"LIMIT {CLAIMS_PER_PAGE}", claim_read)
        self.assertNotIn("COUNT", claim_read)

    def test_out_of_range_claims_page_shows_the_last_page(self):
        coupon = create_coupon(name="PROMO", amount=5)
        sell(coupon, 5)

        for page in ["99", "nonsense", "-1"]:
            with self.subTest(page=page):
                response = self.client.get(change_page(coupon), {"claims_page": page})
                self.assertEqual(response.status_code, 200)
                self.assertEqual(len(response.context["claims_page"]), 5)

    def test_coupon_without_claims(self):
        coupon = create_coupon(name="PROMO", amount=5)
        self.assertContains(self.client.get(change_page(coupon)), "Nobody has claimed this coupon yet.")

    def test_the_page_is_read_only(self):
        coupon = create_coupon(name="PROMO", amount=5)
        claim_coupon(user_id="alice", coupon_name="PROMO")

        response = self.client.get(change_page(coupon))
        self.client.post(change_page(coupon), {"name": "RENAMED", "amount": 1})

        self.assertContains(response, "alice")
        self.assertContains(response, "1 / 5")
        self.assertNotContains(response, 'name="name"')
        self.assertNotContains(response, 'name="amount"')
        self.assertNotContains(response, 'name="_save"')
        coupon.refresh_from_db()
        self.assertEqual((coupon.name, coupon.amount, coupon.remaining_amount), ("PROMO", 5, 4))

    def test_unclaimed_coupon_can_be_deleted_but_a_claimed_one_cannot(self):
        unclaimed = create_coupon(name="MISTAKE", amount=5)
        claimed = create_coupon(name="PROMO", amount=5)
        claim_coupon(user_id="alice", coupon_name="PROMO")

        self.assertEqual(self.client.get(f"{CHANGELIST}{claimed.pk}/delete/").status_code, 403)
        self.client.post(f"{CHANGELIST}{unclaimed.pk}/delete/", {"post": "yes"})

        self.assertEqual(list(Coupon.objects.values_list("name", flat=True)), ["PROMO"])
        actions = self.client.get(CHANGELIST).context["action_form"].fields["action"].choices
        self.assertEqual([name for name, _ in actions if name], ["export_claims_csv"])


class RestockTests(OperatorTestCase):
    def setUp(self):
        super().setUp()
        self.coupon = create_coupon(name="PROMO", amount=3)
        sell(self.coupon, 3)
        self.url = f"{CHANGELIST}{self.coupon.pk}/restock/"

    def assert_stock(self, amount, remaining_amount):
        self.coupon.refresh_from_db()
        self.assertEqual((self.coupon.amount, self.coupon.remaining_amount), (amount, remaining_amount))

    def test_restock_puts_a_sold_out_coupon_back_on_sale(self):
        page = self.client.get(change_page(self.coupon))
        self.assertContains(page, f'href="{self.url}"')
        form = self.client.get(self.url)
        self.assertContains(form, 'value="3"')

        with structlog_events() as events:
            response = self.client.post(self.url, {"amount": 10}, follow=True)

        expected = {
            "event": "coupon_restocked",
            "coupon": "PROMO",
            "amount_before": 3,
            "amount": 10,
            "remaining_amount": 7,
            "operator": "operator",
        }
        [restocked] = [event for event in events if event["logger"] == "coupons.admin"]
        self.assertLessEqual(expected.items(), restocked.items())
        self.assertRedirects(response, change_page(self.coupon))
        self.assert_stock(10, 7)
        self.assertContains(response, "Restocked: amount 3 → 10, 7 left.")
        self.assertEqual(LogEntry.objects.get().get_change_message(), "Restocked: amount 3 → 10, 7 left.")

    def test_amount_below_what_is_claimed_is_refused(self):
        response = self.client.post(self.url, {"amount": 2})

        self.assertEqual(response.status_code, 200)
        self.assertEqual(
            response.context["form"].errors["amount"],
            ["The amount cannot be lower than the 3 units already claimed."],
        )
        self.assert_stock(3, 0)

    def test_the_amount_follows_the_api_rules(self):
        for amount in ["0", "-1", str(2**31), "1.5", "ten", ""]:
            with self.subTest(amount=amount):
                response = self.client.post(self.url, {"amount": amount})
                self.assertEqual(response.status_code, 200)
                self.assertIn("amount", response.context["form"].errors)
        self.client.post(self.url, {"amount": str(2**31 - 1)})
        self.assert_stock(2**31 - 1, 2**31 - 4)

    def test_unknown_coupon(self):
        self.assertEqual(self.client.get(f"{CHANGELIST}999999/restock/").status_code, 404)


class ViewOnlyOperatorTests(TestCase):
    """Staff with only the view permission can watch and export, never restock."""

    def setUp(self):
        viewer = get_user_model().objects.create_user("viewer", password="secret-password", is_staff=True)
        viewer.user_permissions.add(Permission.objects.get(codename="view_coupon"))
        self.client.force_login(viewer)
        self.coupon = create_coupon(name="PROMO", amount=3)

    def test_no_restock(self):
        page = self.client.get(change_page(self.coupon))

        self.assertEqual(page.status_code, 200)
        self.assertNotContains(page, "/restock/")
        self.assertContains(page, "/claims.csv")
        self.assertEqual(self.client.post(f"{CHANGELIST}{self.coupon.pk}/restock/", {"amount": 9}).status_code, 403)
        self.coupon.refresh_from_db()
        self.assertEqual(self.coupon.amount, 3)


def read_csv(response):
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


class ClaimsCsvTests(OperatorTestCase):
    def test_a_coupons_claims_stream_as_csv(self):
        coupon = create_coupon(name="SUMMER SALE", amount=EXPORT_CHUNK_SIZE + 500)
        sell(coupon, EXPORT_CHUNK_SIZE + 500)  # more than one chunk from the database
        other = create_coupon(name="OTHER", amount=1)
        sell(other, 1, prefix="other_")

        response = self.client.get(f"{CHANGELIST}{coupon.pk}/claims.csv")

        self.assertEqual(response.status_code, 200)
        self.assertTrue(response.streaming)
        self.assertEqual(response["Content-Type"], "text/csv; charset=utf-8")
        self.assertEqual(response["Content-Disposition"], 'attachment; filename="SUMMER SALE-claims.csv"')
        rows = read_csv(response)
        self.assertEqual(rows[0], ["coupon", "user_id", "claimed_at", "code", "status", "redeemed_at", "order_id"])
        self.assertEqual(len(rows), 1 + EXPORT_CHUNK_SIZE + 500)
        codes = {row[3] for row in rows[1:]}
        self.assertEqual(len(codes), EXPORT_CHUNK_SIZE + 500)
        self.assertTrue(all(re.fullmatch(r"[0-9A-Z]{4}(-[0-9A-Z]{4}){3}", code) for code in codes))
        self.assertEqual({row[4] for row in rows[1:]}, {"held"})
        self.assertEqual([row[1] for row in rows[1:]], [f"user_{i}" for i in range(EXPORT_CHUNK_SIZE + 500)])
        self.assertEqual({row[0] for row in rows[1:]}, {"SUMMER SALE"})
        self.assertRegex(rows[1][2], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00$")

    def test_cells_that_a_spreadsheet_would_run_as_formulas_are_defused(self):
        coupon = create_coupon(name="=SUM(A1)", amount=6)
        for user_id in ["=HYPERLINK(x)", "+1", "-1", "@me", "plain", "a=b"]:
            claim_coupon(user_id=user_id, coupon_name=coupon.name)

        rows = read_csv(self.client.get(f"{CHANGELIST}{coupon.pk}/claims.csv"))

        self.assertEqual(
            [row[:2] for row in rows[1:]],
            [
                ["'=SUM(A1)", "'=HYPERLINK(x)"],
                ["'=SUM(A1)", "'+1"],
                ["'=SUM(A1)", "'-1"],
                ["'=SUM(A1)", "'@me"],
                ["'=SUM(A1)", "plain"],
                ["'=SUM(A1)", "a=b"],
            ],
        )

    def test_action_exports_the_selected_coupons(self):
        for name in ["A", "B", "C"]:
            sell(create_coupon(name=name, amount=2), 2, prefix=f"{name}_")
        selected = Coupon.objects.filter(name__in=["A", "C"]).values_list("pk", flat=True)

        response = self.client.post(
            CHANGELIST, {"action": "export_claims_csv", "_selected_action": [str(pk) for pk in selected]}
        )

        self.assertTrue(response.streaming)
        self.assertEqual(response["Content-Disposition"], 'attachment; filename="coupon-claims.csv"')
        self.assertEqual(
            [row[:2] for row in read_csv(response)[1:]],
            [["A", "A_0"], ["A", "A_1"], ["C", "C_0"], ["C", "C_1"]],
        )

    def test_unknown_coupon(self):
        self.assertEqual(self.client.get(f"{CHANGELIST}999999/claims.csv").status_code, 404)


class ClaimAdminTests(OperatorTestCase):
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
        for path in [CHANGELIST, f"{CHANGELIST}1/restock/", f"{CHANGELIST}1/claims.csv"]:
            with self.subTest(path=path):
                response = self.client.get(path)
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
