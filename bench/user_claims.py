"""How long a page of GET /api/users/{user_id}/claims takes for a user with 10,000 claims in a table of millions.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/coupons_bench python bench/user_claims.py \\
        [--coupons 10000] [--users-per-coupon 200] [--runs 20] [--drop]

PostgreSQL only. Migrates the database DATABASE_URL names and fills it
once (later runs reuse the rows; `--drop` deletes them afterwards) with one
INSERT ... SELECT generate_series each: `--coupons` coupons, each claimed by
`--users-per-coupon` users, claim times spread over 30 days. The user
"bench_uc_user_0" thus holds one claim per coupon (10,000), in a claims
table of coupons x users rows (2,000,000). Then times pages through
Django's test client (the whole request and middleware stack, without the
network): the first, one in the middle and the last, walking the cursors.
Prints the median and slowest of `--runs` requests, and the plan of the
deepest page's query.
"""

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "couponsite.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext, setup_test_environment  # noqa: E402

from bench.admin_pages import measure  # noqa: E402
from coupons.api.cursors import decode_cursor  # noqa: E402
from coupons.models import Claim, Coupon  # noqa: E402
from coupons.selectors import get_user_claims_page  # noqa: E402

PREFIX = "BENCH USER CLAIMS "
USER = "bench_uc_user_0"
LIMIT = 50


def fill(coupons, users_per_coupon):
    if Coupon.objects.filter(name__startswith=PREFIX).exists():
        return
    started = time.perf_counter()
    # One transaction: all the rows or none. Millions of rows take longer
    # than the service's statement timeout.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL statement_timeout = 0")
        cursor.execute(
            "INSERT INTO coupons_coupon (name, amount, remaining_amount, created_at)"
            " SELECT %s || i, %s, 0, now() FROM generate_series(0, %s - 1) AS i",
            [PREFIX, users_per_coupon, coupons],
        )
        cursor.execute(
            "INSERT INTO coupons_claim (user_id, coupon_id, created_at, code, status, order_id)"
            " SELECT 'bench_uc_user_' || u, c.id, now() - random() * interval '30 days',"
            " upper(substr(md5(random()::text), 1, 16)), 'held', ''"
            " FROM coupons_coupon AS c CROSS JOIN generate_series(0, %s - 1) AS u WHERE c.name LIKE %s",
            [users_per_coupon, PREFIX + "%"],
        )
        cursor.execute("ANALYZE coupons_claim")  # fresh statistics for the planner
    print(f"created {coupons} coupons and {coupons * users_per_coupon} claims in {time.perf_counter() - started:.1f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coupons", type=int, default=10_000)
    parser.add_argument("--users-per-coupon", type=int, default=200)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--drop", action="store_true", help="delete the coupons and claims afterwards")
    arguments = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("PostgreSQL only: set DATABASE_URL=postgres://...")

    call_command("migrate", verbosity=0)
    setup_test_environment()  # lets the test client's "testserver" host in
    print(f"database: {connection.vendor} {connection.settings_dict['NAME']}")
    fill(arguments.coupons, arguments.users_per_coupon)
    print(f"claims table: {Claim.objects.count()} rows; {USER} holds {Claim.objects.filter(user_id=USER).count()}")

    client = Client()
    url = f"/api/users/{USER}/claims?limit={LIMIT}"
    cursors = [None]
    while cursors[-1] is not None or len(cursors) == 1:  # walk every page once, keeping the cursors
        body = client.get(url + (f"&cursor={cursors[-1]}" if cursors[-1] else "")).json()
        cursors.append(body["next"])
    cursors.pop()  # the last page's null
    middle, last = cursors[len(cursors) // 2], cursors[-1]
    measure(client, "first page", url, arguments.runs)
    measure(client, f"page {len(cursors) // 2 + 1} of {len(cursors)}", f"{url}&cursor={middle}", arguments.runs)
    measure(client, f"last page ({len(cursors)})", f"{url}&cursor={last}", arguments.runs)

    # EXPLAIN the very SQL the selector sends for the deepest page.
    with CaptureQueriesContext(connection) as queries:
        get_user_claims_page(user_id=USER, limit=LIMIT, after=decode_cursor(last))
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + queries[-1]["sql"])
        print("plan of the last page's query:")
        for (line,) in cursor.fetchall():
            print("   ", line)

    if arguments.drop:
        with connection.cursor() as cursor:
            cursor.execute(
                "DELETE FROM coupons_claim WHERE coupon_id IN (SELECT id FROM coupons_coupon WHERE name LIKE %s)",
                [PREFIX + "%"],
            )
        Coupon.objects.filter(name__startswith=PREFIX).delete()
        print("deleted the bench's coupons and claims")


if __name__ == "__main__":
    main()
