"""A private PostgreSQL cluster that the fault tests may stop, restart and kill.

Never the shared instance on 5432: each cluster is a fresh `initdb` in a
temporary directory, served on a free port of 127.0.0.1 and on a socket in
that directory. `initdb` refuses to run as root, so as root the server
binaries run as the `postgres` user.

Cleaning up is layered, so that no cluster outlives its tests: the tests
use the cluster as a context manager (entered with enterClassContext, so it
is destroyed even when setUpClass or a test fails); an atexit hook destroys
whatever is still running when the process exits; and every new cluster
first sweeps the directories of clusters whose owning process has died
without cleaning up (killed, say).
"""

import atexit
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from tests.helpers import free_port

DIRECTORY_PREFIX = "couponsite-pg-"
OWNER_FILE = "owner.pid"
DATABASE = "coupons"
START_TIMEOUT_SECONDS = 60


def server_binary(name):
    bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
    return str(Path(bindir) / name)


def as_server_user(command):
    """The command, run as `postgres` when we are root (initdb and postgres refuse root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def children(pid):
    """The pids of the direct children of `pid`, read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def kill_postmaster_and_backends(data_directory):
    """SIGKILL the cluster's postmaster and every process it started, as the OOM killer would."""
    pid_file = Path(data_directory) / "postmaster.pid"
    try:
        postmaster = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    cmdline = Path(f"/proc/{postmaster}/cmdline")
    if not cmdline.exists() or b"postgres" not in cmdline.read_bytes():
        return  # stale pid file: nothing of ours runs under that pid
    backends = children(postmaster)
    for pid in [postmaster, *backends]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while any(process_alive(pid) for pid in [postmaster, *backends]) and time.monotonic() < deadline:
        time.sleep(0.05)


def owned_directories(prefix):
    """(directory, pid of its owner if that process still runs, else None) for each temporary directory prefix*."""
    for directory in Path(tempfile.gettempdir()).glob(prefix + "*"):
        try:
            owner = int((directory / OWNER_FILE).read_text())
        except (OSError, ValueError):
            owner = None
        yield directory, owner if owner is not None and process_alive(owner) else None


def sweep_leftover_clusters():
    """Destroy clusters left behind by test processes that died without cleaning up."""
    for directory, live_owner in owned_directories(DIRECTORY_PREFIX):
        if live_owner:
            continue  # a running test process's cluster
        kill_postmaster_and_backends(directory / "data")
        shutil.rmtree(directory, ignore_errors=True)


class PrivateCluster:
    """A throwaway PostgreSQL server with one database, `coupons`.

    `server_settings` become `-c name=value` options of the server.
    """

    def __init__(self, **server_settings):
        self.server_settings = {"listen_addresses": "127.0.0.1", "max_connections": 30, **server_settings}
        self.directory = None
        self.port = None

    @property
    def data_directory(self):
        return self.directory / "data"

    @property
    def url(self):
        return f"postgres://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def __enter__(self):
        sweep_leftover_clusters()
        self.directory = Path(tempfile.mkdtemp(prefix=DIRECTORY_PREFIX))
        atexit.register(self.destroy)
        (self.directory / OWNER_FILE).write_text(str(os.getpid()))
        if os.geteuid() == 0:
            postgres = pwd.getpwnam("postgres")
            os.chown(self.directory, postgres.pw_uid, postgres.pw_gid)
        self.port = free_port()
        self._create()
        return self

    def _create(self):
        """A new data directory, started, with the `coupons` database."""
        self._pg("initdb", "-D", str(self.data_directory), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        self.start()
        with self.connect(dbname="postgres") as connection:
            connection.execute(f"CREATE DATABASE {DATABASE}")

    def __exit__(self, *exc_info):
        self.destroy()

    def _pg(self, binary, *args, timeout=START_TIMEOUT_SECONDS):
        return subprocess.run(
            as_server_user([server_binary(binary), *args]),
            capture_output=True,
            text=True,
            check=True,
            timeout=timeout,
            cwd=self.directory,  # the postgres user's; PostgreSQL's programs fail where it cannot enter
        )

    def start(self):
        """Start the server and wait until it accepts connections (after crash recovery, if it needs one)."""
        options = " ".join(f"-c {name}={value}" for name, value in self.server_settings.items())
        self._pg(
            "pg_ctl",
            "start",
            "-D",
            str(self.data_directory),
            "-l",
            str(self.directory / "server.log"),
            "-w",
            "-t",
            str(START_TIMEOUT_SECONDS),
            "-o",
            f"-p {self.port} -k {self.directory} {options}",
        )

    def stop(self, mode="fast"):
        """pg_ctl stop: "fast" ends every session and shuts down cleanly; "immediate" is a crash, recovered on start."""
        self._pg("pg_ctl", "stop", "-D", str(self.data_directory), "-m", mode, "-w")

    def kill(self):
        """SIGKILL the postmaster and all its backends at once."""
        kill_postmaster_and_backends(self.data_directory)

    def reconfigure(self, name, value=None):
        """ALTER SYSTEM SET name = value (None: RESET), reloaded: every session takes it, persistent ones too."""
        with self.connect() as connection:
            if value is None:
                connection.execute(f"ALTER SYSTEM RESET {name}")
            else:
                connection.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            connection.execute("SELECT pg_reload_conf()")
        time.sleep(0.2)  # sessions read the reloaded file between statements

    def connect(self, dbname=DATABASE, autocommit=True):
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, autocommit=autocommit)

    def destroy(self):
        """Stop the server however it is, and remove its directory. Safe to call twice."""
        if self.directory is None:
            return
        kill_postmaster_and_backends(self.data_directory)
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None
        atexit.unregister(self.destroy)


class StandbyCluster(PrivateCluster):
    """A hot standby of `primary`, streaming from it (pg_basebackup -R): read-only, as a demoted primary is."""

    def __init__(self, primary, **server_settings):
        super().__init__(**server_settings)
        self.primary = primary

    def _create(self):
        self._pg("pg_basebackup", "-D", str(self.data_directory), "-R", "-X", "stream", "-c", "fast", "-U", "postgres",
                 "-h", "127.0.0.1", "-p", str(self.primary.port))  # fmt: skip
        self.start()
