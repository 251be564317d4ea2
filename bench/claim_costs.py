"""What an Idempotency-Key and the outbox cost a claim, in CPU, in-process (docs/performance.md).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/coupons_bench python bench/claim_costs.py [--claims 500] [--runs 3]

Makes a throwaway test database next to the one DATABASE_URL names (test_<name>,
removed afterwards). Measures this process's CPU (time.process_time: Django,
DRF, psycopg; not PostgreSQL's) and wall time, runs alternating, medians of
`--runs`:
- a claim through Django's test client (the whole middleware stack, no
  network): plain; with a new Idempotency-Key each; a replay of a keyed one;
- the claim group's transaction (grant_claims) for groups of 8 new users: the
  work done under the coupon row lock, which every queued claim waits for;
  plain, and with all 8 sent with a key (their answers stored in it).
It runs on a tree without Idempotency-Key or the outbox too (copy it there):
the keyed scenarios are then skipped, which gives the outbox's before/after.
"""

import argparse
import itertools
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
from django.test.utils import setup_test_environment  # noqa: E402

import couponsite.urls  # noqa: E402, F401  (the views load first, as when serving)
from coupons.claim_groups import grant_claims  # noqa: E402
from coupons.models import Coupon  # noqa: E402
from coupons.services import create_coupon  # noqa: E402

try:
    from coupons.api.idempotency import answer_of  # noqa: E402
    from coupons.idempotency import acquire_key  # noqa: E402
except ImportError:  # a tree from before Idempotency-Key
    acquire_key = None

GROUP = 8
_numbers = itertools.count()


def measure(function, count):
    """(CPU ms, wall ms) per call, over `count` calls."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        function()
    return (time.process_time() - cpu) / count * 1000, (time.perf_counter() - wall) / count * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=int, default=500, help="claims (and groups) per run and scenario")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    coupon = create_coupon(name="PROMO", amount=2**31 - 1)
    client = Client()

    def claim(key=None):
        headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
        body = f'{{"user_id": "u{next(_numbers)}", "coupon_name": "PROMO"}}'
        response = client.post("/api/coupons/claim", body, content_type="application/json", **headers)
        assert response.status_code == 201, response.content

    def keyed_claim():
        claim(key=f"k{next(_numbers)}")

    replayed = '{"user_id": "replayed", "coupon_name": "PROMO"}'
    client.post("/api/coupons/claim", replayed, content_type="application/json", HTTP_IDEMPOTENCY_KEY="replay")

    def replay():
        response = client.post(
            "/api/coupons/claim", replayed, content_type="application/json", HTTP_IDEMPOTENCY_KEY="replay"
        )
        assert response["Idempotent-Replayed"] == "true"

    def group():
        outcomes = grant_claims(coupon_id=coupon.pk, user_ids=[f"g{next(_numbers)}" for _ in range(GROUP)])
        assert all(not isinstance(outcome, Exception) for outcome in outcomes)

    def keyed_group_runner(count):
        # Keys held beforehand (outside the lock, as in a request); only the group's transaction is timed.
        from rest_framework.response import Response

        success = answer_of(Response({"user_id": "x", "coupon_name": "PROMO"}, status=201))
        batches = []
        for _ in range(count):
            attempts = []
            for _ in range(GROUP):
                attempt = acquire_key(caller="anonymous", key=f"gk{next(_numbers)}", fingerprint="f")
                attempt.answer_for = lambda outcome: success
                attempts.append(attempt)
            batches.append(attempts)
        batch = iter(batches)

        def keyed_group():
            grant_claims(
                coupon_id=coupon.pk, user_ids=[f"g{next(_numbers)}" for _ in range(GROUP)], attempts=next(batch)
            )

        return keyed_group

    scenarios = {"plain claim": claim, "group of 8": group}
    if acquire_key is not None:
        scenarios.update({"keyed claim": keyed_claim, "replayed claim": replay, "keyed group of 8": None})
    print(f"database: {connection.vendor}; {args.claims} per run, {args.runs} runs, load {os.getloadavg()[0]:.1f}")
    results = {name: [] for name in scenarios}
    for function in scenarios.values():  # warm up
        (function or keyed_group_runner(20))()
    for _ in range(args.runs):
        for name, function in scenarios.items():
            results[name].append(measure(function or keyed_group_runner(args.claims), args.claims))
    medians = {}
    for name, timings in results.items():
        cpu = statistics.median(t[0] for t in timings)
        wall = statistics.median(t[1] for t in timings)
        medians[name] = cpu
        runs = ", ".join(f"{t[0]:.3f}" for t in timings)
        print(f"{name:>18}: {cpu:.3f} ms CPU (runs {runs}), {wall:.3f} ms wall")
    if acquire_key is not None:
        print(f"keyed / plain claim, CPU: {medians['keyed claim'] / medians['plain claim']:.2f}")
        print(f"replay / plain claim, CPU: {medians['replayed claim'] / medians['plain claim']:.2f}")
        print(f"keyed / plain group of 8, CPU: {medians['keyed group of 8'] / medians['group of 8']:.2f}")
    print(f"claims in the coupon: {Coupon.objects.get(pk=coupon.pk).claimed_amount}")


if __name__ == "__main__":
    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        main()
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
