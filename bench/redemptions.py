"""Redemption and hold expiry, measured (docs/performance.md, "Redemptions and holds").

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/coupons python bench/redemptions.py claim-cost [--tree DIR]
    DATABASE_URL=... python bench/redemptions.py redemption-cost
    DATABASE_URL=... python bench/redemptions.py expiry-delay [--workers 2]
    DATABASE_URL=... python bench/redemptions.py compare-claim-cost --before DIR   # a checkout without codes

Each makes a throwaway test database next to the one DATABASE_URL names
(test_<name>, removed afterwards). The machine is shared, so costs are CPU
time of this process (time.process_time(): Django, DRF, psycopg, not the
database server's), medians of 3 runs, and comparisons side by side:

- claim-cost: CPU per POST /api/coupons/claim through Django's test client (middleware included, no network),
  each a granted claim of a fresh user, and per refusal (409). `--tree` runs another checkout's code.
  compare-claim-cost runs it for this tree and `--before` alternately, three times each.
- redemption-cost: CPU per POST /api/redemptions, many codes (each redeemed once: 201) and one hot code (409),
  and per GET /api/redemptions/{code}; then, on real threads with their own connections, the wall-clock rate of
  16 threads redeeming one hot code (one 201, then 409s) against 16 threads redeeming codes of their own (all
  201s) for 2 s each (medians of 3, a ratio: the machine's load moves both).
- expiry-delay: `python manage.py expire_holds` workers (real processes) while claims with a 2 s hold arrive
  steadily for 6 s: returned_at - expires_at (both the database's clock) for every claim, as a distribution.
"""

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = 3


def setup_django(tree):
    sys.path.insert(0, str(tree))
    os.chdir(tree)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "couponsite.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")  # no line per request on the terminal
    import django

    django.setup()
    from django.test.utils import setup_test_environment

    setup_test_environment()
    import couponsite.urls  # noqa: F401  (the views load first, as when serving)


def cpu_microseconds(calls):
    """CPU time of this process per call of each zero-argument callable in `calls`, in microseconds."""
    start = time.process_time()
    for call in calls:
        call()
    return (time.process_time() - start) / len(calls) * 1e6


def claim_cost(claims):
    from django.test import Client

    from coupons.services import create_coupon

    client = Client(HTTP_HOST="localhost")
    granted, refused = [], []
    for run in range(RUNS):
        name = f"COST {run}"
        create_coupon(name=name, amount=claims)

        answers = []

        def post(user, name=name, answers=answers):
            response = client.post(
                "/api/coupons/claim", {"user_id": user, "coupon_name": name}, content_type="application/json"
            )
            answers.append(response.status_code)

        users = [f"user_{run}_{i}" for i in range(claims)]
        for user in users[:20]:  # warm up: caches, first queries
            post(user)
        granted.append(cpu_microseconds([lambda user=user: post(user) for user in users[20:]]))
        refused.append(cpu_microseconds([lambda user=user: post(user) for user in users[20:]]))
        assert answers == [201] * claims + [409] * (claims - 20), set(answers)
    return {"granted_us": statistics.median(granted), "refused_us": statistics.median(refused)}


def redemption_cost(redemptions):
    from django.db import connection
    from django.test import Client

    from coupons.claim_codes import format_code
    from coupons.exceptions import AlreadyRedeemed
    from coupons.services import claim_coupon, create_coupon, redeem_claim

    client = Client(HTTP_HOST="localhost")
    many, hot, reads = [], [], []
    for run in range(RUNS):
        name = f"REDEEM {run}"
        create_coupon(name=name, amount=redemptions + 1)
        codes = [format_code(claim_coupon(user_id=f"u{run}_{i}", coupon_name=name).code) for i in range(redemptions)]
        statuses = []

        def redeem(code, statuses=statuses):
            response = client.post("/api/redemptions", {"code": code}, content_type="application/json")
            statuses.append(response.status_code)

        many.append(cpu_microseconds([lambda code=code: redeem(code) for code in codes]))
        hot.append(cpu_microseconds([lambda code=codes[0]: redeem(code) for _ in codes]))
        reads.append(cpu_microseconds([lambda code=code: client.get(f"/api/redemptions/{code}") for code in codes]))
        assert statuses == [201] * redemptions + [409] * redemptions, set(statuses)

    def concurrent_rate(codes_per_thread, seconds=2.0, threads=16):
        """Redemptions per second of wall-clock time, `threads` threads each on its own connection."""
        counts = [0] * threads
        stop = threading.Event()
        barrier = threading.Barrier(threads + 1)

        def work(i):
            try:
                connection.ensure_connection()
                barrier.wait()
                codes = itertools.cycle(codes_per_thread(i))
                while not stop.is_set():
                    try:
                        redeem_claim(code=next(codes))
                    except AlreadyRedeemed:  # the hot code's answer but once
                        pass
                    counts[i] += 1
            finally:
                connection.close()

        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        barrier.wait()
        time.sleep(seconds)
        stop.set()
        for worker in workers:
            worker.join()
        return sum(counts) / seconds

    rates_hot, rates_many = [], []
    for run in range(RUNS):
        name = f"RATE {run}"
        create_coupon(name=name, amount=20_000)
        pool = [claim_coupon(user_id=f"r{run}_{i}", coupon_name=name).code for i in range(16 * 600)]
        hot_code = pool[0]
        rates_hot.append(concurrent_rate(lambda i, hot_code=hot_code: [hot_code]))
        # Each thread its own codes, more than it can redeem in the time: every answer a 201.
        rates_many.append(concurrent_rate(lambda i, pool=pool: pool[i * 600 : (i + 1) * 600]))
    return {
        "many_codes_cpu_us": statistics.median(many),
        "hot_code_cpu_us": statistics.median(hot),
        "read_cpu_us": statistics.median(reads),
        "hot_code_per_s": statistics.median(rates_hot),
        "many_codes_per_s": statistics.median(rates_many),
        "load_average": os.getloadavg()[0],
    }


def expiry_delay(workers, seconds=6.0, hold=2, rate=100):
    from django.db import connection

    from coupons.models import Claim, ClaimStatus
    from coupons.services import create_coupon
    from tests.helpers import subprocess_database_url

    create_coupon(name="EXPIRY", amount=10**6, hold_seconds=hold)
    environment = {**os.environ, "DATABASE_URL": subprocess_database_url(), "LOG_LEVEL": "WARNING"}
    processes = [
        subprocess.Popen([sys.executable, "manage.py", "expire_holds"], cwd=ROOT, env=environment)  # noqa: S603
        for _ in range(workers)
    ]
    try:
        from coupons.services import claim_coupon

        started, i = time.monotonic(), 0
        while time.monotonic() - started < seconds:  # claims arrive steadily, `rate` per second
            claim_coupon(user_id=f"u{i}", coupon_name="EXPIRY")
            i += 1
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
        deadline = time.monotonic() + hold + 10
        while Claim.objects.filter(status=ClaimStatus.HELD).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for process in processes:
            process.terminate()
            process.wait()
    delays = sorted(
        (returned - expires).total_seconds() * 1000
        for returned, expires in Claim.objects.filter(status=ClaimStatus.EXPIRED).values_list(
            "returned_at", "expires_at"
        )
    )
    left = Claim.objects.filter(status=ClaimStatus.HELD).count()
    quantile = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))]  # noqa: E731
    return {
        "vendor": connection.vendor,
        "workers": workers,
        "claims": len(delays) + left,
        "not_expired": left,
        "delay_ms": {
            "min": delays[0],
            "p50": quantile(0.5),
            "p90": quantile(0.9),
            "p99": quantile(0.99),
            "max": delays[-1],
        },
    }


def in_test_database(measure):
    from django.db import connection

    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        return measure()
    finally:
        connection.close()
        connection.creation.destroy_test_db(old_name, verbosity=0)


def compare_claim_cost(before, claims):
    """claim-cost for this tree and `before`, alternately, each in a process of its own; medians and the ratio."""
    results = {"before": [], "after": []}
    for _ in range(RUNS):
        for label, tree in (("before", before), ("after", ROOT)):
            output = subprocess.run(  # noqa: S603
                [sys.executable, str(ROOT / "bench" / "redemptions.py"), "claim-cost", "--tree", str(tree)]
                + ["--claims", str(claims)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            results[label].append(json.loads(output.splitlines()[-1]))
    summary = {}
    for label, runs in results.items():
        summary[label] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    summary["granted_ratio"] = summary["after"]["granted_us"] / summary["before"]["granted_us"]
    summary["refused_ratio"] = summary["after"]["refused_us"] / summary["before"]["refused_us"]
    summary["runs"] = results
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["claim-cost", "redemption-cost", "expiry-delay", "compare-claim-cost"])
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose code claim-cost runs")
    parser.add_argument("--before", type=Path, help="compare-claim-cost: a checkout of the code before")
    parser.add_argument("--claims", type=int, default=400)
    parser.add_argument("--redemptions", type=int, default=400)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.what == "compare-claim-cost":
        print(json.dumps(compare_claim_cost(args.before.resolve(), args.claims), indent=2))
        return
    setup_django(args.tree.resolve() if args.what == "claim-cost" else ROOT)
    measure = {
        "claim-cost": lambda: claim_cost(args.claims),
        "redemption-cost": lambda: redemption_cost(args.redemptions),
        "expiry-delay": lambda: expiry_delay(args.workers),
    }[args.what]
    print(json.dumps(in_test_database(measure)))


if __name__ == "__main__":
    main()
