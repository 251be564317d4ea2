"""gunicorn settings, shared by `make run`, the Dockerfile and docker-compose.

Sync workers: a claim spends its time waiting on the database (the row lock
and the commit), and each worker holds one persistent connection, so the
number of workers is the number of claims in flight. Environment overrides:
GUNICORN_BIND, WEB_CONCURRENCY, GUNICORN_TIMEOUT, GUNICORN_ACCESS_LOG,
PROMETHEUS_MULTIPROC_DIR.
"""

import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path

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

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2 + 1))
worker_class = "sync"
# Connections wait here while every worker is busy; a flash sale queues.
backlog = 2048
# A worker stuck longer than this is killed and replaced.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 30))
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then so that no slow leak can grow without bound.
max_requests = 20000
max_requests_jitter = 2000
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
