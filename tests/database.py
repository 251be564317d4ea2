"""Which database the tests run against, decided once per test run.

1. DATABASE_URL, when it is set (CI points it at the local PostgreSQL);
2. else a throwaway PostgreSQL in a testcontainers container, when a Docker
   engine answers;
3. else SQLite, the service's zero-setup default.

The choice is exported as DATABASE_URL, so that pytest-xdist workers and the
live servers of the HTTP tests inherit it instead of choosing again.
"""

import atexit
import os
import sys

POSTGRES_IMAGE = "postgres:15-alpine"


def select_test_database():
    """Export DATABASE_URL for the tests and return a one-line notice of the backend."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return f"test database: {_describe(url)} (from DATABASE_URL)"
    docker_error = _docker_unreachable_reason()
    if docker_error is None:
        os.environ["DATABASE_URL"] = _start_postgres_container()
        return f"test database: PostgreSQL in a testcontainers container ({POSTGRES_IMAGE})"
    from couponsite.settings import DEFAULT_DATABASE_URL

    os.environ["DATABASE_URL"] = DEFAULT_DATABASE_URL
    return (
        "test database: SQLite, because DATABASE_URL is unset and no Docker engine answers "
        f"({docker_error}); set DATABASE_URL=postgres://... to test against PostgreSQL"
    )


def _describe(url):
    scheme, _, rest = url.partition("://")
    if scheme.startswith("sqlite"):
        return f"SQLite ({rest.removeprefix('/') or 'in memory'})"
    # Never print credentials: only what follows the "@".
    return f"{'PostgreSQL' if scheme.startswith('postgres') else scheme} at {rest.rpartition('@')[2]}"


def _docker_unreachable_reason():
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
    except Exception as exc:  # any failure means "no usable engine"
        return type(exc).__name__
    return None


def _start_postgres_container():
    from testcontainers.postgres import PostgresContainer

    container = PostgresContainer(POSTGRES_IMAGE, username="postgres", password="postgres", dbname="coupons")
    container.start()
    atexit.register(container.stop)
    host = container.get_container_host_ip()
    port = container.get_exposed_port(5432)
    print(f"started {POSTGRES_IMAGE} on {host}:{port}", file=sys.stderr)
    return f"postgres://postgres:postgres@{host}:{port}/coupons"
