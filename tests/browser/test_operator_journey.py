"""An operator runs a flash sale in the admin, in a real browser, while users claim through the API."""

import contextlib
import csv
import io
import os
import subprocess
import sys
from datetime import timedelta

from playwright.sync_api import expect

from coupons.models import Coupon
from coupons.selectors import database_now
from tests.helpers import ROOT, subprocess_database_url

PASSWORD = "secret-password"


def claim(page, base_url, user_id, coupon_name):
    response = page.request.post(f"{base_url}/api/coupons/claim", data={"user_id": user_id, "coupon_name": coupon_name})
    return response.status


def coupon_row(page, name):
    return page.locator("#result_list tbody tr", has=page.get_by_role("link", name=name, exact=True))


def log_in(page, base_url, django_user_model, screenshot=None):
    django_user_model.objects.create_superuser("operator", "op@example.com", PASSWORD)
    page.goto(f"{base_url}/admin/")
    expect(page).to_have_url(f"{base_url}/admin/login/?next=/admin/")
    page.get_by_label("Username").fill("operator")
    page.get_by_label("Password").fill(PASSWORD)
    if screenshot:
        page.screenshot(path=screenshot)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Site administration")).to_be_visible()


def test_operator_runs_a_flash_sale(page, live_server, django_user_model, artifacts, screenshot):
    base_url = live_server.url

    # Log in as staff.
    log_in(page, base_url, django_user_model, screenshot=artifacts / "01-admin-login.png")

    # Create a coupon.
    page.goto(f"{base_url}/admin/coupons/coupon/add/")
    page.get_by_label("Name").fill("FLASH SALE")
    page.get_by_label("Amount").fill("3")
    screenshot(page, "02-coupon-add.png")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    assert Coupon.objects.get(name="FLASH SALE").remaining_amount == 3

    # Users claim it through the API.
    assert [claim(page, base_url, user, "FLASH SALE") for user in ["alice", "bob", "alice"]] == [201, 201, 409]

    # The list shows the stock as a progress bar and the remaining count.
    page.goto(f"{base_url}/admin/coupons/coupon/")
    row = coupon_row(page, "FLASH SALE")
    expect(row.locator("td.field-stock")).to_have_text("2 / 3")
    expect(row.locator("td.field-stock progress")).to_have_attribute("value", "2")
    expect(row.locator("td.field-remaining_amount")).to_have_text("1")
    screenshot(page, "03-coupon-list.png", docs_name="coupon-list.png")

    # The coupon's page lists its claimers, newest first.
    row.get_by_role("link", name="FLASH SALE").click()
    claimers = page.locator("#claims td.claim-user-id")
    expect(claimers).to_have_text(["bob", "alice"])
    expect(page.locator("#claims h2")).to_have_text("Claims: 2, newest first")
    screenshot(page, "04-coupon-claims.png", docs_name="coupon-page.png", full_page=True)

    # Export the claims as CSV.
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Export claims (CSV)").click()
    download = download_info.value
    assert download.suggested_filename == "FLASH SALE-claims.csv"
    download.save_as(artifacts / "flash-sale-claims.csv")
    rows = list(csv.reader(io.StringIO((artifacts / "flash-sale-claims.csv").read_text())))
    assert [row[:2] for row in rows] == [["coupon", "user_id"], ["FLASH SALE", "alice"], ["FLASH SALE", "bob"]]

    # Restock: never below what is claimed, then up to five.
    page.get_by_role("link", name="Restock").click()
    page.get_by_label("New amount").fill("1")
    page.get_by_role("button", name="Restock").click()
    expect(page.locator(".errorlist")).to_have_text("The amount cannot be lower than the 2 units already claimed.")
    screenshot(page, "05-restock-refused.png", docs_name="restock-refused.png")
    page.get_by_label("New amount").fill("5")
    page.get_by_role("button", name="Restock").click()
    expect(page.locator(".messagelist")).to_contain_text("Restocked: amount 3 → 5, 3 left.")
    expect(page.locator(".field-remaining_amount .readonly")).to_have_text("3")

    # Sell out, and find it under the "sold out" filter.
    assert [claim(page, base_url, user, "FLASH SALE") for user in ["carol", "dave", "erin", "frank"]] == [
        201,
        201,
        201,
        400,
    ]
    page.goto(f"{base_url}/admin/coupons/coupon/")
    page.locator('details[data-filter-title="stock"]').get_by_role("link", name="Sold out").click()
    expect(coupon_row(page, "FLASH SALE").locator("td.field-stock")).to_have_text("5 / 5")
    expect(coupon_row(page, "FLASH SALE").locator("td.field-remaining_amount")).to_have_text("0")
    screenshot(page, "06-coupon-list-sold-out.png")


def test_operator_schedules_a_sale_watches_it_open_and_releases_a_claim(
    page, live_server, django_user_model, screenshot
):
    base_url = live_server.url
    log_in(page, base_url, django_user_model)

    # Schedule a sale a few seconds ahead (the admin's time zone is UTC here).
    starts_at = (database_now() + timedelta(seconds=6)).replace(microsecond=0) + timedelta(seconds=1)
    page.goto(f"{base_url}/admin/coupons/coupon/add/")
    page.get_by_label("Name").fill("MIDNIGHT SALE")
    page.get_by_label("Amount").fill("2")
    page.locator("#id_starts_at_0").fill(starts_at.strftime("%Y-%m-%d"))
    page.locator("#id_starts_at_1").fill(starts_at.strftime("%H:%M:%S"))
    screenshot(page, "07-coupon-add-scheduled.png")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    assert Coupon.objects.get(name="MIDNIGHT SALE").starts_at == starts_at

    # Before the start: listed as scheduled, and claims are refused with a time to wait.
    page.goto(f"{base_url}/admin/coupons/coupon/?status=scheduled")
    expect(coupon_row(page, "MIDNIGHT SALE").locator("td.field-status")).to_have_text("Scheduled")
    early = page.request.post(
        f"{base_url}/api/coupons/claim", data={"user_id": "early", "coupon_name": "MIDNIGHT SALE"}
    )
    assert (early.status, early.json()["code"]) == (403, "sale_not_started")
    assert 1 <= int(early.headers["retry-after"]) <= 7

    # Watch it open: the list shows it live once the database's clock passes the start.
    for _ in range(60):
        if page.request.get(f"{base_url}/api/coupons/MIDNIGHT%20SALE").json()["status"] == "live":
            break
        page.wait_for_timeout(250)
    page.goto(f"{base_url}/admin/coupons/coupon/?status=live")
    expect(coupon_row(page, "MIDNIGHT SALE").locator("td.field-status")).to_have_text("Live")
    screenshot(page, "08-coupon-list-live.png")
    assert [claim(page, base_url, user, "MIDNIGHT SALE") for user in ["alice", "bob", "carol"]] == [201, 201, 400]

    # Release alice's claim from the claims list, giving a reason.
    page.goto(f"{base_url}/admin/coupons/claim/?q=alice")
    page.locator("#result_list input.action-select").first.check()
    page.locator("select[name=action]").select_option("release_selected_claims")
    page.get_by_role("button", name="Go").click()
    expect(page.locator("#claims-to-release")).to_contain_text("alice — MIDNIGHT SALE")
    page.get_by_label("Reason").fill("order cancelled")
    screenshot(page, "09-release-reason.png", docs_name="release-reason.png")
    page.get_by_role("button", name="Release").click()
    expect(page.locator(".messagelist")).to_contain_text("Released 1 claim(s)")

    # The stock came back, and the coupon's page shows the release.
    page.goto(f"{base_url}/admin/coupons/coupon/")
    row = coupon_row(page, "MIDNIGHT SALE")
    expect(row.locator("td.field-remaining_amount")).to_have_text("1")
    expect(row.locator("td.field-status")).to_have_text("Live")
    row.get_by_role("link", name="MIDNIGHT SALE").click()
    releases = page.locator("#releases-group")
    expect(releases).to_contain_text("alice")
    expect(releases).to_contain_text("order cancelled")
    screenshot(page, "10-coupon-releases.png", docs_name="coupon-releases.png", full_page=True)
    assert claim(page, base_url, "alice", "MIDNIGHT SALE") == 201  # a released user may claim again


@contextlib.contextmanager
def expiry_worker():
    """The real worker, `python manage.py expire_holds`, on the live server's database, until the block ends."""
    environment = {
        **os.environ,
        "DATABASE_URL": subprocess_database_url(),
        "DJANGO_SETTINGS_MODULE": "couponsite.settings",
    }
    environment.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    worker = subprocess.Popen(  # noqa: S603 - this interpreter, the project's manage.py
        [sys.executable, "manage.py", "expire_holds", "--max-sleep", "0.5"], cwd=ROOT, env=environment
    )
    try:
        yield
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_a_claim_from_code_to_redemption_undo_and_expiry(page, live_server, django_user_model, artifacts):
    base_url = live_server.url
    log_in(page, base_url, django_user_model)

    # A coupon whose claims are held for 5 seconds.
    page.goto(f"{base_url}/admin/coupons/coupon/add/")
    page.get_by_label("Name").fill("CHECKOUT SALE")
    page.get_by_label("Amount").fill("3")
    page.get_by_label("Hold seconds").fill("5")
    page.screenshot(path=artifacts / "11-coupon-add-hold.png")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")

    # A user claims it and gets a code; the coupon's page shows it, held.
    claimed = page.request.post(
        f"{base_url}/api/coupons/claim", data={"user_id": "alice", "coupon_name": "CHECKOUT SALE"}
    )
    assert claimed.status == 201
    code = claimed.json()["code"]
    assert claimed.json()["status"] == "held"
    coupon = Coupon.objects.get(name="CHECKOUT SALE")
    page.goto(f"{base_url}/admin/coupons/coupon/{coupon.pk}/change/")
    expect(page.locator("#claims td.claim-code")).to_have_text([code])
    expect(page.locator("#claims td.claim-status")).to_have_text(["Held"])
    expect(page.locator("#claim-counts")).to_contain_text("Held: 1")
    page.screenshot(path=artifacts / "12-coupon-codes.png", full_page=True)

    # The shop's checkout redeems it, typed the way a customer would; a second time is refused.
    redeemed = page.request.post(
        f"{base_url}/api/redemptions", data={"code": code.replace("-", "").lower(), "order_id": "order-42"}
    )
    assert (redeemed.status, redeemed.json()["order_id"]) == (201, "order-42")
    again = page.request.post(f"{base_url}/api/redemptions", data={"code": code})
    assert (again.status, again.json()["code"], again.json()["order_id"]) == (409, "already_redeemed", "order-42")

    # The operator finds it by its code among the redeemed claims.
    page.goto(f"{base_url}/admin/coupons/claim/?status=redeemed")
    page.locator("#searchbar").fill(code.replace("-", "").lower())
    page.get_by_role("button", name="Search").click()
    row = page.locator("#result_list tbody tr")
    expect(row).to_have_count(1)
    expect(row.locator("td.field-claim_code")).to_have_text(code)
    expect(row.locator("td.field-status")).to_have_text("Redeemed")
    expect(row.locator("td.field-order_id")).to_have_text("order-42")
    page.screenshot(path=artifacts / "13-claims-redeemed.png")

    # The order is cancelled: the redemption is undone (the operator's session, with its CSRF token).
    csrf = next(cookie["value"] for cookie in page.context.cookies() if cookie["name"] == "csrftoken")
    undone = page.request.delete(
        f"{base_url}/api/redemptions/{code}", data={"reason": "order cancelled"}, headers={"X-CSRFToken": csrf}
    )
    assert undone.status == 204
    page.goto(f"{base_url}/admin/coupons/redemptionundo/")
    undo_row = page.locator("#result_list tbody tr")
    expect(undo_row.locator("td.field-order_id")).to_have_text("order-42")
    expect(undo_row.locator("td.field-undone_by")).to_have_text("operator")
    expect(undo_row.locator("td.field-reason")).to_have_text("order cancelled")
    page.screenshot(path=artifacts / "14-redemption-undone.png")

    # Held again and never redeemed: at its deadline the worker expires it and the unit goes back to stock.
    with expiry_worker():
        page.goto(f"{base_url}/admin/coupons/coupon/{coupon.pk}/change/")
        for _ in range(40):
            # The page reads the coupon's row and its claims in separate statements: an expiry committing between
            # them shows the claim expired beside the stock from before. Reload until the page shows one state.
            expired = "Expired: 1" in page.locator("#claim-counts").inner_text()
            if expired and page.locator(".field-remaining_amount .readonly").inner_text() == "3":
                break
            page.wait_for_timeout(250)
            page.reload()
    expect(page.locator("#claims td.claim-status")).to_have_text(["Expired"])
    expect(page.locator(".field-remaining_amount .readonly")).to_have_text("3")
    page.screenshot(path=artifacts / "15-coupon-expired.png", full_page=True)
    gone = page.request.post(f"{base_url}/api/redemptions", data={"code": code})
    assert (gone.status, gone.json()["code"]) == (410, "claim_expired")
    # Alice may claim again, with a new code.
    reclaimed = page.request.post(
        f"{base_url}/api/coupons/claim", data={"user_id": "alice", "coupon_name": "CHECKOUT SALE"}
    )
    assert reclaimed.status == 201
    assert reclaimed.json()["code"] != code
