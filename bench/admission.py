"""Fair admission's costs, in-process (issue 23's numbers): tokens signed and verified per second of CPU, what a
token check adds to a claim, polls answered per second of CPU and the statements each costs, entries per second.

    DATABASE_URL=postgres://... .venv/bin/python bench/admission.py [--users 2000] [--entries 500]

It creates coupons named BENCH-ADMISSION-* in that database (and deletes them afterwards).
"""

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "couponsite.settings")

import django  # noqa: E402

django.setup()

import jwt  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from admission import selectors, tokens  # noqa: E402
from admission.services import admission_pass, enter  # noqa: E402
from coupons.models import Coupon  # noqa: E402
from coupons.services import create_coupon  # noqa: E402


def cpu_per_call(function, count):
    started = time.process_time()
    for _ in range(count):
        function()
    return (time.process_time() - started) / count


def concurrent_entries(name, *, first, last, threads):
    """Entries of users first..last-1 from `threads` threads at once (a served worker's threads), each with its
    own connection; prints their rate (wall clock: the commits, not the CPU, bound it)."""
    users = iter(range(first, last))
    lock = threading.Lock()

    def entrant():
        try:
            while True:
                with lock:
                    n = next(users, None)
                if n is None:
                    return
                enter(coupon_name=name, user_id=f"u{n}")
        finally:
            connection.close()

    started = time.perf_counter()
    workers = [threading.Thread(target=entrant) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - started
    print(f"entries, {threads} threads at once: {(last - first) / wall:,.0f}/s wall ({last - first} entries)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=2000, help="users polling (each polls --rounds times)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--entries", type=int, default=500, help="entries timed one after the other")
    parser.add_argument("--threads", type=int, default=16, help="threads entering the other users at once")
    args = parser.parse_args()
    settings.ALLOWED_HOSTS = ["testserver", *settings.ALLOWED_HOSTS]
    keys = tokens.signing_keys()
    now = int(time.time())
    claims = {"iss": "couponsite", "aud": "BENCH", "sub": "user-1", "jti": "1", "nbf": now, "exp": now + 120}
    sign = cpu_per_call(lambda: jwt.encode(claims, keys.signing_key, algorithm="EdDSA", headers={"kid": "k"}), 2000)
    token = jwt.encode(claims, keys.signing_key, algorithm="EdDSA", headers={"kid": keys.signing_kid})
    check = cpu_per_call(lambda: tokens.verify_token(token, user_id="user-1", coupon_name="BENCH"), 2000)
    print(f"tokens signed: {1 / sign:,.0f}/s per core ({sign * 1e6:.0f} µs each)")
    print(f"tokens verified (what prepare_claim adds to a claim): {1 / check:,.0f}/s per core ({check * 1e6:.0f} µs)")

    name = f"BENCH-ADMISSION-{time.time_ns()}"
    coupon = create_coupon(name=name, amount=args.users // 2, options={"admission": "queue"})
    try:
        started, cpu = time.perf_counter(), time.process_time()
        for n in range(args.entries):
            enter(coupon_name=name, user_id=f"u{n}")
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        print(
            f"entries, one after the other: {args.entries / wall:,.0f}/s wall ({wall / args.entries * 1000:.1f} ms"
            f" each, the commit included), {args.entries / cpu:,.0f}/s per core of app CPU"
        )
        concurrent_entries(name, first=args.entries, last=args.users, threads=args.threads)
        admission_pass(coupon_id=coupon.pk)
        client = Client()
        selectors.clear_caches()
        settings.ADMISSION_POLL_REFRESH_MS = 3_600_000  # the steady state: one refresh per interval, amortised
        for n in range(args.users):  # warm: each user's entry read once
            client.get(f"/api/coupons/{name}/entries/u{n}")
        with CaptureQueriesContext(connection) as queries:
            started = time.process_time()
            for _ in range(args.rounds):
                for n in range(args.users):
                    client.get(f"/api/coupons/{name}/entries/u{n}")
            cpu = time.process_time() - started
        polls = args.users * args.rounds
        print(
            f"polls (half admitted with a token, half waiting), through Django's whole stack: {polls / cpu:,.0f}/s per"
            f" core; database statements: {len(queries)} for {polls} polls"
        )
        print(
            "  at 100,000 users polling once a second: each process reads 3 statements per coupon per"
            f" ADMISSION_POLL_REFRESH_MS, i.e. {100_000 / (polls / cpu):.0f} cores of polls and"
            " 3 x processes statements a second in all"
        )
    finally:
        Coupon.objects.filter(pk=coupon.pk).delete()
        _ = timezone


if __name__ == "__main__":
    main()
