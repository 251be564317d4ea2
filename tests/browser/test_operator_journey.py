"""An operator runs a flash sale in the admin, in a real browser, while users claim through the API."""

import csv
import io

from playwright.sync_api import expect

from coupons.models import Coupon

PASSWORD = "secret-password"


def claim(page, base_url, user_id, coupon_name):
    response = page.request.post(f"{base_url}/api/coupons/claim", data={"user_id": user_id, "coupon_name": coupon_name})
    return response.status


def coupon_row(page, name):
    return page.locator("#result_list tbody tr", has=page.get_by_role("link", name=name, exact=True))


def test_operator_runs_a_flash_sale(page, live_server, django_user_model, artifacts):
    django_user_model.objects.create_superuser("operator", "op@example.com", PASSWORD)
    base_url = live_server.url

    # Log in as staff.
    page.goto(f"{base_url}/admin/")
    expect(page).to_have_url(f"{base_url}/admin/login/?next=/admin/")
    page.get_by_label("Username").fill("operator")
    page.get_by_label("Password").fill(PASSWORD)
    page.screenshot(path=artifacts / "01-admin-login.png")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Site administration")).to_be_visible()

    # Create a coupon.
    page.goto(f"{base_url}/admin/coupons/coupon/add/")
    page.get_by_label("Name").fill("FLASH SALE")
    page.get_by_label("Amount").fill("3")
    page.screenshot(path=artifacts / "02-coupon-add.png")
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
    page.screenshot(path=artifacts / "03-coupon-list.png")

    # The coupon's page lists its claimers, newest first.
    row.get_by_role("link", name="FLASH SALE").click()
    claimers = page.locator("#claims td.claim-user-id")
    expect(claimers).to_have_text(["bob", "alice"])
    expect(page.locator("#claims h2")).to_have_text("Claims: 2, newest first")
    page.screenshot(path=artifacts / "04-coupon-claims.png", full_page=True)

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
    page.screenshot(path=artifacts / "05-restock-refused.png")
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
    page.get_by_role("link", name="Sold out").click()
    expect(coupon_row(page, "FLASH SALE").locator("td.field-stock")).to_have_text("5 / 5")
    expect(coupon_row(page, "FLASH SALE").locator("td.field-remaining_amount")).to_have_text("0")
    page.screenshot(path=artifacts / "06-coupon-list-sold-out.png")
