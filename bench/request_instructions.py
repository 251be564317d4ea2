#!/usr/bin/env python
"""Instructions per request, by outcome: what a change to the request path saves, measured on a busy machine too.

    DATABASE_URL=postgres://... python bench/request_instructions.py                  # every outcome
    DATABASE_URL=postgres://... python bench/request_instructions.py --only sold_out,granted --requests 400

Like bench/request_profile.py (Django's WSGI application called directly, DEBUG off, JSON logs to /dev/null,
bench/outcomes.py's requests), but counted by valgrind's callgrind: the process runs under it with
instrumentation off, warms up, switches it on (`callgrind_control -i on`) for the timed requests only, and off
again. Instruction counts repeat to a fraction of a percent whatever else the machine runs, where CPU time on a
shared machine moves by tens of percent (docs/performance.md). About 50 times slower than running natively:
a few hundred requests per outcome are enough. Needs Debian's valgrind.
"""

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# bench/ last on the path (it is the script's own directory only when run as a script; tests import bench.capacity):
# its scripts named like the apps (bench/admission.py, bench/campaigns.py) must not shadow them.
sys.path.append(str(ROOT / "bench"))

WARM_UP = 100


def count(outcome, requests):
    """Instructions per request of `outcome`: this script again, under callgrind, as --inner."""
    with tempfile.TemporaryDirectory(prefix="couponsite-callgrind-") as directory:
        output = Path(directory) / "callgrind.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={output}",
             sys.executable, __file__, "--inner", outcome, "--requests", str(requests)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        totals = re.search(r"^totals: (\d+)", output.read_text(), re.MULTILINE)
    return int(totals[1]) / requests


def inner(outcome_name, requests):
    from request_profile import Caller, use_own_metrics_directory

    use_own_metrics_directory()
    os.environ.update(DEBUG="0", LOG_FORMAT="json", SECRET_KEY=secrets.token_urlsafe(50))
    os.environ["DJANGO_SETTINGS_MODULE"] = "couponsite.settings"
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # the log lines: rendered and written, not shown

    from django.core.management import call_command
    from outcomes import prepare

    from couponsite.wsgi import application

    call_command("migrate", verbosity=0)
    tag = secrets.token_hex(3)
    outcome = prepare(tag)[outcome_name]
    caller, bodies = Caller(application), outcome.bodies(tag)
    for _ in range(WARM_UP):
        caller(outcome, bodies)
    instrumentation = ["callgrind_control", "-i"]
    subprocess.run([*instrumentation, "on", str(os.getpid())], check=True, stdout=subprocess.DEVNULL)
    for _ in range(requests):
        caller(outcome, bodies)
    subprocess.run([*instrumentation, "off", str(os.getpid())], check=True, stdout=subprocess.DEVNULL)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="counted requests per outcome")
    parser.add_argument("--only", help="comma-separated outcomes (default: all of bench/outcomes.py)")
    parser.add_argument("--inner", metavar="OUTCOME", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.inner:
        return inner(options.inner, options.requests)
    if not (os.environ.get("DATABASE_URL") or "").startswith("postgres"):
        raise SystemExit("set DATABASE_URL to a PostgreSQL database (the benchmark's data is added to it)")
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is needed: apt-get install valgrind")
    from outcomes import outcomes

    names = options.only.split(",") if options.only else list(outcomes(""))
    print(f"{'outcome':<18} {'instructions/request':>22}")
    for name in names:
        print(f"{name:<18} {count(name, options.requests):22,.0f}", flush=True)


if __name__ == "__main__":
    main()
