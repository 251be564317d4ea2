"""gunicorn settings, shared by `make run`, the Dockerfile and docker-compose.

Sync workers: a claim spends its time waiting on the database (the row lock
and the commit), and each worker holds one persistent connection, so the
number of workers is the number of claims in flight. Environment overrides:
GUNICORN_BIND, WEB_CONCURRENCY, GUNICORN_TIMEOUT, GUNICORN_ACCESS_LOG.
"""

import multiprocessing
import os

from gunicorn.glogging import Logger

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
