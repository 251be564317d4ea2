"""The deployment of deploy/ on one machine: every host in a network namespace.

    etcd  10.231.0.10   etcd (v3 API), the store Patroni keeps its leader key in
    pg1   10.231.0.11   Patroni + PostgreSQL  } a primary and its synchronous
    pg2   10.231.0.12   Patroni + PostgreSQL  } standby, whichever is which
    app1  10.231.0.21   gunicorn --config gunicorn.conf.py couponsite.wsgi
    app2  10.231.0.22   the same
    lb    10.231.0.30   HAProxy: HTTP on :80 to the app hosts, :5000 to the
                        PostgreSQL primary (Patroni's REST check), stats on :8404

HAProxy and Patroni run on deploy/haproxy.cfg and deploy/patroni.yml as
shipped, given their per-host values through the environment; the app hosts
start as `make run` starts gunicorn.
"""

import contextlib
import csv
import io
import json
import os
import pwd
import secrets
import subprocess
import time

import psycopg
import yaml

from tests.cluster.network import Network
from tests.faults.cluster import as_server_user, server_binary
from tests.faults.service import INHERITED_VARIABLES, Service, request
from tests.helpers import ROOT, manage

DATABASE = "coupons"
PATRONI_PORT = 8008
HTTP_PORT = 80
POSTGRES_PORT = 5000
STATS_PORT = 8404
APP_PORT = 8000
HOSTS = {"etcd": 10, "pg1": 11, "pg2": 12, "app1": 21, "app2": 22, "lb": 30}
DATABASE_HOSTS = ("pg1", "pg2")
APP_HOSTS = ("app1", "app2")
START_TIMEOUT_SECONDS = 120


def wait_for(condition, timeout, what):
    """Poll `condition` until it returns something truthy; that value, or TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.2)


def get_json(host, port, path, timeout=2):
    """The JSON an HTTP GET answers (whatever its status), or None when nothing answers."""
    reply = request(host, port, "GET", path, timeout=timeout)
    if reply.status is None:
        return None
    try:
        return reply.body if reply.is_json else json.loads(reply.body)
    except ValueError:
        return None


class Topology:
    """Builds the hosts on enter, removes everything on exit (or when the process exits)."""

    def __init__(self, app_workers=2, app_threads=16):
        self.app_workers = app_workers
        self.app_threads = app_threads
        self.password = secrets.token_hex(16)
        self.processes = {}
        self.app_hosts = {}

    def __enter__(self):
        self.stack = contextlib.ExitStack()
        try:
            self.network = self.stack.enter_context(Network())
            for name, number in HOSTS.items():
                self.network.add_host(name, number)
            self.stack.callback(self._stop_processes)
            self._start_etcd()
            for name in DATABASE_HOSTS:
                self.start_database_host(name)
            self.wait_until_replicated()
            self._create_database()
            self._start_haproxy()
            result = manage("migrate", "--noinput", DATABASE_URL=self.database_url(self.address("lb")))
            if result.returncode != 0:
                raise RuntimeError(f"migrate failed:\n{result.stderr}")
            for name in APP_HOSTS:
                self.start_app_host(name)
            self.wait_until_in_rotation(*APP_HOSTS)
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc_info):
        self.stack.close()

    def address(self, name):
        return self.network.hosts[name]

    def database_url(self, host, port=POSTGRES_PORT):
        return f"postgres://postgres:{self.password}@{host}:{port}/{DATABASE}"

    @property
    def directory(self):
        return self.network.directory

    # Processes -------------------------------------------------------------

    def _spawn(self, name, host, command, environment):
        log = open(self.directory / f"{name}.log", "a")  # noqa: SIM115 - closed with the process
        self.processes[name] = subprocess.Popen(
            [*self.network.launcher(host), *command],
            env={**{k: v for k, v in os.environ.items() if k in INHERITED_VARIABLES}, **environment},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def _stop_processes(self):
        for service in self.app_hosts.values():
            with contextlib.suppress(Exception):
                service.__exit__()
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            process.wait()

    def log(self, name, lines=40):
        """The last lines a process logged (for failure messages)."""
        try:
            return "\n".join((self.directory / f"{name}.log").read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def _start_etcd(self):
        address = self.address("etcd")
        self._spawn(
            "etcd",
            "etcd",
            [
                "etcd",
                "--name",
                "etcd",
                "--data-dir",
                str(self.directory / "etcd"),
                "--listen-client-urls",
                f"http://{address}:2379",
                "--advertise-client-urls",
                f"http://{address}:2379",
                "--listen-peer-urls",
                f"http://{address}:2380",
                "--initial-advertise-peer-urls",
                f"http://{address}:2380",
                "--initial-cluster",
                f"etcd=http://{address}:2380",
                "--initial-cluster-state",
                "new",
            ],  # fmt: skip
            {},
        )
        wait_for(lambda: (get_json(address, 2379, "/health") or {}).get("health") == "true", 60, "etcd")

    def start_database_host(self, name):
        """Patroni on host `name`, with deploy/patroni.yml and this host's values."""
        address = self.address(name)
        home = self.directory / name
        home.mkdir(exist_ok=True)
        postgres = pwd.getpwnam("postgres")
        os.chown(home, postgres.pw_uid, postgres.pw_gid)
        # The one setting with no environment variable: the hosts share this
        # machine's file system, so each keeps its socket in its own directory.
        config = yaml.safe_load((ROOT / "deploy" / "patroni.yml").read_text())
        config["postgresql"]["parameters"]["unix_socket_directories"] = str(home)
        (home / "patroni.yml").write_text(yaml.safe_dump(config))
        environment = {
            "PATRONI_NAME": name,
            "PATRONI_RESTAPI_CONNECT_ADDRESS": f"{address}:{PATRONI_PORT}",
            "PATRONI_POSTGRESQL_CONNECT_ADDRESS": f"{address}:5432",
            "PATRONI_POSTGRESQL_DATA_DIR": str(home / "data"),
            "PATRONI_POSTGRESQL_BIN_DIR": os.path.dirname(server_binary("postgres")),
            "PATRONI_POSTGRESQL_PGPASS": str(home / "pgpass"),
            "PATRONI_ETCD3_HOSTS": f"{self.address('etcd')}:2379",
            "PATRONI_SUPERUSER_PASSWORD": self.password,
            "PATRONI_REPLICATION_PASSWORD": self.password,
            "PATRONI_REWIND_PASSWORD": self.password,
        }
        self._spawn(name, name, as_server_user(["patroni", str(home / "patroni.yml")]), environment)

    def _start_haproxy(self):
        lb = self.address("lb")
        environment = {
            "HTTP_BIND": f"{lb}:{HTTP_PORT}",
            "STATS_BIND": f"{lb}:{STATS_PORT}",
            "POSTGRES_BIND": f"{lb}:{POSTGRES_PORT}",
            # Every thread of every worker: the claims in flight on a host, which form its claim groups.
            "APP_HOST_SLOTS": str(self.app_workers * self.app_threads),
            **{name.upper(): f"{self.address(name)}:{APP_PORT}" for name in APP_HOSTS},
            **{name.upper(): self.address(name) for name in DATABASE_HOSTS},
        }
        self._spawn("haproxy", "lb", ["haproxy", "-db", "-f", str(ROOT / "deploy" / "haproxy.cfg")], environment)
        try:
            wait_for(self.primary_in_rotation, 60, "HAProxy sending connections to the primary")
        except TimeoutError as error:
            raise TimeoutError(f"{error}: {self.haproxy_servers()}\n{self.log('haproxy')}") from None

    def start_app_host(self, name):
        """gunicorn on host `name`, as `make run` starts it, through HAProxy to the primary."""
        metrics = self.directory / f"{name}-metrics"
        service = Service(
            self.database_url(self.address("lb")),
            launcher=self.network.launcher(name),
            host=self.address(name),
            port=APP_PORT,
            WEB_CONCURRENCY=str(self.app_workers),
            GUNICORN_THREADS=str(self.app_threads),
            # Clients reach it through the lb; Prometheus scrapes it by its own address.
            ALLOWED_HOSTS=f"{self.address('lb')},{self.address(name)},localhost",
            NUM_PROXIES="1",
            PROMETHEUS_MULTIPROC_DIR=str(metrics),
        )
        self.app_hosts[name] = service.__enter__()

    def kill_app_host(self, name):
        self.app_hosts.pop(name).kill()

    # State -----------------------------------------------------------------

    def cluster(self):
        """Patroni's view of the database hosts ({name: member}), from any host that answers."""
        for name in DATABASE_HOSTS:
            answer = get_json(self.address(name), PATRONI_PORT, "/cluster", timeout=1)
            if answer and "members" in answer:
                return {member["name"]: member for member in answer["members"]}
        return {}

    def primary(self):
        return next((name for name, m in self.cluster().items() if m["role"] == "leader"), None)

    def wait_until_replicated(self, timeout=START_TIMEOUT_SECONDS):
        """Until one host leads and the other is its synchronous standby, streaming."""

        def replicated():
            members = self.cluster()
            roles = sorted(member["role"] for member in members.values())
            standby_streaming = any(
                m["role"] == "sync_standby" and m["state"] in {"running", "streaming"} and m.get("lag") == 0
                for m in members.values()
            )
            return roles == ["leader", "sync_standby"] and standby_streaming and members

        try:
            return wait_for(replicated, timeout, "a primary and a streaming synchronous standby")
        except TimeoutError as error:
            logs = "\n".join(f"--- {name}\n{self.log(name)}" for name in DATABASE_HOSTS)
            raise TimeoutError(f"{error}; Patroni says {self.cluster()}\n{logs}") from None

    def connect_primary(self):
        name = wait_for(self.primary, 60, "a primary")
        return psycopg.connect(
            host=self.address(name), port=5432, user="postgres", password=self.password, dbname=DATABASE,
            autocommit=True, connect_timeout=5,
        )  # fmt: skip

    def _create_database(self):
        name = self.primary()
        with psycopg.connect(
            host=self.address(name), port=5432, user="postgres", password=self.password, dbname="postgres",
            autocommit=True,
        ) as connection:  # fmt: skip
            connection.execute(f"CREATE DATABASE {DATABASE}")

    def haproxy_servers(self):
        """{(proxy, server): stats row} from HAProxy's CSV stats."""
        reply = request(self.address("lb"), STATS_PORT, "GET", "/stats;csv", timeout=2)
        if reply.status != 200:
            return {}
        text = reply.body.removeprefix("# ")
        return {(row["pxname"], row["svname"]): row for row in csv.DictReader(io.StringIO(text))}

    def primary_in_rotation(self):
        servers = self.haproxy_servers()
        return [name for name in DATABASE_HOSTS if servers.get(("postgres", name), {}).get("status") == "UP"]

    def wait_until_in_rotation(self, *app_hosts, timeout=60):
        def in_rotation():
            servers = self.haproxy_servers()
            return all(servers.get(("app_hosts", name), {}).get("status") == "UP" for name in app_hosts)

        wait_for(in_rotation, timeout, f"HAProxy sending requests to {', '.join(app_hosts)}")

    def requests_served(self):
        """{app host: requests HAProxy sent it so far}."""
        servers = self.haproxy_servers()
        return {name: int(servers[("app_hosts", name)]["stot"]) for name in APP_HOSTS}
