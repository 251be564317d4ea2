"""What checking an API key costs a request, in-process (docs/operator-guide.md, API keys).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/coupons python bench/api_keys.py [--requests 1000] [--runs 5]

Makes a throwaway test database next to the one DATABASE_URL names (test_<name>,
removed afterwards), then prints the median of `--runs`:
- verifying a remembered key, and one read from the database (the cache emptied each time);
- DRF's authentication plus the scope check for a warm key, against a request with no authenticator;
- GET /api/coupons/{name} through Django's test client (middleware included, no network),
  API_KEYS_REQUIRED off and on, alternating, and the queries a warm keyed request makes.
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
os.environ.setdefault("LOG_LEVEL", "WARNING")  # no line per request on the terminal

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext, override_settings, setup_test_environment  # noqa: E402
from rest_framework.request import Request  # noqa: E402
from rest_framework.test import APIRequestFactory  # noqa: E402

import couponsite.urls  # noqa: E402, F401  (the views load first, as when serving)
from coupons import api_keys  # noqa: E402
from coupons.api.key_access import ApiKeyAuthentication, HasApiKeyScope  # noqa: E402
from coupons.services import create_coupon  # noqa: E402


def microseconds_per_call(function, calls, runs):
    """The median over `runs` of the mean time of one call, in microseconds."""
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        timings.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(timings)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="HTTP requests per run and setting")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    create_coupon(name="PROMO", amount=10)
    _, key = api_keys.create_api_key(name="bench", scopes={"claim", "read"})
    header = {"HTTP_AUTHORIZATION": f"Api-Key {key}"}
    print(f"database: {connection.vendor}")

    api_keys.verify_api_key(key)
    warm = microseconds_per_call(lambda: api_keys.verify_api_key(key), 20_000, args.runs)

    def cold():
        api_keys._verified.clear()
        api_keys.verify_api_key(key)

    read = microseconds_per_call(cold, 500, args.runs)
    print(f"verify a remembered key: {warm:.2f} µs; read it from the database: {read:.0f} µs")

    request = APIRequestFactory().get("/", **header)
    with override_settings(API_KEYS_REQUIRED=True):
        scope = HasApiKeyScope.of("read")()
        authentication = ApiKeyAuthentication()

        def checked():
            drf_request = Request(request, authenticators=[authentication])
            drf_request.user  # noqa: B018 (runs the authenticators)
            assert scope.has_permission(drf_request, None)

        def unchecked():
            Request(request, authenticators=[]).user  # noqa: B018

        with_key = microseconds_per_call(checked, 20_000, args.runs)
        without = microseconds_per_call(unchecked, 20_000, args.runs)
    print(f"DRF authentication + scope check: {with_key:.1f} µs with a warm key, {without:.1f} µs without")

    client = Client()

    def get_runs(keys_required):
        with override_settings(API_KEYS_REQUIRED=keys_required):
            extra = header if keys_required else {}
            return microseconds_per_call(lambda: client.get("/api/coupons/PROMO", **extra), args.requests, 1)

    with override_settings(API_KEYS_REQUIRED=True), CaptureQueriesContext(connection) as queries:
        client.get("/api/coupons/PROMO", **header)
    print(f"queries of a warm keyed GET: {len(queries)} ({'; '.join(q['sql'][:40] for q in queries)}...)")
    off, on = [], []
    for _ in range(args.runs):
        off.append(get_runs(False))
        on.append(get_runs(True))
    off_median, on_median = statistics.median(off), statistics.median(on)
    print(
        f"GET /api/coupons/PROMO: {off_median:.0f} µs open, {on_median:.0f} µs with a key"
        f" ({(on_median / off_median - 1) * 100:+.1f}%; load average {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        main()
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
