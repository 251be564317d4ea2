"""The web server: granian serving couponsite.wsgi, configured by the environment.

    python -m couponsite.serve

The one way the service is served: `make run`, the Dockerfile, both compose
files and the tests' Service (tests/faults/service.py) start this, so they
all run the same server the same way.

Why granian (docs/performance.md): measured side by side with
gunicorn's threaded workers and uWSGI, it answers a refusal with 0.8x
gunicorn's CPU (uWSGI 0.75x), and its HTTP side is Rust, asynchronous: an
idle keep-alive connection or a client sending its request slowly holds no
Python thread (behind 8 of them, with 4 threads, a request waited 4-8 s
under uWSGI and past 30 s under gunicorn; under granian, a millisecond).

The shape is gunicorn's as this service ran it: WEB_CONCURRENCY worker
processes (one per core), each running WEB_THREADS Python threads. Claims
of one coupon are granted in groups, one transaction per group and process
(coupons/claim_groups.py), which needs many requests in flight in each
process: the threads are those requests. Each thread keeps its own
persistent database connection: up to workers x threads connections.

Environment (an empty value counts as unset; the gunicorn names they
replace are still read, with a warning in the log):

    WEB_BIND              127.0.0.1:8000   host:port to listen on           (was GUNICORN_BIND)
    WEB_CONCURRENCY       one per core     worker processes
    WEB_THREADS           16               threads per worker               (was GUNICORN_THREADS)
    WEB_TIMEOUT           30               seconds a stopping worker has to finish its requests
                                           (then it is killed), and a client to send its headers
                                                                            (was GUNICORN_TIMEOUT)
    WEB_WORKER_LIFETIME   3600             seconds before a worker is replaced, gracefully (0: never)
    WEB_WORKER_MAX_RSS    1024             MiB of memory before a worker is replaced (0: no limit)
    WEB_SWITCH_INTERVAL_MS  unset (5)      milliseconds a thread may hold the GIL while others wait
                                           (sys.setswitchinterval, in every worker: couponsite/wsgi.py)
    WEB_ACCESS_LOG        unset (off)      any value: a line per request from the server too
                                                                            (was GUNICORN_ACCESS_LOG)
    PROMETHEUS_MULTIPROC_DIR  unset: a temporary directory of the server's own, removed on exit

Signals: SIGTERM or SIGINT stop gracefully (in-flight requests finish, for
up to WEB_TIMEOUT); SIGHUP replaces the workers gracefully (a reload).
"""

import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
from pathlib import Path

APPLICATION = "couponsite.wsgi:application"
BACKLOG = 2048  # connections wait here while every worker is busy: a flash sale queues
RSS_SAMPLE_SECONDS = 10

# New name -> the gunicorn variable it replaces.
RENAMED = {
    "WEB_BIND": "GUNICORN_BIND",
    "WEB_THREADS": "GUNICORN_THREADS",
    "WEB_TIMEOUT": "GUNICORN_TIMEOUT",
    "WEB_ACCESS_LOG": "GUNICORN_ACCESS_LOG",
}

logger = logging.getLogger("couponsite.serve")


def setting(name, default, environ=os.environ):
    """The variable's value (or its former gunicorn name's), `default` when unset or empty."""
    value = environ.get(name)
    former = RENAMED.get(name)
    if not value and former:
        value = environ.get(former)
    return value or default


def former_names_in_use(environ=os.environ):
    return [(former, name) for name, former in RENAMED.items() if environ.get(former) and not environ.get(name)]


def integer_setting(name, default, environ=os.environ):
    value = setting(name, None, environ)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {value!r}.") from None


def switch_interval_ms(environ=os.environ):
    """WEB_SWITCH_INTERVAL_MS as a positive number, or None (Python's own 5 ms); refused at once if malformed."""
    value = setting("WEB_SWITCH_INTERVAL_MS", None, environ)
    if value is None:
        return None
    try:
        milliseconds = float(value)
    except ValueError:
        milliseconds = 0.0
    if not 0 < milliseconds < 1000:
        raise SystemExit(f"WEB_SWITCH_INTERVAL_MS must be a number of milliseconds above 0, got {value!r}.")
    return milliseconds


def parse_bind(bind):
    """("host", port) from "host:port" or "[v6 address]:port"."""
    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"WEB_BIND must be host:port, got {bind!r}.")
    return host.strip("[]"), int(port)


def server_options(environ=os.environ):
    """The keyword arguments of granian's server, from the environment."""
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings

    from couponsite.logs import logging_config
    from couponsite.settings import LOG_FORMAT, LOG_LEVEL

    host, port = parse_bind(setting("WEB_BIND", "127.0.0.1:8000", environ))
    timeout = integer_setting("WEB_TIMEOUT", 30, environ)
    lifetime = integer_setting("WEB_WORKER_LIFETIME", 3600, environ)
    max_rss = integer_setting("WEB_WORKER_MAX_RSS", 1024, environ)
    log_config = logging_config(renderer=LOG_FORMAT, level=LOG_LEVEL)
    # granian's own lines (and its access log) through the service's formatter: JSON lines like the rest.
    log_config["loggers"].update({"_granian": {"propagate": True}, "granian.access": {"propagate": True}})
    return {
        "target": APPLICATION,
        "address": host,
        "port": port,
        "interface": Interfaces.WSGI,
        "http": HTTPModes.http1,
        "websockets": False,
        "workers": integer_setting("WEB_CONCURRENCY", multiprocessing.cpu_count(), environ),
        "blocking_threads": integer_setting("WEB_THREADS", 16, environ),
        # Threads (and their database connections) live through the quiet minutes between sales.
        "blocking_threads_idle_timeout": 600,
        "backlog": BACKLOG,
        "http1_settings": HTTP1Settings(header_read_timeout=timeout * 1000),
        "log_level": LOG_LEVEL.lower(),
        "log_dictconfig": log_config,
        "log_access": bool(setting("WEB_ACCESS_LOG", "", environ)),
        # A worker that dies (a crash, the OOM killer) is replaced, as gunicorn's are.
        "respawn_failed_workers": True,
        "respawn_interval": 1.0,
        # Recycling: no slow leak can grow without bound. Replacements start before the old worker stops.
        "workers_lifetime": lifetime or None,
        "workers_max_rss": max_rss or None,
        "rss_sample_interval": RSS_SAMPLE_SECONDS,
        # Above the longest a request can wait on the database (connect or pool timeout, then the statement
        # timeout: 10 + 15 s by default), so that a graceful stop never cuts off an answer on its way.
        "workers_kill_timeout": timeout,
    }


def own_metrics_directory(environ=os.environ):
    """Prometheus multiprocess mode: every worker writes its metrics to files in PROMETHEUS_MULTIPROC_DIR,
    and /metrics adds up the files of every worker, past ones included, so that totals never drop when a
    worker is replaced. Unset, a directory of the server's own (returned, to be removed on exit).
    prometheus_client reads the variable when it is imported: it is set before any worker starts."""
    if environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="couponsite-metrics-")
    return environ["PROMETHEUS_MULTIPROC_DIR"]


def on_startup():
    for former, name in former_names_in_use():
        logger.warning("%s is deprecated: set %s instead (it is read for now).", former, name)
    clear_stale_metrics()


def clear_stale_metrics():
    # Files left by an earlier server would be added to this one's totals.
    metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*.db"):
        stale.unlink()
    logger.info("Prometheus multiprocess directory: %s", metrics_dir)


def main():
    from granian import Granian

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "couponsite.settings")
    switch_interval_ms()  # a malformed value stops the server before any worker starts
    own_dir = own_metrics_directory()
    try:
        server = Granian(**server_options())
        server.on_startup(on_startup)
        server.serve()
    finally:
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
