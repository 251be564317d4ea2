"""The service through PgBouncer 1.18 in transaction mode, configured by deploy/pgbouncer.ini as shipped.

Real processes: a private PostgreSQL cluster, PgBouncer (Debian's), and
the server (couponsite/serve.py) with the service's default settings (server-side binding on).
More server workers than PgBouncer has server connections, so claims
share server connections transaction by transaction.
"""

import contextlib
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from unittest import skipUnless

import psycopg
from django.test import SimpleTestCase

from tests.cluster.sale import claim_at_once
from tests.faults.cluster import PrivateCluster, as_server_user, process_alive
from tests.faults.service import Service
from tests.helpers import ROOT, free_port, manage

PASSWORD = secrets.token_hex(8)
SERVER_CONNECTIONS = 2
WORKERS = 4


def pgbouncer_config(cluster_port, port, directory):
    """deploy/pgbouncer.ini with this machine's addresses, and a smaller pool."""
    config = (ROOT / "deploy" / "pgbouncer.ini").read_text()
    replacements = {
        "host=lb port=5000": f"host=127.0.0.1 port={cluster_port}",
        "listen_addr = 0.0.0.0": "listen_addr = 127.0.0.1",
        "listen_port = 6432": f"listen_port = {port}",
        "auth_file = /etc/pgbouncer/userlist.txt": f"auth_file = {directory}/userlist.txt",
        "default_pool_size = 20": f"default_pool_size = {SERVER_CONNECTIONS}",
    }
    for shipped, here in replacements.items():
        if shipped not in config:
            raise RuntimeError(f"deploy/pgbouncer.ini no longer says {shipped!r}")
        config = config.replace(shipped, here)
    return config + "unix_socket_dir =\n"


@skipUnless(shutil.which("pgbouncer"), "Debian's pgbouncer; .ci/run and make test-cluster install it")
class PgBouncerTests(SimpleTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.cluster = cls.enterClassContext(PrivateCluster())
        directory = Path(cls.enterClassContext(tempfile.TemporaryDirectory(prefix="cpn-pgbouncer-")))
        directory.chmod(0o755)
        (directory / "userlist.txt").write_text(f'"postgres" "{PASSWORD}"\n')
        cls.port = free_port()
        (directory / "pgbouncer.ini").write_text(pgbouncer_config(cls.cluster.port, cls.port, directory))
        log = cls.enterClassContext(open(directory / "pgbouncer.log", "w"))  # noqa: SIM115
        cls.pgbouncer = subprocess.Popen(
            as_server_user(["pgbouncer", str(directory / "pgbouncer.ini")]), stdout=log, stderr=subprocess.STDOUT
        )
        cls.addClassCleanup(cls.pgbouncer.wait)
        cls.addClassCleanup(cls.pgbouncer.terminate)
        cls.url = f"postgres://postgres:{PASSWORD}@127.0.0.1:{cls.port}/coupons"
        for _ in range(50):
            with contextlib.suppress(psycopg.OperationalError), cls.connect():
                break
            if not process_alive(cls.pgbouncer.pid):
                raise RuntimeError((directory / "pgbouncer.log").read_text())
            time.sleep(0.1)
        result = manage("migrate", "--noinput", DATABASE_URL=cls.url)
        if result.returncode != 0:
            raise RuntimeError(f"migrate through PgBouncer failed:\n{result.stderr}")
        cls.service = cls.enterClassContext(Service(cls.url, WEB_CONCURRENCY=str(WORKERS)))

    @classmethod
    def connect(cls):
        return psycopg.connect(cls.url, autocommit=True, connect_timeout=2)

    def test_a_flash_sale_and_a_double_dip_through_transaction_pooling(self):
        reply = self.service.request("POST", "/api/coupons", {"name": "POOLED", "amount": 20})
        self.assertEqual(reply.status, 201, reply)
        claims = [(f"user-{i}", "POOLED") for i in range(60)] + [(f"user-{i}", "POOLED") for i in range(20)]

        answers = claim_at_once("127.0.0.1", self.service.port, claims, clients=12)

        statuses = [a.status for a in answers]
        self.assertEqual(statuses.count(201), 20)
        self.assertEqual(len(statuses), statuses.count(201) + statuses.count(400) + statuses.count(409))
        with self.cluster.connect() as connection:
            rows = connection.execute("SELECT user_id FROM coupons_claim").fetchall()
            remaining = connection.execute("SELECT remaining_amount FROM coupons_coupon").fetchone()[0]
            # The workers shared PgBouncer's few server connections.
            servers = connection.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'coupons' AND pid <> pg_backend_pid()"
            ).fetchone()[0]
        self.assertEqual(sorted(u for (u,) in rows), sorted(a.user_id for a in answers if a.status == 201))
        self.assertEqual(remaining, 0)
        self.assertLessEqual(servers, SERVER_CONNECTIONS)

    def test_the_servers_see_that_listen_does_not_work_here_and_refuse_nothing_from_memory(self):
        # coupons/coupon_states.py: a notification sent from another connection never reaches a listener
        # whose server connection PgBouncer hands around; each worker says so, and asks the database instead.
        reply = self.service.request("POST", "/api/coupons", {"name": "UNHEARD", "amount": 1})
        self.assertEqual(reply.status, 201, reply)
        deadline, attempt = time.monotonic() + 30, 0
        while "LISTEN does not work through it" not in self.service.output():
            self.assertIn(self.service.claim(f"someone-{attempt}", "UNHEARD").status, (201, 400))
            self.assertLess(time.monotonic(), deadline, self.service.output())
            attempt += 1
            time.sleep(0.5)

    def test_the_statement_lock_and_idle_timeouts_hold_on_every_server_connection(self):
        names = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
        with self.connect() as connection:
            timeouts = [connection.execute(f"SHOW {name}").fetchone()[0] for name in names]
        self.assertEqual(timeouts, ["15s", "10s", "2s"])
