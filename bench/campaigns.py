"""What a campaign costs a hot claim, and how fast codes import (docs/performance.md, issue 25).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/coupons_bench python bench/campaigns.py [--codes 1000000]

Makes a throwaway test database next to the one DATABASE_URL names (test_<name>,
removed afterwards).
- Hot claim: THREADS threads (each its own connection, as a threaded server
  worker's) claim one coupon for new users through the service (claim_coupon:
  the pre-read, the claim groups), for SECONDS seconds; a coupon alone, then a
  coupon of a campaign with both caps (max_claims, max_claims_per_user 1:
  the counter row's lock and the holdings read), alternating, RUNS times;
  medians of claims/s and the ratio.
- Spread sale: the same threads over 5 coupons of one campaign (their
  groups meet at the campaign's counter row), side by side with 5 coupons
  without a campaign (nothing shared but the database); the ratio.
- Import: `--codes` codes as CSV through import_codes (streamed from a
  generator: COPY on PostgreSQL), codes/s.
"""

import argparse
import itertools
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "couponsite.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402

from campaigns.services import create_campaign  # noqa: E402
from coupons.coupon_states import coupon_states  # noqa: E402
from coupons.imported_codes import CSV  # noqa: E402
from coupons.services import claim_coupon, create_coupon, import_codes  # noqa: E402

THREADS = 8
SECONDS = 4
RUNS = 3
_names = itertools.count()


def claims_per_second(coupon_names):
    """Claims granted per second by THREADS threads over `coupon_names` (round robin), for SECONDS."""
    users = itertools.count()
    deadline = time.monotonic() + SECONDS
    granted = [0] * THREADS

    def work(index):
        try:
            for turn in itertools.count():
                if time.monotonic() >= deadline:
                    return
                name = coupon_names[(index + turn) % len(coupon_names)]
                claim_coupon(user_id=f"u{next(users)}", coupon_name=name)
                granted[index] += 1
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(granted) / (time.monotonic() - start)


def fresh(in_campaign, coupons=1):
    number = next(_names)
    options = {}
    if in_campaign:
        create_campaign(name=f"C{number}", max_claims=10**9, max_claims_per_user=1)
        options = {"campaign": f"C{number}"}
    names = [f"HOT{number}/{i}" for i in range(coupons)]
    for name in names:
        create_coupon(name=name, amount=10**9, options=options)
    return names


class CsvStream:
    """`count` codes as CSV bytes, made as read: nothing held whole."""

    def __init__(self, count):
        self._lines = (f"SHOP-{i:010d}\n".encode() for i in range(count))
        self._buffer = b""

    def read(self, size=-1):
        while size < 0 or len(self._buffer) < size:
            chunk = b"".join(itertools.islice(self._lines, 4096))
            if not chunk:
                break
            self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


def report(alone, member, spread, spread_alone):
    a, m, s, sa = (statistics.median(x) for x in (alone, member, spread, spread_alone))
    print(f"hot claim, coupon alone:             {a:8.0f} claims/s  (runs: {[round(x) for x in alone]})")
    print(f"hot claim, coupon of a campaign:     {m:8.0f} claims/s  (runs: {[round(x) for x in member]})")
    print(f"ratio campaign / alone:              {m / a:8.2f}")
    print(f"sale spread over 5 coupons alone:    {sa:8.0f} claims/s  (runs: {[round(x) for x in spread_alone]})")
    print(f"sale spread over 5 campaign coupons: {s:8.0f} claims/s  (runs: {[round(x) for x in spread]})")
    print(f"ratio campaign / alone (spread):     {s / sa:8.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codes", type=int, default=1_000_000)
    parser.add_argument("--import-only", action="store_true", help="skip the claims")
    args = parser.parse_args()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        alone, member, spread, spread_alone = [], [], [], []
        for _ in range(0 if args.import_only else RUNS):
            alone.append(claims_per_second(fresh(False)))
            member.append(claims_per_second(fresh(True)))
            spread_alone.append(claims_per_second(fresh(False, coupons=5)))
            spread.append(claims_per_second(fresh(True, coupons=5)))
        if not args.import_only:
            report(alone, member, spread, spread_alone)
        create_coupon(name="IMPORT", amount=1)
        start = time.perf_counter()
        done = import_codes(coupon_name="IMPORT", stream=CsvStream(args.codes), content_format=CSV)
        elapsed = time.perf_counter() - start
        print(f"import: {done.imported} codes in {elapsed:.1f} s = {done.imported / elapsed:,.0f} codes/s")
    finally:
        coupon_states.stop_listening()  # its connection would keep the test database from being dropped
        connection.close()
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
