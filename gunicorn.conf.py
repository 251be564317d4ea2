"""gunicorn settings, shared by `make run`, the Dockerfile and docker-compose.

Sync workers: a claim spends its time waiting on the database (the row lock
and the commit), and each worker holds one persistent connection, so the
number of workers is the number of claims in flight. Environment overrides:
GUNICORN_BIND, WEB_CONCURRENCY, GUNICORN_TIMEOUT.
"""

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2 + 1))
worker_class = "sync"
# More than one thread turns each worker into a threaded (gthread) worker;
# pair it with DATABASE_POOL_MAX_SIZE so that threads share a few connections.
threads = int(os.environ.get("GUNICORN_THREADS", 1))
# Connections wait here while every worker is busy; a flash sale queues.
backlog = 2048
# A worker stuck longer than this is killed and replaced.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 30))
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then so that no slow leak can grow without bound.
max_requests = 20000
max_requests_jitter = 2000
# No runtime control socket (gunicornc can resize or stop the server through
# it): nothing to guard, and instances on one host would share its path.
control_socket_disable = True
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"
