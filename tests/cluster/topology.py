"""The deployment of deploy/ on one machine: every host in a network namespace.

    etcd1 10.231.0.10   } etcd (v3 API), three members: the store Patroni keeps
    etcd2 10.231.0.13   } its leader key in, which survives losing one member
    etcd3 10.231.0.14   }
    pg1   10.231.0.11   Patroni + PostgreSQL  } a primary and two standbys
    pg2   10.231.0.12   Patroni + PostgreSQL  } under quorum commit (a commit
    pg3   10.231.0.15   Patroni + PostgreSQL  } on two of the three), any order
    app1  10.231.0.21   the service, as `make run` serves it (tests/faults/service.py)
    app2  10.231.0.22   the same
    lb    10.231.0.30   HAProxy: HTTP on :80 to the app hosts, :5000 to the
                        PostgreSQL primary (Patroni's REST check), stats on :8404
    backup 10.231.0.40  Barman (Topology(backup=True) only): base backups and
                        WAL streamed from the primary through HAProxy; restores

HAProxy and Patroni run on deploy/haproxy.cfg and deploy/patroni.yml as
shipped, given their per-host values through the environment. Patroni is
the pinned release of deploy/requirements-patroni.txt, from the virtualenv
`make patroni` builds at PATRONI_VENV, outside the checkout: the postgres
user runs it, and a checkout may sit where that user cannot enter.

The faults (kill, pause, resume, cut, reconnect, partition) act on whole
hosts, as a crashed, frozen or unplugged machine would.
"""

import base64
import configparser
import contextlib
import csv
import io
import json
import os
import pwd
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import yaml

from tests.cluster.network import Network
from tests.faults.cluster import as_server_user, server_binary
from tests.faults.service import INHERITED_VARIABLES, Service, request
from tests.helpers import ROOT, manage

DATABASE = "coupons"
PATRONI_PORT = 8008
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
HTTP_PORT = 80
POSTGRES_PORT = 5000
STATS_PORT = 8404
APP_PORT = 8000
HOSTS = {
    "etcd1": 10,
    "etcd2": 13,
    "etcd3": 14,
    "pg1": 11,
    "pg2": 12,
    "pg3": 15,
    "app1": 21,
    "app2": 22,
    "lb": 30,
    "backup": 40,
}
ETCD_HOSTS = ("etcd1", "etcd2", "etcd3")
DATABASE_HOSTS = ("pg1", "pg2", "pg3")
# Patroni's role of a standby that takes part in the quorum (synchronous_mode: quorum).
STANDBY_ROLE = "quorum_standby"
APP_HOSTS = ("app1", "app2")
START_TIMEOUT_SECONDS = 120
# The Procfile's processes besides the web server: one of each on every app host.
WORKERS = ("expire_holds", "deliver_events", "run_admission")
# Every app host signs and verifies admission tokens with the same key (a token minted by one host's poll is
# spent on whichever host the claim reaches); each Service has a SECRET_KEY of its own, so the key is set.
ADMISSION_SIGNING_KEYS = "cluster:" + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
# Where `make patroni` installs deploy/requirements-patroni.txt (the Makefile passes it on).
DEFAULT_PATRONI_VENV = "/opt/couponsite-patroni"
# Where `make barman` installs deploy/requirements-barman.txt, and the server its config names.
DEFAULT_BARMAN_VENV = "/opt/couponsite-barman"
BARMAN_SERVER = "coupons"


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


def pinned_command(name, variable, default_venv):
    """The pinned program `name` (deploy/requirements-NAME.txt), checked to run as the postgres user first.

    Fails at once, saying what to do, rather than after a start timeout.
    """
    venv = Path(os.environ.get(variable) or default_venv)
    program = venv / "bin" / name
    pinned = next(
        line.split("==")[1].strip()
        for line in (ROOT / "deploy" / f"requirements-{name}.txt").read_text().splitlines()
        if line.startswith(name)
    )
    try:
        version = subprocess.run(
            as_server_user([str(program), "--version"]), capture_output=True, text=True, timeout=60, cwd="/"
        )
    except FileNotFoundError:
        version = None
    if version is None or version.returncode != 0 or pinned not in version.stdout.split():
        detail = "" if version is None else (version.stdout + version.stderr).strip()
        raise RuntimeError(
            f"{name} {pinned} must run as the postgres user from {program} ({detail or 'not found'}): "
            f"`make {name}` installs it there ({variable} picks another place the postgres user can enter)"
        )
    return [str(program)]


def patroni_command():
    return pinned_command("patroni", "PATRONI_VENV", DEFAULT_PATRONI_VENV)


class Topology:
    """Builds the hosts on enter, removes everything on exit (or when the process exits)."""

    def __init__(self, app_workers=2, app_threads=16, backup=False):
        self.backup = backup
        self.app_workers = app_workers
        self.app_threads = app_threads
        self.password = secrets.token_hex(16)
        self.processes = {}
        self.app_hosts = {}

    def __enter__(self):
        self.patroni = patroni_command()
        if self.backup:
            self.barman_command = pinned_command("barman", "BARMAN_VENV", DEFAULT_BARMAN_VENV)
        self.stack = contextlib.ExitStack()
        try:
            self.network = self.stack.enter_context(Network())
            for name, number in HOSTS.items():
                self.network.add_host(name, number)
            self.stack.callback(self._stop_processes)
            for name in ETCD_HOSTS:
                self.start_etcd_member(name)
            self.wait_until_etcd_healthy()
            for name in DATABASE_HOSTS:
                self.start_database_host(name)
            self.wait_until_replicated()
            self._create_database()
            self._start_haproxy()
            if self.backup:
                self.start_backup_host()
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

    def _spawn(self, name, host, command, environment, cwd=None):
        log = open(self.directory / f"{name}.log", "a")  # noqa: SIM115 - closed with the process
        self.processes[name] = subprocess.Popen(
            [*self.network.launcher(host), *command],
            env={**{k: v for k, v in os.environ.items() if k in INHERITED_VARIABLES}, **environment},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd or self.directory,
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

    def start_etcd_member(self, name):
        """The etcd member of host `name`; restarted on its own data directory after a kill."""
        address = self.address(name)
        peers = ",".join(f"{member}=http://{self.address(member)}:{ETCD_PEER_PORT}" for member in ETCD_HOSTS)
        self._spawn(
            name,
            name,
            [
                "etcd",
                "--name", name,
                "--data-dir", str(self.directory / name),
                "--listen-client-urls", f"http://{address}:{ETCD_CLIENT_PORT}",
                "--advertise-client-urls", f"http://{address}:{ETCD_CLIENT_PORT}",
                "--listen-peer-urls", f"http://{address}:{ETCD_PEER_PORT}",
                "--initial-advertise-peer-urls", f"http://{address}:{ETCD_PEER_PORT}",
                "--initial-cluster", peers,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", "coupons-etcd",
            ],
            {},
        )  # fmt: skip

    def etcd_member_healthy(self, name):
        return (get_json(self.address(name), ETCD_CLIENT_PORT, "/health", timeout=1) or {}).get("health") == "true"

    def wait_until_etcd_healthy(self, timeout=60):
        wait_for(lambda: all(self.etcd_member_healthy(name) for name in ETCD_HOSTS), timeout, "every etcd member")

    def start_database_host(self, name, from_backup=False):
        """Patroni on host `name`, with deploy/patroni.yml and this host's values.

        `from_backup`: a new cluster bootstrapped by deploy/patroni.yml's `barman_restore` method (the backup
        host's latest backup, then every WAL byte it has), as docs/operator-guide.md rebuilds one. The hosts
        share one file system here: barman recovers straight into this host's data directory, and
        restore_command runs the backup host's barman, where a real host would use SSH (the defaults)."""
        address = self.address(name)
        home = self.directory / name
        home.mkdir(exist_ok=True)
        postgres = pwd.getpwnam("postgres")
        os.chown(home, postgres.pw_uid, postgres.pw_gid)
        # The one setting with no environment variable: the hosts share this
        # machine's file system, so each keeps its socket in its own directory.
        config = yaml.safe_load((ROOT / "deploy" / "patroni.yml").read_text())
        config["postgresql"]["parameters"]["unix_socket_directories"] = str(home)
        if from_backup:
            script = home / "patroni-barman-restore"  # where the postgres user can run it (not the checkout)
            script.write_bytes((ROOT / "deploy" / "patroni-barman-restore").read_bytes())
            script.chmod(0o755)
            barman = [*self.barman_command, "-c", str(self.directory / "backup" / "barman.conf")]
            config["bootstrap"]["method"] = "barman_restore"
            config["bootstrap"]["barman_restore"].update(
                command=str(script), barman=shlex.join(barman), remote_ssh_command=""
            )
            config["bootstrap"]["barman_restore"]["recovery_conf"]["restore_command"] = (
                shlex.join([*barman, "get-wal", "-P", BARMAN_SERVER, "%f"]) + " > %p"
            )
        (home / "patroni.yml").write_text(yaml.safe_dump(config))
        environment = {
            "PATRONI_NAME": name,
            "PATRONI_RESTAPI_CONNECT_ADDRESS": f"{address}:{PATRONI_PORT}",
            "PATRONI_POSTGRESQL_CONNECT_ADDRESS": f"{address}:5432",
            "PATRONI_POSTGRESQL_DATA_DIR": str(home / "data"),
            "PATRONI_POSTGRESQL_BIN_DIR": os.path.dirname(server_binary("postgres")),
            "PATRONI_POSTGRESQL_PGPASS": str(home / "pgpass"),
            "PATRONI_ETCD3_HOSTS": ",".join(f"{self.address(m)}:{ETCD_CLIENT_PORT}" for m in ETCD_HOSTS),
            "PATRONI_SUPERUSER_PASSWORD": self.password,
            "PATRONI_REPLICATION_PASSWORD": self.password,
            "PATRONI_REWIND_PASSWORD": self.password,
        }
        # Its working directory is its own home: PostgreSQL's programs fail
        # in a directory the postgres user cannot enter (the checkout's may be one).
        self._spawn(name, name, as_server_user([*self.patroni, str(home / "patroni.yml")]), environment, cwd=home)

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
        """Host `name` as `make run` starts it (the Procfile): the web server, and the workers beside it.

        All reach the primary through HAProxy, with the web server's settings.
        """
        metrics = self.directory / f"{name}-metrics"
        service = Service(
            self.database_url(self.address("lb")),
            launcher=self.network.launcher(name),
            host=self.address(name),
            port=APP_PORT,
            WEB_CONCURRENCY=str(self.app_workers),
            WEB_THREADS=str(self.app_threads),
            # Clients reach it through the lb; Prometheus scrapes it by its own address.
            ALLOWED_HOSTS=f"{self.address('lb')},{self.address(name)},localhost",
            NUM_PROXIES="1",
            PROMETHEUS_MULTIPROC_DIR=str(metrics),
            # A key whose request died with the primary is taken over this soon (a request here never runs
            # longer: its database waits are bounded), so that a retry after a failover is not held off a minute.
            IDEMPOTENCY_LEASE="20",
            ADMISSION_SIGNING_KEYS=ADMISSION_SIGNING_KEYS,
        )
        self.app_hosts[name] = service.__enter__()
        for worker in WORKERS:
            self._spawn(f"{name}-{worker}", name, [sys.executable, "manage.py", worker], service.environment, cwd=ROOT)

    # The backup host ---------------------------------------------------------

    def start_backup_host(self):
        """Barman on deploy/barman.conf with this run's paths and addresses, `barman cron` every second.

        Every second rather than every minute: a WAL streamer that died (a
        failover broke its connection) is back within a second.
        """
        home = self.directory / "backup"
        postgres = pwd.getpwnam("postgres")
        for directory in (home, home / "barman"):
            directory.mkdir(exist_ok=True)
            os.chown(directory, postgres.pw_uid, postgres.pw_gid)
        passfile = home / "pgpass"
        passfile.write_text(f"*:*:*:postgres:{self.password}\n*:*:*:replicator:{self.password}\n")
        passfile.chmod(0o600)
        os.chown(passfile, postgres.pw_uid, postgres.pw_gid)
        key_id = self._backup_key(home)
        config = configparser.ConfigParser(interpolation=None)
        config.read(ROOT / "deploy" / "barman.conf")
        config["barman"].update(
            barman_user="postgres",
            barman_home=str(home / "barman"),
            log_file=str(home / "barman.log"),
            path_prefix=os.path.dirname(server_binary("pg_receivewal")),
        )
        config[BARMAN_SERVER].update(
            encryption_key_id=key_id,
            encryption_passphrase_command=shlex.join(["cat", str(home / "gnupg-passphrase")]),
            staging_path=str(home / "staging"),
        )
        for key in ("conninfo", "streaming_conninfo"):
            value = config[BARMAN_SERVER][key].replace("host=lb ", f"host={self.address('lb')} ")
            config[BARMAN_SERVER][key] = re.sub(r"passfile=\S+", f"passfile={passfile}", value)
        with open(home / "barman.conf", "w") as file:
            config.write(file)
        cron = shlex.join([*self.barman_command, "-c", str(home / "barman.conf"), "-q", "cron"])
        loop = f"while :; do {cron}; sleep 1; done"
        self._spawn("backup", "backup", as_server_user(["bash", "-c", loop]), {}, cwd=home)
        self.wait_until_streaming_wal()

    def _backup_key(self, home):
        """The GPG key pair Barman encrypts with (deploy/barman.conf: encryption = gpg), made for this run in
        the backup host's own keyring (GNUPGHOME), with a random passphrase kept beside it; its fingerprint.

        Every barman command of this run sees that keyring (barman_command sets GNUPGHOME): encrypting needs
        the public key only, a restore the private key and the passphrase (encryption_passphrase_command).
        RSA, not GnuPG's elliptic-curve keys: Barman tells an encrypted WAL segment by what file(1) says of it,
        and Debian 12's file(1) calls a message to a Curve25519 key "data" -- Barman then archives it as
        plain, and get-wal hands the ciphertext to PostgreSQL ("has wrong size").
        """
        gnupg = home / "gnupg"
        postgres = pwd.getpwnam("postgres")
        passphrase = home / "gnupg-passphrase"
        if not gnupg.exists():
            gnupg.mkdir(mode=0o700)
            os.chown(gnupg, postgres.pw_uid, postgres.pw_gid)
            passphrase.write_text(secrets.token_hex(16) + "\n")
            passphrase.chmod(0o600)
            os.chown(passphrase, postgres.pw_uid, postgres.pw_gid)
        if self.barman_command[0] != "env":
            self.barman_command = ["env", f"GNUPGHOME={gnupg}", *self.barman_command]
        gpg = [*self.network.launcher("backup"), *as_server_user(["env", f"GNUPGHOME={gnupg}", "gpg", "--batch"])]

        def fingerprint():
            listed = subprocess.run([*gpg, "--with-colons", "--list-secret-keys"], capture_output=True, text=True)
            return next((line.split(":")[9] for line in listed.stdout.splitlines() if line.startswith("fpr:")), None)

        if fingerprint() is None:
            subprocess.run(
                [*gpg, "--pinentry-mode", "loopback", "--passphrase-file", str(passphrase),
                 "--quick-gen-key", "coupons backups (tests/cluster)", "rsa3072", "sign,encr", "never"],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
        return fingerprint()

    def barman(self, *args, timeout=300):
        """`barman ARGS` on the backup host as the postgres user; the CompletedProcess (check it)."""
        home = self.directory / "backup"
        command = [*self.barman_command, "-c", str(home / "barman.conf"), *args]
        return subprocess.run(
            [*self.network.launcher("backup"), *as_server_user(command)],
            capture_output=True, text=True, timeout=timeout, cwd=home,
        )  # fmt: skip

    def barman_check(self):
        """{check: (ok, detail)} from `barman check`."""
        checks = {}
        for line in self.barman("check", BARMAN_SERVER).stdout.splitlines():
            name, _, result = line.strip().partition(": ")
            if result:
                checks[name] = (result.startswith("OK"), result)
        return checks

    def wait_until_streaming_wal(self, timeout=START_TIMEOUT_SECONDS):
        """Until Barman streams WAL through its slot (its checks pass but those that need a backup or an archived
        segment)."""
        needs_a_backup = {"minimum redundancy requirements", "WAL archive", "backup maximum age", "wal maximum age"}

        def streaming():
            checks = self.barman_check()
            return checks and all(ok for name, (ok, _) in checks.items() if name not in needs_a_backup)

        try:
            wait_for(streaming, timeout, "Barman streaming WAL")
        except TimeoutError as error:
            raise TimeoutError(f"{error}: {self.barman_check()}\n{self.log('backup')}") from None

    def restart_host(self, name):
        """Start the host's service again, as a rebooted machine would (on the data it kept)."""
        if name in ETCD_HOSTS:
            self.start_etcd_member(name)
        elif name in DATABASE_HOSTS:
            self.start_database_host(name)
        elif name in APP_HOSTS:
            self.start_app_host(name)
        elif name == "backup":
            self.start_backup_host()
        else:
            raise ValueError(f"{name} cannot be restarted")

    # Faults: whole hosts, as a crashed, frozen or unplugged machine --------

    def kill_host(self, name):
        """SIGKILL every process of the host at once; returns once all are gone."""
        service = self.app_hosts.pop(name, None)
        if service is not None:
            service.kill()
        self.network.signal_processes(name, signal.SIGKILL)
        for process_name in (name, *(f"{name}-{worker}" for worker in WORKERS)):
            if process_name in self.processes:
                self.processes[process_name].wait()

    def pause_host(self, name):
        """SIGSTOP every process of the host (a VM paused, a long stall): it holds its sockets and does nothing."""
        self.network.signal_processes(name, signal.SIGSTOP)

    def resume_host(self, name):
        self.network.signal_processes(name, signal.SIGCONT)

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

    def streaming_standbys(self, members):
        """The members Patroni calls quorum standbys, streaming with no lag."""
        return [
            name
            for name, m in members.items()
            if m["role"] == STANDBY_ROLE and m["state"] in {"running", "streaming"} and m.get("lag") == 0
        ]

    def wait_until_replicated(self, timeout=START_TIMEOUT_SECONDS):
        """Until one host leads and every other is a quorum standby, streaming."""

        def replicated():
            members = self.cluster()
            leaders = [name for name, m in members.items() if m["role"] == "leader"]
            standbys = self.streaming_standbys(members)
            return len(leaders) == 1 and len(standbys) == len(DATABASE_HOSTS) - 1 and members

        try:
            return wait_for(replicated, timeout, "a primary and streaming quorum standbys")
        except TimeoutError as error:
            logs = "\n".join(f"--- {name}\n{self.log(name)}" for name in DATABASE_HOSTS)
            raise TimeoutError(f"{error}; Patroni says {self.cluster()}\n{logs}") from None

    def problems(self):
        """What keeps the deployment from being whole (an empty list: healthy).

        Every etcd member healthy; a leader and every other database host
        a quorum standby streaming with no lag; HAProxy sending PostgreSQL connections to the
        leader and requests to every app host.
        """
        found = [f"etcd member {name} not healthy" for name in ETCD_HOSTS if not self.etcd_member_healthy(name)]
        members = self.cluster()
        leaders = [name for name, m in members.items() if m["role"] == "leader" and m["state"] == "running"]
        standbys = self.streaming_standbys(members)
        if len(leaders) != 1 or len(standbys) != len(DATABASE_HOSTS) - 1:
            roles = {name: (m["role"], m["state"], m.get("lag")) for name, m in members.items()}
            found.append(f"Patroni: {roles}")
        else:
            # Patroni's view of a standby lags behind (its member key lives
            # `ttl` s): the leader's own replication view is the one to trust.
            found += self._replication_problems(leaders[0], standbys)
        servers = self.haproxy_servers()
        if leaders and servers.get(("postgres", leaders[0]), {}).get("status") != "UP":
            found.append(f"HAProxy does not send connections to the leader {leaders[0]}")
        found += [
            f"HAProxy does not send requests to {name}"
            for name in APP_HOSTS
            if servers.get(("app_hosts", name), {}).get("status") != "UP"
        ]
        return found

    def _replication_problems(self, leader, standbys):
        try:
            with psycopg.connect(
                host=self.address(leader), port=5432, user="postgres", password=self.password, dbname="postgres",
                connect_timeout=2,
            ) as connection:  # fmt: skip
                replicas = connection.execute(
                    "SELECT application_name, state, sync_state FROM pg_stat_replication"
                ).fetchall()
        except psycopg.Error as error:
            return [f"the leader {leader} does not answer: {error}"]
        # PostgreSQL calls a standby named in `ANY n (...)` a quorum standby.
        return [
            f"{standby} is not streaming as a quorum standby from {leader}: {replicas}"
            for standby in standbys
            if (standby, "streaming", "quorum") not in replicas
        ]

    def wait_until_healthy(self, timeout=START_TIMEOUT_SECONDS):
        """Until problems() is empty; TimeoutError naming what is still broken, with the logs that matter."""
        try:
            wait_for(lambda: not self.problems(), timeout, "the deployment to heal")
        except TimeoutError as error:
            logs = "\n".join(f"--- {name}\n{self.log(name, 15)}" for name in (*DATABASE_HOSTS, "haproxy"))
            raise TimeoutError(f"{error}: {self.problems()}\n{logs}") from None

    def patch_dynamic_config(self, changes):
        """Change Patroni's dynamic configuration (kept in etcd); every member applies it within a loop (1 s)."""

        def patched():
            for name in DATABASE_HOSTS:  # any member writes it to etcd
                reply = request(self.address(name), PATRONI_PORT, "PATCH", "/config", changes, timeout=5)
                if reply.status == 200:
                    return reply
            return None

        wait_for(patched, 60, f"Patroni to take {changes}")
        time.sleep(3)

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
