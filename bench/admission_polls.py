"""Polls answered through the served app (issue 23's numbers): poll answers per second per app core, and the
database statements each costs, at the steady state of a queued sale.

    .venv/bin/python bench/admission_polls.py [--users 2000] [--runs 3] [--duration 10]

The service as it ships (`python -m couponsite.serve`, one worker process with
its 16 threads) on a private PostgreSQL cluster with pg_stat_statements
(bench/statements.py), a queue coupon whose entrants are half admitted (a
token in each of their answers) and half waiting; wrk polls each entrant in
turn (bench/poll.lua). Per run: the server's CPU seconds (its processes'
utime + stime: wrk shares the machine's cores, so the rate is per CPU-second
used, not per wall-clock second) and pg_stat_statements' calls in the
window. Each user is polled once before the runs (a process reads a user's
entry once: that is the warm-up, not the steady state).
"""

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import urllib.request
from contextlib import ExitStack, closing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from flashsale import RESULTS_DIR, CpuMeter, process_tree, watch, web_server  # noqa: E402

from bench.statements import SERVER_SETTINGS, StatementCounter  # noqa: E402
from tests.faults.cluster import PrivateCluster  # noqa: E402

LUA_SCRIPT = ROOT / "bench" / "poll.lua"
USERS_POLLING = 100_000  # the figure: users polling once a second


def run_wrk(base_url, name, users, duration):
    import json

    command = [
        "wrk", "-t2", "-c32", f"-d{duration}s", "--timeout", "10s",
        "-s", str(LUA_SCRIPT), base_url, "--", name, str(users),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = watch(process, lambda: None)
    line = next((line for line in stdout.splitlines() if line.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise SystemExit(f"wrk failed:\n{stdout}\n{stderr}")
    return json.loads(line.removeprefix("BENCH_RESULT "))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    args = parser.parse_args()
    with ExitStack() as stack:
        cluster = stack.enter_context(PrivateCluster(max_connections=60, **SERVER_SETTINGS))
        env = {**os.environ, "DATABASE_URL": cluster.url, "DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(50)}
        env["WEB_CONCURRENCY"] = "1"
        os.environ.update(env)
        os.environ["DJANGO_SETTINGS_MODULE"] = "couponsite.settings"
        import django

        django.setup()
        from django.core.management import call_command

        from admission.services import admission_pass, enter
        from coupons.services import create_coupon

        call_command("migrate", verbosity=0)
        name = "POLLS"
        options = {"admission": "queue", "admission_seconds": 3600}  # admissions outlast the runs
        coupon = create_coupon(name=name, amount=args.users // 2, options=options)
        for n in range(args.users):
            enter(coupon_name=name, user_id=f"u{n}")
        print(f"admitted {admission_pass(coupon_id=coupon.pk)['admitted']} of {args.users} entrants")

        RESULTS_DIR.mkdir(exist_ok=True)  # the server's log
        base_url, server = stack.enter_context(web_server(env, log_name="admission-polls-server.log"))
        for n in range(args.users):  # each user's entry read once by the (one) worker process
            with urllib.request.urlopen(f"{base_url}/api/coupons/{name}/entries/u{n}") as response:
                assert response.status == 200
        counter = stack.enter_context(closing(StatementCounter(cluster.url)))
        meter = CpuMeter(lambda: process_tree(server))
        rates, statements = [], []
        for run in range(args.runs):
            before = counter.snapshot()
            meter.start()
            result = run_wrk(base_url, name, args.users, args.duration)
            cpu = meter.seconds()
            delta = StatementCounter.delta(before, counter.snapshot())
            if result["non_2xx"] or result["socket_errors"]:
                raise SystemExit(f"run {run + 1}: not every poll answered 200: {result}")
            rates.append(result["requests"] / cpu)
            statements.append(delta.statements / result["requests"])
            print(
                f"run {run + 1}: {result['requests']:,} polls in {args.duration} s (p50 {result['p50_ms']} ms),"
                f" server CPU {cpu:.2f} s: {rates[-1]:,.0f} polls per CPU-second;"
                f" {delta.statements} statements ({statements[-1]:.5f} per poll): "
                + "; ".join(f"{calls} x {text[:70]}" for calls, _, text in delta.top[:3])
            )
        rate = statistics.median(rates)
        print(
            f"median: {rate:,.0f} polls per second per app core, {statistics.median(statements):.5f} statements"
            f" per poll; {USERS_POLLING:,} users polling once a second: {USERS_POLLING / rate:.0f} app cores"
        )


if __name__ == "__main__":
    main()
