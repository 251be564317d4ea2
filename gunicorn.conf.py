"""gunicorn settings, shared by `make run`, the Dockerfile and docker-compose.

Threaded workers (gthread), one per core, 16 threads each. Claims of one
coupon are granted in groups, one transaction per group and process
(coupons/claim_groups.py): while one group holds the coupon row lock, the
claims arriving in the same process wait and then go together. That needs
many requests in flight per process, which sync workers (one request each)
cannot give: each would pay its own lock, round trips and commit. One
process per core keeps every core busy and the groups large (fewer, bigger
groups meet at the row lock); 16 threads per process let a 64-connection
burst queue inside the processes rather than in the listen backlog. Each
thread keeps its own persistent database connection, so the service opens
up to workers x threads connections (32 on 2 cores): size PostgreSQL's
max_connections (or PgBouncer) for it. The benchmark (docs/performance.md)
compares this with sync workers and other shapes.

Environment overrides: GUNICORN_BIND, WEB_CONCURRENCY, GUNICORN_THREADS,
GUNICORN_TIMEOUT, GUNICORN_ACCESS_LOG, PROMETHEUS_MULTIPROC_DIR.

A thread is held while a request's bytes arrive, so a client that sends very
slowly ties one up until `timeout`: in front of the internet, put a
buffering proxy (HAProxy, nginx) before gunicorn.
"""

import json
import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path

import gunicorn.util
from gunicorn.glogging import Logger

# Prometheus multiprocess mode. Each worker is a process with counters of its
# own: prometheus_client writes them to files in PROMETHEUS_MULTIPROC_DIR, and
# /metrics adds up the files of every worker, past ones included, so totals
# never drop when a worker is recycled. The variable is read when
# prometheus_client is imported, so it is set here, before any worker starts.
# Unset, this server makes a directory of its own and removes it on exit.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    own_metrics_dir = None
else:
    own_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="couponsite-metrics-")

from couponsite.logs import restyle_handlers
from couponsite.settings import LOG_FORMAT

# An empty variable counts as unset, as in the Django settings.
bind = os.environ.get("GUNICORN_BIND") or "127.0.0.1:8000"
workers = int(os.environ.get("WEB_CONCURRENCY") or multiprocessing.cpu_count())
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS") or 16)
# Connections wait here while every worker is busy; a flash sale queues.
backlog = 2048
# A worker stuck longer than this is killed and replaced. It is above the
# longest a request can wait on the database (connect or pool timeout, then
# the statement timeout: 10 + 15 s by default), so a slow or stuck database
# gets clients a 503, not a dropped connection.
timeout = int(os.environ.get("GUNICORN_TIMEOUT") or 30)
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then so that no slow leak can grow without bound.
max_requests = 20000
max_requests_jitter = 2000
# gunicorn's own limits on what it parses before Django sees the request
# (its defaults, stated): longer request lines or headers get a 400.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
# No runtime control socket (gunicornc can resize or stop the server through
# it): nothing to guard, and instances on one host would share its path.
control_socket_disable = True
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"


class StructuredLogger(Logger):
    """gunicorn's own lines (master, workers, access log) in the service's log format (LOG_FORMAT)."""

    def setup(self, cfg):
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            restyle_handlers(log, LOG_FORMAT)


logger_class = StructuredLogger


def on_starting(server):
    # Files left by an earlier server would be added to this one's totals.
    metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*.db"):
        stale.unlink()
    server.log.info("Prometheus multiprocess directory: %s", metrics_dir)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    # Drops the exited worker's live gauges; its counters and histograms stay.
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if own_metrics_dir:
        shutil.rmtree(own_metrics_dir, ignore_errors=True)


def write_json_error(sock, status_int, reason, mesg):
    """gunicorn's answer to a request it cannot parse (bad request line, too many or too
    long headers...), in the API's JSON error shape instead of gunicorn's HTML page."""
    code = {403: "forbidden", 500: "internal_error"}.get(status_int, "invalid")  # coupons.api.error_codes.ErrorCode
    body = json.dumps({"error": f"{reason}: {mesg}" if mesg else reason, "code": code}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    gunicorn.util.write_nonblock(sock, head.encode("latin-1") + body)


# The workers call gunicorn.util.write_error for every such error (there is no hook for it).
gunicorn.util.write_error = write_json_error
