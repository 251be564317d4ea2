#!/usr/bin/env python
"""Server CPU per request, by outcome and by WSGI server: what each answer costs the app tier.

    python bench/cpu_per_request.py                                  # the tree's own server, every outcome
    python bench/cpu_per_request.py --servers gunicorn,granian,pyuwsgi --floor   # the servers side by side

Each server serves couponsite.wsgi (DEBUG off, JSON logs, Prometheus in
multiprocess mode) with the same shape: `--workers` processes of
`--threads` threads. wrk (bench/claim.lua) sends one kind of request at a
time (bench/outcomes.py: /health, a granted claim, each refusal) for
`--duration` seconds over `--connections` connections, while the CPU
(user + system, from /proc) of the server's whole process tree is metered:
CPU per request = that CPU ÷ the requests answered. `--floor` adds a bare
WSGI callable (bench/floor_app.py): the server's own cost. Rounds run
every server and outcome in turn; the medians are printed, with each
figure's ratio to the first server's. CPU, not wall time, so that other
work on the machine changes the figures little.

`shipped` is the server the tree ships, started by its own entry point
(bench/flashsale.py's server_command: couponsite/serve.py, or
gunicorn.conf.py in a tree from before it), so the same script measures a
tree before and after the change of server.

DATABASE_URL names the PostgreSQL database to use (the data is added to it);
unset, a private cluster is made for the run and removed afterwards.
"""

import argparse
import contextlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# bench/ last on the path (it is the script's own directory only when run as a script; tests import bench.capacity):
# its scripts named like the apps (bench/admission.py, bench/campaigns.py) must not shadow them.
sys.path.append(str(ROOT / "bench"))

import psutil  # noqa: E402
from flashsale import RESULTS_DIR, run_wrk, server_command  # noqa: E402
from outcomes import prepare  # noqa: E402

from tests.faults.cluster import PrivateCluster  # noqa: E402
from tests.helpers import free_port  # noqa: E402

APPLICATION = "couponsite.wsgi:application"
FLOOR = "floor_app:application"  # bench/floor_app.py


def server_arguments(server, application, port, workers, threads):
    """The command line and extra environment that start `server` with this shape."""
    python = sys.executable
    if server == "shipped":  # as bench/flashsale.py starts it
        return server_command(), {
            "WEB_BIND": f"127.0.0.1:{port}",
            "WEB_THREADS": str(threads),
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "GUNICORN_THREADS": str(threads),
        }
    if server == "gunicorn":  # threaded workers, as gunicorn.conf.py ran them before granian
        return [
            python, "-m", "gunicorn", "--worker-class", "gthread", "--workers", str(workers),
            "--threads", str(threads), "--bind", f"127.0.0.1:{port}", "--backlog", "2048",
            "--keep-alive", "5", application,
        ], {}  # fmt: skip
    if server == "granian":
        return [
            python, "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--blocking-threads", str(threads), "--no-ws", "--http", "1",
            "--backlog", "2048", "--log-level", "warning", application,
        ], {}  # fmt: skip
    if server == "pyuwsgi":
        return [
            str(Path(python).with_name("uwsgi")), "--http11-socket", f"127.0.0.1:{port}", "--master",
            "--processes", str(workers), "--threads", str(threads), "--module", application,
            "--enable-threads", "--lazy-apps", "--die-on-term", "--need-app", "--disable-logging",
            "--listen", "1024",
        ], {}  # fmt: skip
    raise SystemExit(f"unknown server {server!r}")


@contextlib.contextmanager
def serving(server, application, env, workers, threads):
    port = free_port()
    command, extra = server_arguments(server, application, port, workers, threads)
    metrics_dir = tempfile.mkdtemp(prefix="couponsite-bench-metrics-")
    server_env = {
        **env,
        **extra,
        "WEB_CONCURRENCY": str(workers),
        "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
        "PYTHONPATH": str(ROOT / "bench"),  # the floor application
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
    }
    log = open(RESULTS_DIR / f"cpu-{server}.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, cwd=ROOT, env=server_env, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base_url + "/health", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{server} did not come up: see {log.name}") from None
                time.sleep(0.2)
        yield base_url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def wrk_arguments(outcome, tag):
    if outcome.method == "GET":
        return ["get", "-", outcome.path]
    if outcome.body is not None:
        return ["post", "-", outcome.path, outcome.body.decode()]
    if outcome.users == "holders":
        return ["claim", tag, outcome.coupon, "50"]
    return ["claim", f"{tag}-{secrets.token_hex(4)}", outcome.coupon, "0"]


def tree_cpu_seconds(pid):
    """User + system CPU of a process and all its descendants, living or dead.

    A worker that exited (recycled) and was reaped by its parent has its
    CPU added to the parent's children times, so nothing it used is lost.
    """
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def measure(base_url, process, outcome, tag, options):
    before = tree_cpu_seconds(process.pid)
    result = run_wrk(
        base_url,
        connections=options.connections,
        duration=options.duration,
        args=wrk_arguments(outcome, tag),
        tick=lambda: None,
    )
    cpu_seconds = tree_cpu_seconds(process.pid) - before
    statuses = {int(code): count for code, count in result["statuses"].items()}
    unexpected = {code: n for code, n in statuses.items() if code != outcome.status}
    errors = sum(result["errors"].values())
    if unexpected or errors or not statuses:
        raise SystemExit(f"{outcome.name}: expected only {outcome.status}, got {statuses}, socket errors {errors}")
    requests = result["requests"]
    return {
        "cpu_ms": 1000 * cpu_seconds / requests,
        "rate": requests / (result["duration_us"] / 1e6),
        "p99_ms": result["latency_us"]["p99"] / 1000,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="shipped", help="comma-separated: shipped, gunicorn, granian, pyuwsgi")
    parser.add_argument("--outcomes", help="comma-separated (default: all of bench/outcomes.py)")
    parser.add_argument("--floor", action="store_true", help="also a bare WSGI callable (servers other than shipped)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds of wrk per outcome, server and round")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=16)
    options = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    servers = options.servers.split(",")

    with contextlib.ExitStack() as stack:
        database_url = os.environ.get("DATABASE_URL") or stack.enter_context(PrivateCluster(max_connections=100)).url
        env = {**os.environ, "DATABASE_URL": database_url, "DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(50)}
        os.environ.update(env, DJANGO_SETTINGS_MODULE="couponsite.settings")
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        tag = secrets.token_hex(3)
        named = prepare(tag)
        chosen = [named[name] for name in options.outcomes.split(",")] if options.outcomes else list(named.values())
        results = {}  # (server, outcome name) -> [figures per round]
        for round_number in range(options.rounds):
            for server in servers:
                cases = [(APPLICATION, outcome) for outcome in chosen]
                if options.floor and server != "shipped":
                    cases.insert(0, (FLOOR, named["health"]))
                for application in dict.fromkeys(app for app, _ in cases):
                    with serving(server, application, env, options.workers, options.threads) as (base_url, process):
                        for app, outcome in cases:
                            if app != application:
                                continue
                            name = "floor (bare WSGI)" if app == FLOOR else outcome.name
                            print(f"round {round_number + 1}/{options.rounds} · {server} · {name}", file=sys.stderr)
                            figures = measure(base_url, process, outcome, tag, options)
                            results.setdefault((server, name), []).append(figures)
    report(results, servers, options)


def report(results, servers, options):
    print(
        f"\nserver CPU per request (ms of one core; user+system of the server's processes ÷ requests answered),"
        f" medians of {options.rounds} rounds; {options.workers} worker(s) × {options.threads} threads,"
        f" wrk {options.connections} connections × {options.duration} s\n"
    )
    names = list(dict.fromkeys(name for _, name in results))
    header = f"{'request':<20}" + "".join(f" {server:>22}" for server in servers)
    print(header + "   (req/s, p99 ms)")
    print("-" * len(header))
    for name in names:
        cells, rates = [], []
        first = None
        for server in servers:
            rounds = results.get((server, name))
            if not rounds:
                cells.append(f" {'-':>22}")
                continue
            cpu = statistics.median(r["cpu_ms"] for r in rounds)
            first = first or cpu
            spread = f"{min(r['cpu_ms'] for r in rounds):.2f}-{max(r['cpu_ms'] for r in rounds):.2f}"
            ratio = f" ×{cpu / first:.2f}" if server != servers[0] else ""
            cells.append(f" {f'{cpu:.3f} ({spread}){ratio}':>22}")
            rate, p99 = (statistics.median(r[key] for r in rounds) for key in ("rate", "p99_ms"))
            rates.append(f"{rate:.0f}/s {p99:.0f}")
        print(f"{name:<20}" + "".join(cells) + "   " + ", ".join(rates))


if __name__ == "__main__":
    main()
