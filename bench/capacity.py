#!/usr/bin/env python
"""Capacity model: what one app-host core and one PostgreSQL primary handle, measured on this machine.

    python bench/capacity.py                 # 3 runs of 10 s per measurement (medians)
    python bench/capacity.py --runs 1 --duration 3

The service as it ships (bench/flashsale.py's web_server) on a private PostgreSQL cluster,
driven by wrk through bench/flashsale.py's scenarios, with the CPU of the
web server's processes and of the database processes metered:

- claims/s and refusals/s (sold out: 400) per app-host core (requests per
  CPU-second of the web server's processes);
- the database's ceiling for one hot coupon and for 100 coupons (pgbench,
  the classic lock-then-write claim transaction), and the database CPU a
  claim and a refusal cost;
- from those, how many app-host cores one primary feeds, and the worked
  example of docs/deployment.md: 1,000,000 users in 10 s for 5,000 units.

Both tiers share this machine's cores, so the per-core figures are per
CPU-second actually used, not per wall-clock second.
"""

import argparse
import contextlib
import os
import secrets
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# bench/ last on the path (it is the script's own directory only when run as a script; tests import bench.capacity):
# its scripts named like the apps (bench/admission.py, bench/campaigns.py) must not shadow them.
sys.path.append(str(ROOT / "bench"))

from flashsale import (  # noqa: E402
    GROUP_OF,
    HUGE_STOCK,
    RESULTS_DIR,
    Benchmark,
    Progress,
    classic_transaction,
    service_transaction,
    web_server,
)

from bench.statements import SERVER_SETTINGS  # noqa: E402
from tests.faults.cluster import PrivateCluster  # noqa: E402

# The worked example.
USERS, SECONDS, UNITS = 1_000_000, 10, 5_000
# An app host in the example (cores), and the primary's cores.
APP_HOST_CORES, PRIMARY_CORES = 8, 16


def spread_transaction(first_id, last_id):
    """pgbench's classic claim transaction on a coupon drawn at random among consecutive ids."""
    return f"\\set coupon random({first_id}, {last_id})\n" + classic_transaction(":coupon")


def per_core(rate, cpu_percent):
    return rate / (cpu_percent / 100) if cpu_percent else float("nan")


def measure(benchmark, options):
    from coupons.services import create_coupon

    coupons = [create_coupon(name=f"capacity-{benchmark.tag}-{i}", amount=HUGE_STOCK) for i in range(100)]
    ids = sorted(coupon.pk for coupon in coupons)
    assert ids[-1] - ids[0] == 99, "the 100 coupons' ids are consecutive"
    spread_script = spread_transaction(ids[0], ids[-1])
    group_script = service_transaction(coupons[0].name, group_size=GROUP_OF)
    progress = Progress(options.runs * 5)
    group_label = f"pgbench 1 coupon, groups of {GROUP_OF}"
    rows = {"claims": [], "refusals": [], "pgbench 1 coupon": [], group_label: [], "pgbench 100 coupons": []}
    statements = {"claims": [], "refusals": []}  # database statements per answer (bench/statements.py)
    for run in range(options.runs):
        hot = benchmark.claim_scenario(
            "capacity-hot claim", run, progress.step("hot claims", options.duration), stock=HUGE_STOCK, allowed={201}
        )
        soldout = benchmark.claim_scenario(
            "capacity-soldout refusals", run, progress.step("refusals", options.duration), stock=1, allowed={201, 400}
        )
        for measurement in (hot, soldout):
            if not measurement.verdict.startswith("ok"):
                raise SystemExit(f"INCORRECT: {measurement.name}: {measurement.verdict}")
        rows["claims"].append((hot.rate(201), hot.server_cpu, hot.database_cpu))
        rows["refusals"].append((soldout.rate(400), soldout.server_cpu, soldout.database_cpu))
        statements["claims"].append(hot.db_statements_per_answer)
        statements["refusals"].append(soldout.db_statements_per_answer)
        for label, script, claims_per_transaction in (
            ("pgbench 1 coupon", classic_transaction(ids[0]), 1),
            (group_label, group_script, GROUP_OF),
            ("pgbench 100 coupons", spread_script, 1),
        ):
            m = benchmark.pgbench(label, script, progress.step(label, options.duration), claims_per_transaction)
            rows[label].append((m.requests_per_second, None, m.database_cpu))
            statements.setdefault(label, []).append(m.db_statements_per_answer)
    progress.finish()
    for label, values in statements.items():
        if None not in values:
            print(f"database statements per answer, {label}: {statistics.median(values):.2f} (median)")
    return {label: tuple(statistics.median(v[i] for v in values) if values[0][i] is not None else None
                         for i in range(3)) for label, values in rows.items()}  # fmt: skip


def report(figures):
    claims, claims_app_cpu, claims_db_cpu = figures["claims"]
    refusals, refusals_app_cpu, refusals_db_cpu = figures["refusals"]
    classic_ceiling, _, _ = figures["pgbench 1 coupon"]
    # The service grants a hot coupon's claims in groups: its ceiling is the group transaction's.
    hot_ceiling, _, _ = figures[f"pgbench 1 coupon, groups of {GROUP_OF}"]
    spread_ceiling, _, spread_db_cpu = figures["pgbench 100 coupons"]
    claims_per_app_core = per_core(claims, claims_app_cpu)
    refusals_per_app_core = per_core(refusals, refusals_app_cpu)
    claims_per_db_core = per_core(claims, claims_db_cpu)
    refusals_per_db_core = per_core(refusals, refusals_db_cpu)

    print(f"{'measurement':<28} {'per s':>9} {'app CPU':>8} {'db CPU':>8}")
    for label, (rate, app_cpu, db_cpu) in figures.items():
        app = f"{app_cpu:7.0f}%" if app_cpu is not None else "       -"
        print(f"{label:<28} {rate:9.0f} {app} {db_cpu:7.0f}%")
    print("(medians; CPU in % of one core)\n")
    lines = [
        ("claims (201) per app-host core-second", claims_per_app_core),
        ("refusals (400, sold out) per app-host core-second", refusals_per_app_core),
        ("claims per database core-second", claims_per_db_core),
        ("refusals per database core-second", refusals_per_db_core),
        ("database ceiling, one hot coupon, one claim per transaction (claims/s)", classic_ceiling),
        (f"database ceiling, one hot coupon, groups of {GROUP_OF} (claims/s)", hot_ceiling),
        ("database ceiling, 100 coupons (pgbench tps)", spread_ceiling),
        ("app-host cores one primary feeds with claims (group ceiling ÷ per core)", hot_ceiling / claims_per_app_core),
        (f"app-host cores one {PRIMARY_CORES}-core primary feeds with refusals",
         PRIMARY_CORES * refusals_per_db_core / refusals_per_app_core),
    ]  # fmt: skip
    for label, value in lines:
        print(f"{label:<72} {value:10.1f}")

    rate = USERS / SECONDS
    app_cores = UNITS / claims_per_app_core + (rate - UNITS / SECONDS) / refusals_per_app_core
    db_cores_refusals = rate / refusals_per_db_core
    print(f"\nworked example: {USERS:,} users in {SECONDS} s for {UNITS:,} units ({rate:,.0f} claims/s offered)")
    print(f"  the {UNITS:,} units sell in {UNITS / hot_ceiling:.2f} s at the hot coupon's group ceiling"
          f" ({hot_ceiling:.0f} claims/s; {UNITS / classic_ceiling:.2f} s one claim per transaction)")  # fmt: skip
    print(f"  app tier: {app_cores:.0f} cores = {app_cores / APP_HOST_CORES:.1f} app hosts of {APP_HOST_CORES} cores")
    print(f"  database CPU for the refusals: {db_cores_refusals:.1f} cores (primary: {PRIMARY_CORES})")
    saturates = "the database primary" if db_cores_refusals > PRIMARY_CORES else "the app tier (add hosts)"
    print(f"  saturates first: {saturates}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement and run")
    options = parser.parse_args()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(PrivateCluster(max_connections=100, **SERVER_SETTINGS))
        env = {**os.environ, "DATABASE_URL": cluster.url, "DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(50)}
        os.environ.update(env, DJANGO_SETTINGS_MODULE="couponsite.settings")
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        base_url, server = stack.enter_context(web_server(env))
        report(measure(Benchmark(options, cluster.url, base_url, server), options))


if __name__ == "__main__":
    main()
