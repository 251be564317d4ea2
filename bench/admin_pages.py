"""How long the admin's pages take for a coupon with 100,000 claims.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/coupons python bench/admin_pages.py [--claims 100000] [--runs 20]

Migrates the database DATABASE_URL names, gives a coupon `--claims` claims
in bulk (once: later runs reuse it; `--drop` deletes it afterwards), then
times each admin page through Django's test client: the whole request and
middleware stack, without the network. Prints the median and slowest time
of `--runs` requests, the number of queries, and the size of the page.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "couponsite.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import F  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext, setup_test_environment  # noqa: E402

from coupons.admin import CLAIMS_PER_PAGE  # noqa: E402
from coupons.models import Claim, Coupon  # noqa: E402
from coupons.services import create_coupon  # noqa: E402

BATCH = 10_000


def coupon_with_claims(count):
    name = f"BENCH ADMIN {count}"
    coupon = Coupon.objects.filter(name=name).first()
    if coupon is None:
        started = time.perf_counter()
        coupon = create_coupon(name=name, amount=count)
        for start in range(0, count, BATCH):
            users = range(start, min(start + BATCH, count))
            Claim.objects.bulk_create(Claim(coupon=coupon, user_id=f"bench_user_{i:07d}") for i in users)
        Coupon.objects.filter(pk=coupon.pk).update(remaining_amount=F("remaining_amount") - count)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE coupons_claim")  # fresh statistics for the planner
        print(f"created {name!r} with {count} claims in {time.perf_counter() - started:.1f} s")
    coupon.refresh_from_db()
    assert coupon.claimed_amount == count == Claim.objects.filter(coupon=coupon).count()
    return coupon


def measure(client, label, url, runs):
    timings = []
    for _ in range(runs):
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            response = client.get(url)
            body = b"".join(response.streaming_content) if response.streaming else response.content
            timings.append(time.perf_counter() - started)
        assert response.status_code == 200, (url, response.status_code)
    print(
        f"{label:<34} median {statistics.median(timings) * 1000:8.1f} ms   slowest {max(timings) * 1000:8.1f} ms"
        f"   {len(queries):3d} queries   {len(body) / 1024:8.1f} KiB"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--drop", action="store_true", help="delete the coupon and its claims afterwards")
    arguments = parser.parse_args()

    call_command("migrate", verbosity=0)
    setup_test_environment()  # lets the test client's "testserver" host in
    print(f"database: {connection.vendor} {connection.settings_dict['NAME']}")
    coupon = coupon_with_claims(arguments.claims)
    operator, _ = get_user_model().objects.get_or_create(
        username="bench-operator", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(operator)

    page = f"/admin/coupons/coupon/{coupon.pk}/change/"
    last_page = -(-arguments.claims // CLAIMS_PER_PAGE)
    measure(client, "coupon list", "/admin/coupons/coupon/", arguments.runs)
    measure(client, "coupon page (newest claims)", page, arguments.runs)
    measure(client, f"coupon page (claims page {last_page})", f"{page}?claims_page={last_page}", arguments.runs)
    measure(client, "claims list, this coupon", f"/admin/coupons/claim/?coupon__id__exact={coupon.pk}", arguments.runs)
    measure(
        client, "CSV export (all claims)", f"/admin/coupons/coupon/{coupon.pk}/claims.csv", max(3, arguments.runs // 5)
    )

    if arguments.drop:
        Claim.objects.filter(coupon=coupon).delete()
        coupon.delete()
        print(f"deleted {coupon.name!r}")


if __name__ == "__main__":
    main()
