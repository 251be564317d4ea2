#!/usr/bin/env python
"""Flash-sale benchmark: the service under wrk, against the database's own ceiling.

    python bench/flashsale.py                      # 3 runs of 15 s per scenario
    python bench/flashsale.py --runs 1 --duration 3   # a quick smoke run

It starts the service the way production runs it (the tree's own server:
`python -m couponsite.serve`, or gunicorn with gunicorn.conf.py in a tree
from before it, so that one copy of this script measures both) on PostgreSQL — DATABASE_URL if set, else a private
cluster it creates with initdb/pg_ctl and removes afterwards — and drives it
with wrk (bench/claim.lua). In the same run it measures the ceilings on the
same database: pgbench running the classic lock-then-write transaction,
pgbench running the very SQL the service's claim issues (captured from
Django's query log), and GET /health through the same server.

It prints a table and the target ratios, checks every scenario against the
database, and writes bench/results/latest.json and latest.png.
"""

import argparse
import contextlib
import functools
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.statements import SERVER_SETTINGS, StatementCounter  # noqa: E402
from tests.faults.cluster import PrivateCluster  # noqa: E402
from tests.helpers import free_port  # noqa: E402

LUA_SCRIPT = ROOT / "bench" / "claim.lua"
RESULTS_DIR = ROOT / "bench" / "results"
HUGE_STOCK = 2**31 - 1
CONNECTIONS = 64
OVERLOAD_CONNECTIONS = 512


# Database ----------------------------------------------------------------------


def database_processes(url):
    """The PostgreSQL server processes behind this URL (all of them on a shared instance)."""
    port = urlsplit(url).port or 5432
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == "postgres" and "-D" in (process.info["cmdline"] or []):
            cmdline = " ".join(process.info["cmdline"])
            if f"-p {port}" in cmdline or (port == 5432 and "-p " not in cmdline):
                return [process, *process.children(recursive=True)]
    return [p for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]


# Server ------------------------------------------------------------------------


def server_command():
    """The command that serves this tree as `make run` does."""
    if (ROOT / "couponsite" / "serve.py").exists():
        return [sys.executable, "-m", "couponsite.serve"]
    return [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "couponsite.wsgi"]


@contextlib.contextmanager
def web_server(env, log_name="server.log"):
    port = free_port()
    server_env = {**env, "WEB_BIND": f"127.0.0.1:{port}", "GUNICORN_BIND": f"127.0.0.1:{port}"}
    process = subprocess.Popen(
        server_command(),
        cwd=ROOT,
        env=server_env,
        stdout=subprocess.DEVNULL,
        stderr=open(RESULTS_DIR / log_name, "w"),  # noqa: SIM115 - closed with the process
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base_url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not come up: see bench/results/{log_name}") from None
                time.sleep(0.2)
        yield base_url, process
    finally:
        process.terminate()
        process.wait(timeout=30)


def process_tree(process):
    root = psutil.Process(process.pid)
    return [root, *root.children(recursive=True)]


class CpuMeter:
    """CPU used by a changing set of processes (found anew at every sample) over a window.

    Processes that start during the window (pgbench's backends, a recycled
    worker) count from zero; those already running count from the start.
    """

    def __init__(self, find_processes):
        self.find_processes = find_processes

    def start(self):
        self.started = time.time()
        self.baseline, self.latest = {}, {}
        self.sample()

    def sample(self):
        for process in self.find_processes():
            with contextlib.suppress(psutil.Error):
                times, created = process.cpu_times(), process.create_time()
                key = (process.pid, created)
                self.baseline.setdefault(key, times.user + times.system if created < self.started else 0.0)
                self.latest[key] = times.user + times.system

    def seconds(self):
        """CPU seconds used since start()."""
        self.sample()
        return sum(self.latest[key] - self.baseline[key] for key in self.latest)

    def percent(self):
        """Percent of one core, since start()."""
        return 100 * self.seconds() / (time.time() - self.started)


# Load --------------------------------------------------------------------------


@dataclass
class Measurement:
    name: str
    requests_per_second: float
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    statuses: dict = field(default_factory=dict)
    socket_errors: int = 0
    server_cpu: float | None = None  # percent of one core
    database_cpu: float | None = None
    duration_s: float = 0.0
    verdict: str = ""
    status_rates: dict = field(default_factory=dict)  # status code -> responses per second
    group_sizes: dict | None = None  # claims per claim transaction: mean, p50, p99, transactions
    # Per answer (a response; for pgbench rows a claim): CPU in ms of one core, the database's statements
    # (bench/statements.py: pg_stat_statements deltas, transaction control apart) and their executor time.
    answers: int = 0
    app_cpu_ms_per_answer: float | None = None
    db_cpu_ms_per_answer: float | None = None
    db_statements_per_answer: float | None = None
    db_transaction_control_per_answer: float | None = None  # as recorded: under-recorded (bench/statements.py)
    db_foreign_key_checks_per_answer: float | None = None
    db_exec_ms_per_answer: float | None = None
    top_statements: list | None = None  # [(calls, exec ms per answer, normalized text)], all, most called first

    def rate(self, status):
        return self.statuses.get(status, 0) / self.duration_s if self.duration_s else 0.0


class Progress:
    def __init__(self, total):
        self.total, self.done = total, 0

    def step(self, label, seconds):
        self.done += 1
        started = time.monotonic()
        prefix = f"[{self.done:2}/{self.total}] {label}"
        return lambda: self.show(f"{prefix} · {seconds - (time.monotonic() - started):4.0f}s left")

    @staticmethod
    def show(text):
        if sys.stderr.isatty():
            sys.stderr.write(f"\r{text:<78}")
        sys.stderr.flush()

    def finish(self):
        if sys.stderr.isatty():
            sys.stderr.write("\r" + " " * 78 + "\r")


def watch(process, on_tick):
    while process.poll() is None:
        on_tick()
        time.sleep(1)
    return process.communicate()


def run_wrk(base_url, *, connections, duration, args, tick):
    command = [
        "wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--timeout", "10s",
        "-s", str(LUA_SCRIPT), base_url, "--", *args,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = watch(process, tick)
    line = next((line for line in stdout.splitlines() if line.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise SystemExit(f"wrk failed:\n{stdout}\n{stderr}")
    return json.loads(line.removeprefix("BENCH_RESULT "))


def run_pgbench(url, script, *, clients, duration, tick):
    parts = urlsplit(url)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as file:
        file.write(script)
    command = [
        "pgbench", "-n", "-M", "prepared", f"-c{clients}", "-j2", f"-T{duration}", "-f", file.name,
        "-h", parts.hostname, "-p", str(parts.port or 5432), "-U", parts.username or "postgres",
        parts.path.lstrip("/"),
    ]  # fmt: skip
    env = {**os.environ, "PGPASSWORD": parts.password or ""}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stdout, stderr = watch(process, tick)
    os.unlink(file.name)
    tps = re.search(r"tps = ([\d.]+)", stdout)
    if process.returncode != 0 or tps is None:
        raise SystemExit(f"pgbench failed:\n{stdout}\n{stderr}\n--- script ---\n{script}")
    latency = re.search(r"latency average = ([\d.]+) ms", stdout)
    transactions = re.search(r"number of transactions actually processed: (\d+)", stdout)
    return float(tps.group(1)), float(latency.group(1)) if latency else None, int(transactions.group(1))


def group_size_histogram(base_url):
    """The server's coupon_claim_group_size histogram (all workers added up): {bucket bound: count}, sum.

    None when the server has no such histogram (a version before group claims).
    """
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=10) as response:
            text = response.read().decode()
    except urllib.error.HTTPError:  # the straightforward claim (bench/straightforward.py) has no metrics
        return None
    buckets, total = {}, None
    for family in text_string_to_metric_families(text):
        if family.name != "coupon_claim_group_size":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
    return (buckets, total) if buckets else None


def group_size_figures(before, after):
    """Claims per transaction between two scrapes: mean, and p50/p99 as histogram bucket bounds."""
    if before is None or after is None:
        return None
    buckets = {bound: after[0][bound] - before[0].get(bound, 0) for bound in after[0]}
    transactions = buckets[float("inf")]
    if not transactions:
        return None

    def quantile(q):
        return next(bound for bound in sorted(buckets) if buckets[bound] >= q * transactions)

    return {
        "mean": (after[1] - before[1]) / transactions,
        "p50": quantile(0.5),
        "p99": quantile(0.99),
        "transactions": transactions,
    }


# Scenarios ---------------------------------------------------------------------


class Benchmark:
    def __init__(self, options, database_url, base_url, server):
        self.options = options
        self.database_url = database_url
        self.base_url = base_url
        self.server = server
        self.server_cpu = CpuMeter(lambda: process_tree(server))
        self.database_cpu = CpuMeter(lambda: database_processes(database_url))
        self.statements = StatementCounter(database_url)
        self.tag = secrets.token_hex(3)

    def metered(self, tick):
        """Start both CPU meters and snapshot the database's statements; the returned tick also samples the
        meters every second."""
        self.statements_before = self.statements.snapshot()
        self.server_cpu.start()
        self.database_cpu.start()

        def metered_tick():
            tick()
            self.server_cpu.sample()
            self.database_cpu.sample()

        return metered_tick

    def per_answer(self, measurement, answers, *, app=True):
        """Close the window metered() opened: CPU (both meters) and the database's statements per answer."""
        app_seconds, db_seconds = self.server_cpu.seconds() if app else None, self.database_cpu.seconds()
        delta = StatementCounter.delta(self.statements_before, self.statements.snapshot())
        measurement.answers = answers
        if not answers:
            return measurement
        if app_seconds is not None:
            measurement.app_cpu_ms_per_answer = 1000 * app_seconds / answers
        measurement.db_cpu_ms_per_answer = 1000 * db_seconds / answers
        if delta is not None:
            if delta.evicted:
                print(f"({measurement.name}: pg_stat_statements evicted {delta.evicted} entries: counts too low)")
            measurement.db_statements_per_answer = delta.statements / answers
            measurement.db_transaction_control_per_answer = delta.transaction_control / answers
            measurement.db_foreign_key_checks_per_answer = delta.foreign_key_checks / answers
            measurement.db_exec_ms_per_answer = delta.exec_ms / answers
            measurement.top_statements = [
                (calls / answers, exec_ms / answers, text) for calls, exec_ms, text in delta.top
            ]
        return measurement

    def measured(self, name, connections, wrk_args, tick, duration=None):
        result = run_wrk(
            self.base_url,
            connections=connections,
            duration=duration or self.options.duration,
            args=wrk_args,
            tick=self.metered(tick),
        )
        latency = result["latency_us"]
        measurement = Measurement(
            name=name,
            requests_per_second=result["requests"] / (result["duration_us"] / 1e6),
            p50_ms=latency["p50"] / 1000,
            p90_ms=latency["p90"] / 1000,
            p99_ms=latency["p99"] / 1000,
            statuses={int(code): count for code, count in result["statuses"].items()},
            socket_errors=sum(result["errors"].values()),
            server_cpu=self.server_cpu.percent(),
            database_cpu=self.database_cpu.percent(),
            duration_s=result["duration_us"] / 1e6,
        )
        return self.per_answer(measurement, sum(measurement.statuses.values()))

    def coupon_names(self, label, run, count=1):
        label = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
        return [f"bench-{label}-{self.tag}-{run}-{i}" for i in range(count)]

    def claim_scenario(
        self, name, run, tick, *, stock, coupons=1, pool=0, connections=CONNECTIONS, allowed, sold_out_before=False
    ):
        """wrk claiming `coupons` new coupons of `stock` units each; with `sold_out_before`, each is sold out
        (its stock claimed through the service, by this process) before the load starts: every answer a refusal."""
        from coupons.services import claim_coupon, create_coupon

        names = self.coupon_names(name, run, coupons)
        for coupon_name in names:
            create_coupon(name=coupon_name, amount=stock)
            for i in range(stock if sold_out_before else 0):
                claim_coupon(user_id=f"bench-seller-{i}", coupon_name=coupon_name)
        groups_before = group_size_histogram(self.base_url)
        measurement = self.measured(name, connections, ["claim", f"{self.tag}{run}", ",".join(names), str(pool)], tick)
        measurement.group_sizes = group_size_figures(groups_before, group_size_histogram(self.base_url))
        measurement.verdict = verify_claims(
            measurement, names, connections=connections, allowed=allowed, stock=stock, pool=pool
        )
        return measurement

    def read_scenario(self, run, tick):
        from django.db import connection

        from coupons.models import Claim, Coupon
        from coupons.services import create_coupon

        (name,) = self.coupon_names("read", run)
        coupon = create_coupon(name=name, amount=10_000)
        Claim.objects.bulk_create(Claim(coupon=coupon, user_id=f"reader-{i}") for i in range(10_000))
        Coupon.objects.filter(pk=coupon.pk).update(remaining_amount=0)
        with connection.cursor() as cursor:  # as autovacuum would, before the planner meets 10k new rows
            cursor.execute("ANALYZE coupons_claim")
        measurement = self.measured("read 10k claims", CONNECTIONS, ["get", "-", f"/api/coupons/{name}"], tick)
        measurement.verdict = verify_statuses(measurement, {200})
        return measurement

    def load_history(self, run, coupons=50, claims=500_000):
        """A database with history and nothing else: the coupons and everything hanging from them (the other
        scenarios' data) emptied, then `coupons` past coupons, sold out by `claims` claims between them (one
        INSERT ... SELECT generate_series), then ANALYZE: the statistics predate the sale that follows.

        Only that history: with other scenarios' coupons (hundreds, each with its own count of claims) in the
        statistics, the planner guesses a new coupon's claims otherwise, and may pick another plan."""
        import psycopg

        from coupons.services import create_coupon

        with psycopg.connect(self.database_url, autocommit=True) as connection:
            connection.execute("TRUNCATE coupons_coupon CASCADE")
        per_coupon = claims // coupons
        names = self.coupon_names("history", run, coupons)
        ids = [create_coupon(name=name, amount=per_coupon).pk for name in names]
        # A connection of its own: the service's settings give Django's a statement timeout.
        with psycopg.connect(self.database_url, autocommit=True) as connection:
            connection.execute("SET statement_timeout = 0")
            # 9 in 10 redeemed, 1 in 10 still held; 200,000 users, each with claims of several coupons.
            connection.execute(
                """
                INSERT INTO coupons_claim (user_id, coupon_id, created_at, code, status, redeemed_at, order_id)
                SELECT 'history-' || (g %% 200000), (%s::bigint[])[g / %s + 1],
                       now() - interval '60 days' + g * interval '1 second',
                       upper(substr(md5(%s || g::text), 1, 16)),
                       CASE WHEN g %% 10 = 0 THEN 'held' ELSE 'redeemed' END,
                       CASE WHEN g %% 10 = 0 THEN NULL ELSE now() - interval '59 days' + g * interval '1 second' END,
                       CASE WHEN g %% 10 = 0 THEN '' ELSE 'order-' || g END
                FROM generate_series(0, %s) AS g
                """,
                [ids, per_coupon, self.tag, per_coupon * coupons - 1],
            )
            connection.execute("UPDATE coupons_coupon SET remaining_amount = 0 WHERE id = ANY(%s)", [ids])
            connection.execute("VACUUM ANALYZE")

    def long_sale(self, run, windows, window_seconds, progress):
        """A new coupon of a large stock claimed by new users (wrk's 64 connections) for `windows` back-to-back
        windows of `window_seconds` each, on the database load_history() made. Autovacuum (and so autoanalyze) is
        off for the claims table during the sale, as on a production table at least 10x the sale's size, where
        it waits for 10% of the rows to change: the plans must hold without fresh statistics."""
        from django.db import connection

        from coupons.services import create_coupon

        (name,) = self.coupon_names("long sale", run)
        create_coupon(name=name, amount=HUGE_STOCK)
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE coupons_claim SET (autovacuum_enabled = false)")
        try:
            measurements = []
            for window in range(windows):
                tick = progress.step(f"long sale {run + 1} · window {window + 1}/{windows}", window_seconds)
                groups_before = group_size_histogram(self.base_url)
                measurement = self.measured(
                    f"long sale, window {window + 1}",
                    CONNECTIONS,
                    ["claim", f"{self.tag}{run}w{window}", name, "0"],
                    tick,
                    duration=window_seconds,
                )
                measurement.group_sizes = group_size_figures(groups_before, group_size_histogram(self.base_url))
                measurements.append(measurement)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("ALTER TABLE coupons_claim RESET (autovacuum_enabled)")
        whole = Measurement(name="long sale", requests_per_second=0, socket_errors=0)
        for m in measurements:
            whole.socket_errors += m.socket_errors
            for code, count in m.statuses.items():
                whole.statuses[code] = whole.statuses.get(code, 0) + count
        verdict = verify_claims(
            whole, [name], connections=CONNECTIONS * windows, allowed={201}, stock=HUGE_STOCK, pool=0
        )
        for m in measurements:
            m.verdict = verdict
        return measurements

    def health(self, run, tick):
        measurement = self.measured("GET /health", CONNECTIONS, ["get", "-", "/health"], tick)
        measurement.verdict = verify_statuses(measurement, {200})
        return measurement

    def pgbench(self, name, script, tick, claims_per_transaction=1):
        tps, latency, transactions = run_pgbench(
            self.database_url, script, clients=CONNECTIONS, duration=self.options.duration, tick=self.metered(tick)
        )
        measurement = Measurement(
            name=name,
            requests_per_second=tps * claims_per_transaction,
            p50_ms=latency,
            database_cpu=self.database_cpu.percent(),
            verdict="-",
        )
        return self.per_answer(measurement, transactions * claims_per_transaction, app=False)


def verify_statuses(measurement, allowed):
    if not measurement.statuses:
        return "FAIL: no response at all"
    unexpected = {code: n for code, n in measurement.statuses.items() if code not in allowed}
    if unexpected or measurement.socket_errors:
        return f"FAIL: statuses {unexpected}, socket errors {measurement.socket_errors}"
    return "ok"


def verify_claims(measurement, names, *, connections, allowed, stock, pool):
    """Stock arithmetic exact in the database; client-counted successes = claim rows.

    Only requests cut off in flight when wrk stops (at most one per
    connection) may have committed without their 201 being counted.
    """
    from django.db.models import Count

    from coupons.models import Coupon

    problems = []
    status_verdict = verify_statuses(measurement, allowed)
    if status_verdict != "ok":
        problems.append(status_verdict)
    coupons = list(Coupon.objects.filter(name__in=names).annotate(rows=Count("claims")))
    rows = sum(coupon.rows for coupon in coupons)
    for coupon in coupons:
        if coupon.remaining_amount != coupon.amount - coupon.rows:
            problems.append(f"{coupon.name}: remaining {coupon.remaining_amount} != {coupon.amount} - {coupon.rows}")
    uncounted = rows - measurement.statuses.get(201, 0)
    if not 0 <= uncounted <= connections:
        problems.append(f"{rows} claim rows vs {measurement.statuses.get(201, 0)} successes counted")
    if rows > stock * len(names):
        problems.append(f"oversold: {rows} claims of {stock * len(names)}")
    if pool and rows > pool * len(names):
        problems.append(f"{rows} claims by a pool of {pool} users")
    return "; ".join(problems) or f"ok ({rows} claims, {uncounted} cut off in flight)"


# A claim code for pgbench's rows: codes are unique, so a replayed script cannot send one drawn once.
PGBENCH_CODE = "upper(substr(md5(random()::text), 1, 16))"


def claims_have_codes():
    """Whether this tree's claims carry a code and a status (since the claim lifecycle): the script measures trees
    from before it too."""
    from coupons.models import Claim

    return any(field.name == "code" for field in Claim._meta.get_fields())


def classic_transaction(coupon_id):
    columns, values = (", code, status, order_id", f", {PGBENCH_CODE}, 'held', ''") if claims_have_codes() else ("", "")
    return f"""\\set r random(1, 1000000000000)
BEGIN;
SELECT id, remaining_amount FROM coupons_coupon WHERE id = {coupon_id} FOR UPDATE;
INSERT INTO coupons_claim (user_id, coupon_id, created_at{columns})
    VALUES ('pgb-' || :client_id || '-' || :r, {coupon_id}, now(){values});
UPDATE coupons_coupon SET remaining_amount = remaining_amount - 1 WHERE id = {coupon_id};
COMMIT;
"""


GROUP_OF = 8  # claims per transaction in the "pgbench group" ceiling


def service_transaction(coupon_name, *, group_size=1):
    """The SQL the service sends, from Django's query log, as a pgbench script: one successful
    claim_coupon() (the eligibility read, then a group of one), or a group of `group_size` claims'
    transaction (grant_claims)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from coupons.claim_groups import grant_claims
    from coupons.models import Claim, Coupon
    from coupons.services import claim_coupon

    placeholders = [f"bench-user-placeholder-{i}" for i in range(group_size)]
    coupon_id = Coupon.objects.get(name=coupon_name).pk
    with CaptureQueriesContext(connection) as queries:
        if group_size == 1:
            claim_coupon(user_id=placeholders[0], coupon_name=coupon_name)
        else:
            grant_claims(coupon_id=coupon_id, user_ids=placeholders)
    # The codes the service drew, sent as literals: replayed, each would hit the codes' unique index.
    claims = Claim.objects.filter(coupon_id=coupon_id, user_id__in=placeholders)
    codes = set(claims.values_list("code", flat=True)) if claims_have_codes() else set()
    lines = ["\\set r random(1, 1000000000000)"]
    for query in queries.captured_queries:
        sql = query["sql"]
        for i, placeholder in enumerate(placeholders):
            sql = sql.replace(f"'{placeholder}'", f"('pgb-' || :client_id || '-' || :r || '-{i}')")
        for code in codes:
            sql = sql.replace(f"'{code}'", PGBENCH_CODE)
        sql = re.sub(r"'\d{4}-\d\d-\d\d[ T][\d:.+-]+'::timestamptz", "now()", sql)
        # What the service makes anew for each claim, made anew for each transaction: the claim's code (unique)
        # and the number its coupon's events start after (unique per coupon; the service read it under the row
        # lock, here a subquery of the statement reads it there).
        sql = re.sub(r"'[0-9A-HJKMNP-TV-Z]{16}'", "upper(substr(md5(random()::text), 1, 16))", sql)
        sql = re.sub(
            r", \d+ \+ e\.number,",
            f", (SELECT last_event_sequence FROM coupons_coupon WHERE id = {coupon_id}) + e.number,",
            sql,
        )
        lines.append(sql.rstrip(";") + ";")
    return "\n".join(lines) + "\n"


# Report ------------------------------------------------------------------------


PER_ANSWER = [
    "app_cpu_ms_per_answer",
    "db_statements_per_answer",
    "db_transaction_control_per_answer",
    "db_foreign_key_checks_per_answer",
    "db_exec_ms_per_answer",
    "db_cpu_ms_per_answer",
]


def medians(runs):
    """Per scenario, the median of each figure over the runs."""
    by_name = {}
    for measurement in runs:
        by_name.setdefault(measurement.name, []).append(measurement)
    result = {}
    for name, measurements in by_name.items():

        def median(attribute, measurements=measurements):
            values = [getattr(m, attribute) for m in measurements if getattr(m, attribute) is not None]
            return statistics.median(values) if values else None

        statuses = {}
        for m in measurements:
            for code, count in m.statuses.items():
                statuses[code] = statuses.get(code, 0) + count
        result[name] = Measurement(
            name=name,
            requests_per_second=median("requests_per_second"),
            p50_ms=median("p50_ms"),
            p90_ms=median("p90_ms"),
            p99_ms=median("p99_ms"),
            statuses=statuses,
            socket_errors=sum(m.socket_errors for m in measurements),
            server_cpu=median("server_cpu"),
            database_cpu=median("database_cpu"),
            verdict="ok" if all(m.verdict.startswith(("ok", "-")) for m in measurements) else "FAIL",
            **{attribute: median(attribute) for attribute in PER_ANSWER},
        )
        result[name].status_rates = {code: statistics.median(m.rate(code) for m in measurements) for code in statuses}
        grouped = [m.group_sizes for m in measurements if m.group_sizes]
        if grouped:
            result[name].group_sizes = {key: statistics.median(g[key] for g in grouped) for key in grouped[0]}
    return result


def cpu_ms_per(measurement, status):
    """Server and database CPU (ms of one core) per response of `status`."""
    rate = measurement.status_rates.get(status, 0)
    if not rate:
        return None, None
    return tuple(None if cpu is None else 10 * cpu / rate for cpu in (measurement.server_cpu, measurement.database_cpu))


def ratios(summary):
    """The target ratios whose scenarios ran (all of them but with --scenario)."""
    needed = {"hot claim", "GET /health", "sold-out stampede", "double-dip storm", "overload 512"}
    if not needed <= set(summary):
        return []
    hot, classic = summary["hot claim"], summary["pgbench classic"]
    health, soldout, dip = summary["GET /health"], summary["sold-out stampede"], summary["double-dip storm"]
    overload = summary["overload 512"]
    claims = hot.status_rates.get(201, 0)
    service_sql = summary["pgbench service SQL"].requests_per_second
    rejections = soldout.status_rates.get(400, 0)
    repeats = dip.status_rates.get(409, 0)
    overload_5xx = sum(n for code, n in overload.statuses.items() if code >= 500)
    return [
        ("hot claims/s ÷ pgbench classic (64)", claims / classic.requests_per_second, ">= 1.0"),
        ("hot claims/s ÷ pgbench service SQL (64)", claims / service_sql, "info"),
        ("sold-out rejections/s ÷ /health req/s", rejections / health.requests_per_second, ">= 0.9"),
        ("double-dip 409/s ÷ /health req/s", repeats / health.requests_per_second, ">= 0.9"),
        ("sold-out rejections/s ÷ hot claims/s", rejections / max(claims, 1e-9), "info"),
        (f"pgbench group of {GROUP_OF} ÷ classic (claims/s)",
         summary[f"pgbench group of {GROUP_OF}"].requests_per_second / classic.requests_per_second, "info"),
        *straightforward_ratios(summary),
        ("hot claim p99 (ms)", hot.p99_ms, "<= 100"),
        ("overload: 5xx responses", overload_5xx, "== 0"),
        ("overload: socket errors", overload.socket_errors, "== 0"),
    ]  # fmt: skip


def straightforward_ratios(summary):
    """The service's rates over the straightforward claim's, where both ran."""
    rows = []
    for name, status, target in (("hot claim", 201, "info"), ("sold-out refusals", 400, ">= 4.0")):
        straight = summary.get(f"{STRAIGHTFORWARD} {name}")
        if straight is not None and name in summary:
            rate = summary[name].status_rates.get(status, 0) / max(straight.status_rates.get(status, 0), 1e-9)
            rows.append((f"{name} ÷ a straightforward Django + DRF claim", rate, target))
    return rows


def meets(value, target):
    if target == "info":
        return "info"
    operator, threshold = target.split()
    ok = {"<=": value <= float(threshold), ">=": value >= float(threshold), "==": value == float(threshold)}
    return "met" if ok[operator] else "MISSED"


def print_report(summary, ratio_rows):
    columns = ["req/s", "p50", "p90", "p99", "srv CPU", "db CPU"]
    header = f"{'scenario':<20} {columns[0]:>8} " + " ".join(f"{c:>7}" for c in columns[1:]) + "  statuses / verdict"
    print(header)
    print("-" * len(header))
    for m in summary.values():

        def ms(value):
            return f"{value:7.1f}" if value is not None else "      -"

        def pct(value):
            return f"{value:6.0f}%" if value is not None else "      -"

        statuses = " ".join(f"{code}:{count}" for code, count in sorted(m.statuses.items()))
        errors = f" sockerr:{m.socket_errors}" if m.socket_errors else ""
        print(
            f"{m.name:<20} {m.requests_per_second:8.0f} {ms(m.p50_ms)} {ms(m.p90_ms)} {ms(m.p99_ms)}"
            f" {pct(m.server_cpu)} {pct(m.database_cpu)}  {statuses}{errors} [{m.verdict}]"
        )
    print("\n(req/s: median of runs; p50/p90/p99 in ms; CPU in % of one core; statuses summed over runs;")
    print(" pgbench rows: transactions/s — claims/s for the group row — and average latency in the p50 column)\n")
    for label, value, target in ratio_rows:
        print(f"{label:<44} {value:9.2f}   target {target:<7} {meets(value, target)}")
    print("\nclaims per claim transaction (group size; median of runs; p50/p99 are histogram bucket bounds):")
    for m in summary.values():
        if m.group_sizes:
            g = m.group_sizes
            print(f"  {m.name:<20} mean {g['mean']:6.1f}  p50 {g['p50']:5.0f}  p99 {g['p99']:5.0f}"
                  f"  ({g['transactions']:.0f} transactions)")  # fmt: skip
    print_per_answer(summary)
    print("\nCPU per response (ms of one core; median rates):")
    for name, status in [
        ("hot claim", 201),
        ("sold-out stampede", 400),
        ("double-dip storm", 409),
        ("GET /health", 200),
    ]:
        if name not in summary:
            continue
        server, database = cpu_ms_per(summary[name], status)
        if server is not None:
            print(f"  {name:<20} server {server:5.2f}  database {database:5.2f}  (per {status})")


def print_per_answer(summary):
    """Per scenario, what one answer (a response; for pgbench rows one claim) costs the app and the database."""

    def figure(value, width=7, digits=2):
        return f"{value:{width}.{digits}f}" if value is not None else " " * (width - 1) + "-"

    print("\nper answer (medians of runs; for pgbench rows an answer is a claim):")
    header = f"  {'scenario':<22} {'answers/s':>9} {'p50':>7} {'p99':>7} {'app CPU':>8} {'db stmts':>8}"
    print(header + f" {'db exec':>8} {'db CPU':>8}")
    for m in summary.values():
        print(
            f"  {m.name:<22} {m.requests_per_second:9.0f} {figure(m.p50_ms, 7, 1)} {figure(m.p99_ms, 7, 1)}"
            f" {figure(m.app_cpu_ms_per_answer, 8, 3)} {figure(m.db_statements_per_answer, 8)}"
            f" {figure(m.db_exec_ms_per_answer, 8, 3)}"
            f" {figure(m.db_cpu_ms_per_answer, 8, 3)}"
        )
    print(
        "  (app CPU, db CPU: ms of one core per answer, from /proc utime+stime of the web server's and of the\n"
        "  cluster's processes; db stmts: pg_stat_statements calls per answer, without BEGIN/COMMIT/SAVEPOINT/\n"
        "  RELEASE/ROLLBACK, SET/SHOW/RESET and foreign-key checks (bench/statements.py); db exec: their\n"
        "  total_exec_time in ms, lock waits included: the database's cost is db CPU)"
    )


def print_statements(runs):
    """The statements behind the counts: each scenario's most called, from its last run."""
    last = {m.name: m for m in runs if m.top_statements}
    if not last:
        return
    print("\nmost called statements per answer (last run of each scenario; calls/answer, exec ms/answer):")
    for name, m in last.items():
        print(f"  {name}:")
        for calls, exec_ms, text in m.top_statements[:3]:
            print(f"    {calls:6.2f} {exec_ms:7.3f}  {text[:110]}")


def print_drift(first, last, count=3):
    """The statements whose mean executor time per call grew most from the first window to the last (a plan
    that reads more rows as the sale goes; lock waits count too)."""

    def per_call(measurement):
        return {text: exec_ms / calls for calls, exec_ms, text in measurement.top_statements or [] if calls}

    before, after = per_call(first), per_call(last)
    grown = sorted(((after[text] - before[text], text) for text in after if text in before), reverse=True)
    if grown:
        print("  statements whose exec time per call grew most, first window -> last (ms per call):")
    for _, text in grown[:count]:
        print(f"    {before[text]:8.3f} -> {after[text]:8.3f}  {text[:96]}")


def long_sale_report(sales):
    """Each sale's windows and its last/first ratio of granted claims/s; returns the ratios."""
    result = []
    for number, windows in enumerate(sales, 1):
        print(f"\na sale that lasts (history: 50 past coupons, 500,000 claims, analyzed; sale {number}):")
        header = f"  {'window':<8} {'granted/s':>9} {'p50':>7} {'p99':>7} {'app CPU':>8} {'db stmts':>8} {'db CPU':>8}"
        print(header + f" {'group':>6}")
        for i, m in enumerate(windows, 1):
            group = f"{m.group_sizes['mean']:6.1f}" if m.group_sizes else "     -"
            print(
                f"  {i:<8} {m.rate(201):9.0f} {m.p50_ms:7.1f} {m.p99_ms:7.1f} {m.app_cpu_ms_per_answer or 0:8.3f}"
                f" {m.db_statements_per_answer or 0:8.2f} {m.db_cpu_ms_per_answer or 0:8.3f} {group}  [{m.verdict}]"
            )
        ratio = windows[-1].rate(201) / max(windows[0].rate(201), 1e-9)
        result.append(ratio)
        print(f"  last window ÷ first (granted claims/s) {ratio:9.2f}   target >= 0.9   {meets(ratio, '>= 0.9')}")
        first_cpu, last_cpu = windows[0].db_cpu_ms_per_answer, windows[-1].db_cpu_ms_per_answer
        if first_cpu and last_cpu:  # the plan's drift, less exposed to the machine's other load than the rate
            print(f"  last window ÷ first (db CPU per claim)  {last_cpu / first_cpu:9.2f}   info")
        print_drift(windows[0], windows[-1])
    return result


def write_results(summary, ratio_rows, all_runs, options, context, long_sales=()):
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    document = {
        "context": context,
        "options": {"runs": options.runs, "duration_s": options.duration},
        "medians": {name: {**vars(m), "statuses": m.statuses} for name, m in summary.items()},
        "ratios": [{"ratio": label, "value": value, "target": target, "result": meets(value, target)}
                   for label, value, target in ratio_rows],
        "runs": [vars(m) for m in all_runs],
        "long_sales": [[vars(m) for m in windows] for windows in long_sales],
    }  # fmt: skip
    (RESULTS_DIR / "latest.json").write_text(json.dumps(document, indent=2, default=str))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(13, 5))
    throughput.barh(names, [summary[n].requests_per_second for n in names], color="#4477aa")
    throughput.set_xlabel("requests (or transactions) per second, median")
    throughput.invert_yaxis()
    latency_names = [n for n in names if summary[n].p99_ms is not None and not n.startswith("pgbench")]
    latency.barh(latency_names, [summary[n].p99_ms for n in latency_names], color="#cc6677")
    latency.set_xlabel("p99 latency (ms), median")
    latency.invert_yaxis()
    figure.suptitle(
        f"flash-sale benchmark — {context['cpus']} CPUs, {context['workers']} workers ({context['server']})"
    )
    figure.tight_layout()
    figure.savefig(RESULTS_DIR / "latest.png", dpi=100)


# Main --------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of every scenario (medians are reported)")
    parser.add_argument("--duration", type=int, default=15, help="seconds per scenario and run")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=[*SCENARIOS, "long-sale"],
        help="run only these scenarios (repeatable; pgbench's ceilings always run); default: all but long-sale",
    )
    parser.add_argument("--long-sale", action="store_true", help="add the long sale to the scenarios")
    parser.add_argument("--long-sale-windows", type=int, default=4, help="back-to-back windows of the long sale")
    parser.add_argument("--long-sale-window", type=int, default=15, help="seconds per window of the long sale")
    options = parser.parse_args()
    options.scenario = options.scenario or list(SCENARIOS)
    if options.long_sale and "long-sale" not in options.scenario:
        options.scenario.append("long-sale")
    if "long-sale" in options.scenario and os.environ.get("DATABASE_URL"):
        raise SystemExit("the long sale empties the coupons' tables: it runs on the private cluster only")
    for tool in ("wrk", "pgbench", "pg_config"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install wrk postgresql-client (make bench does it)")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)

    with contextlib.ExitStack() as stack:
        private = not os.environ.get("DATABASE_URL")
        # The fault tests' throwaway cluster: pgbench runs 64 clients beside two servers' workers (the
        # service's and the straightforward claim's).
        cluster = PrivateCluster(max_connections=200, **SERVER_SETTINGS)
        database_url = stack.enter_context(cluster).url if private else os.environ["DATABASE_URL"]
        if not database_url.startswith("postgres"):
            raise SystemExit("the benchmark needs PostgreSQL: unset DATABASE_URL to get a private cluster")
        env = {**os.environ, "DATABASE_URL": database_url, "DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(50)}
        os.environ.update(env)
        os.environ["DJANGO_SETTINGS_MODULE"] = "couponsite.settings"
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        base_url, server = stack.enter_context(web_server(env))
        benchmark = Benchmark(options, database_url, base_url, server)
        # The yardstick: a straightforward Django + DRF claim, served the same way on the same database.
        straight_env = {**env, "DJANGO_SETTINGS_MODULE": "bench.straightforward_settings"}
        straight_url, straight_server = stack.enter_context(web_server(straight_env, "straightforward.log"))
        straightforward = Benchmark(options, database_url, straight_url, straight_server)
        return run_all(benchmark, options, database="private cluster" if private else "DATABASE_URL",
                       straightforward=straightforward)  # fmt: skip


# --scenario's names: the scenario, and its claim_scenario settings (None: a method of its own).
SCENARIOS = {
    "hot-claim": ("hot claim", {"stock": HUGE_STOCK, "allowed": {201}}),
    "sold-out-stampede": ("sold-out stampede", {"stock": 100, "allowed": {201, 400}}),
    # Sold out before the load: every answer a 400, what a refusal alone costs (statements, CPU).
    "sold-out-refusals": ("sold-out refusals", {"stock": 1, "allowed": {400}, "sold_out_before": True}),
    "double-dip-storm": ("double-dip storm", {"stock": HUGE_STOCK, "pool": 50, "allowed": {201, 409}}),
    "spread-100-coupons": ("spread 100 coupons", {"stock": HUGE_STOCK, "coupons": 100, "allowed": {201}}),
    "overload-512": ("overload 512", {"stock": HUGE_STOCK, "connections": OVERLOAD_CONNECTIONS, "allowed": {201}}),
    "read-10k-claims": ("read 10k claims", None),
    "health": ("GET /health", None),
}


# The scenarios also run against the straightforward claim (bench/straightforward.py), named with this prefix.
STRAIGHTFORWARD = "straightforward:"
STRAIGHTFORWARD_SCENARIOS = ("hot-claim", "sold-out-refusals")


def run_all(benchmark, options, database, straightforward=None):
    from coupons.services import create_coupon

    methods = {"read-10k-claims": benchmark.read_scenario, "health": benchmark.health}
    scenarios = [
        (name, methods[slug] if settings is None else functools.partial(benchmark.claim_scenario, name, **settings))
        for slug, (name, settings) in SCENARIOS.items()
        if slug in options.scenario
    ]
    if straightforward is not None:
        scenarios += [
            (f"{STRAIGHTFORWARD} {name}", functools.partial(straightforward.claim_scenario, f"{STRAIGHTFORWARD} {name}",
                                                            **settings))
            for slug, (name, settings) in SCENARIOS.items()
            if slug in STRAIGHTFORWARD_SCENARIOS and slug in options.scenario
        ]  # fmt: skip
    load = [os.getloadavg()]
    pgbench_coupon = create_coupon(name=f"bench-pgbench-{benchmark.tag}", amount=HUGE_STOCK)
    service_script = service_transaction(pgbench_coupon.name)
    ceilings = [
        ("pgbench classic", classic_transaction(pgbench_coupon.pk), 1),
        ("pgbench service SQL", service_script, 1),
        (f"pgbench group of {GROUP_OF}", service_transaction(pgbench_coupon.name, group_size=GROUP_OF), GROUP_OF),
    ]
    long_sale = "long-sale" in options.scenario
    steps = options.runs * (len(scenarios) + len(ceilings) + long_sale * options.long_sale_windows)
    progress = Progress(steps)
    all_runs, long_sales = [], []
    for run_number in range(options.runs):
        label = f"run {run_number + 1}/{options.runs}"
        for name, scenario in scenarios:
            all_runs.append(scenario(run_number, progress.step(f"{label} · {name}", options.duration)))
        for name, script, claims_per_transaction in ceilings:
            step = progress.step(f"{label} · {name}", options.duration)
            all_runs.append(benchmark.pgbench(name, script, step, claims_per_transaction))
    load.append(os.getloadavg())
    if long_sale:  # last: it empties the database the other scenarios filled
        for run_number in range(options.runs):
            progress.show(f"long sale {run_number + 1}: loading the history (50 coupons, 500,000 claims) ...")
            benchmark.load_history(run_number)
            long_sales.append(
                benchmark.long_sale(run_number, options.long_sale_windows, options.long_sale_window, progress)
            )
        load.append(os.getloadavg())
    progress.finish()

    summary = medians(all_runs)
    ratio_rows = ratios(summary)
    print_report(summary, ratio_rows)
    print_statements(all_runs + [m for sale in long_sales for m in sale])
    long_sale_ratios = long_sale_report(long_sales)
    if long_sale_ratios:
        median_ratio = statistics.median(long_sale_ratios)
        ratio_rows.append(("long sale: last window ÷ first (granted/s)", median_ratio, ">= 0.9"))
    print("\nload average (1, 5, 15 min) at the start, after the scenarios, after the long sale: " + "; ".join(
        " ".join(f"{x:.2f}" for x in figures) for figures in load))  # fmt: skip
    if "pgbench service SQL" in summary:
        print("\nthe claim's SQL, as replayed by pgbench:\n" + service_script)
    context = {
        "cpus": os.cpu_count(),
        "server": " ".join(server_command()[1:]),
        "workers": int(os.environ.get("WEB_CONCURRENCY") or os.cpu_count()),
        "database": database,
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average": load,
    }
    write_results(summary, ratio_rows, all_runs, options, context, long_sales)
    print(f"results: {RESULTS_DIR / 'latest.json'}, chart: {RESULTS_DIR / 'latest.png'}")
    windows = [m for sale in long_sales for m in sale]
    failed = [m for m in all_runs + windows if not m.verdict.startswith(("ok", "-"))]
    for m in failed:
        print(f"INCORRECT: {m.name}: {m.verdict}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
