#!/usr/bin/env python
"""CPU of one request in-process, by outcome: Django's WSGI application called directly, no server, no network.

    DATABASE_URL=postgres://... python bench/request_profile.py            # CPU per request, medians of 3 rounds
    DATABASE_URL=postgres://... python bench/request_profile.py --profile sold_out   # and cProfile's top of one

The application is the one the server loads (couponsite.wsgi, DEBUG off,
Prometheus in multiprocess mode as under the server, logs rendered as JSON
to /dev/null), called with a WSGI environ as a server builds it. Per
outcome (bench/outcomes.py), `--requests` requests are timed with
time.process_time() after a warm-up; rounds interleave the outcomes and the
medians are printed, with each outcome's ratio to a granted claim. What the
server adds on top (HTTP parsing, threads, the GIL) is
bench/cpu_per_request.py's to measure.
"""

import argparse
import atexit
import cProfile
import io
import os
import pstats
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# bench/ last on the path (it is the script's own directory only when run as a script; tests import bench.capacity):
# its scripts named like the apps (bench/admission.py, bench/campaigns.py) must not shadow them.
sys.path.append(str(ROOT / "bench"))

from outcomes import prepare  # noqa: E402


def use_own_metrics_directory():
    """Prometheus in multiprocess mode, as under the server, in a directory of this process's removed at its exit
    (unless PROMETHEUS_MULTIPROC_DIR is set). Before Django is set up: prometheus_client reads it on import."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="couponsite-bench-metrics-")
        atexit.register(shutil.rmtree, os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def environ(method, path, body):
    environ = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "bench",
        "HTTP_ACCEPT": "*/*",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body or b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if body is not None:
        environ["CONTENT_TYPE"] = "application/json"
        environ["CONTENT_LENGTH"] = str(len(body))
    return environ


class Caller:
    def __init__(self, application):
        self.application = application
        self.status = None

    def start_response(self, status, headers, exc_info=None):
        self.status = status

    def __call__(self, outcome, bodies):
        result = self.application(environ(outcome.method, outcome.path, next(bodies)), self.start_response)
        try:
            for _ in result:
                pass
        finally:
            if hasattr(result, "close"):
                result.close()
        if int(self.status.split()[0]) != outcome.status:
            raise SystemExit(f"{outcome.name}: expected {outcome.status}, got {self.status}")


def timed(caller, outcome, bodies, requests):
    started = time.process_time()
    for _ in range(requests):
        caller(outcome, bodies)
    return (time.process_time() - started) / requests


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per outcome and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help="comma-separated outcomes (default: all)")
    parser.add_argument("--profile", metavar="OUTCOME", help="also print cProfile's top functions for this outcome")
    parser.add_argument("--sort", default="tottime", help="cProfile sort key (tottime, cumulative)")
    parser.add_argument("--top", type=int, default=40)
    options = parser.parse_args()
    if not (os.environ.get("DATABASE_URL") or "").startswith("postgres"):
        raise SystemExit("set DATABASE_URL to a PostgreSQL database (the benchmark's data is added to it)")

    # As under the server: metrics in multiprocess mode, JSON logs (to /dev/null), DEBUG off.
    use_own_metrics_directory()
    os.environ.update(DEBUG="0", LOG_FORMAT="json", SECRET_KEY=secrets.token_urlsafe(50))
    os.environ["DJANGO_SETTINGS_MODULE"] = "couponsite.settings"
    stdout = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # the log lines: rendered and written, as under the server, but not shown

    from django.core.management import call_command

    from couponsite.wsgi import application  # noqa: F401 - sets Django up

    call_command("migrate", verbosity=0)
    tag = secrets.token_hex(3)
    named = prepare(tag)
    chosen = [named[name] for name in options.only.split(",")] if options.only else list(named.values())
    caller = Caller(application)
    bodies = {outcome.name: outcome.bodies(tag) for outcome in chosen}
    for outcome in chosen:  # warm-up: imports, caches, connections
        timed(caller, outcome, bodies[outcome.name], 200)
    samples = {outcome.name: [] for outcome in chosen}
    for _ in range(options.rounds):
        for outcome in chosen:
            samples[outcome.name].append(timed(caller, outcome, bodies[outcome.name], options.requests))

    granted = statistics.median(samples["granted"]) if "granted" in samples else None
    print(f"{'outcome':<18} {'status':>6} {'CPU ms/request':>15}  {'rounds':<24} {'÷ granted':>9}", file=stdout)
    for outcome in chosen:
        values = samples[outcome.name]
        median = statistics.median(values)
        ratio = f"{median / granted:9.2f}" if granted else "        -"
        rounds = ", ".join(f"{1000 * v:.3f}" for v in values)
        print(f"{outcome.name:<18} {outcome.status:>6} {1000 * median:15.3f}  {rounds:<24} {ratio}", file=stdout)

    if options.profile:
        outcome = named[options.profile]
        profiler = cProfile.Profile(time.process_time)  # CPU, not time spent waiting for the database
        profiler.enable()
        for _ in range(options.requests):
            caller(outcome, bodies.setdefault(outcome.name, outcome.bodies(tag)))
        profiler.disable()
        print(f"\ncProfile, {options.requests} requests of {outcome.name} (sorted by {options.sort}):", file=stdout)
        pstats.Stats(profiler, stream=stdout).strip_dirs().sort_stats(options.sort).print_stats(options.top)


if __name__ == "__main__":
    main()
