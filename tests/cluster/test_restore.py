"""Recovery, drilled: Barman's backups of a sale restored, and checked against what clients were told.

The topology of tests/cluster with its backup host (Barman, deploy/barman.conf):
a base backup, and WAL streamed from whichever node is primary through
HAProxy. Each drill runs a sale, breaks something, restores with Barman's
own commands (the ones docs/operator-guide.md gives) into a fresh
PostgreSQL on the backup host, and hands the sale's history and the
restored rows to the checker (tests/cluster/restore.py):

- an operator's mistake, `DELETE FROM coupons_claim` mid-sale: point-in-time
  recovery to the instant before it gives back every claim granted before
  it and none sent after it, stock consistent; the backup is checked first
  (GPG-encrypted, its WAL too; `barman check-backup`), and the restored
  files against the backup's manifest (pg_verifybackup) before PostgreSQL
  starts on them;
- a failover mid-sale (the WAL stream follows the new primary with no
  operator), then every database host lost with its disk: a new three-node
  Patroni cluster bootstrapped from the latest backup and every streamed
  WAL byte (the unfinished segment too); a claim told 201 and missing is
  counted, and the span it covers is the RPO; the sale resumes through
  HAProxy and its claims are checked too;
- a base backup started just before a failover: it completes, or fails and
  is listed FAILED; the next one reaches the new primary unchanged; the
  latest restores every acknowledged claim.

`make test-restore` runs both (as root); CI runs the first
(`make test-restore ARGS="-k mistake"`). With RESTORE_CLAIMS=N (`make
test-restore-rto`), a third measures the RTO of a database of N claims.
"""

import contextlib
import datetime
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import skipUnless

import psycopg
from django.test import SimpleTestCase
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.restore import check_restore, wall_clock
from tests.cluster.sale import FIGURES, Sale
from tests.cluster.topology import BARMAN_SERVER, DATABASE, DATABASE_HOSTS, HTTP_PORT, Topology, wait_for
from tests.faults.cluster import as_server_user, kill_postmaster_and_backends, server_binary
from tests.faults.service import request

SALE_CLIENTS = 8
RESTORE_TIMEOUT_SECONDS = 3600
# What `barman recover` adds to a restored data directory, or removes from it (verify_restored).
RECOVER_ADDS_OR_REMOVES = (
    ".barman-recover.info",
    "postgresql.conf.origin",
    "postgresql.auto.conf.origin",
    "tablespace_map",
)


@skipUnless(
    os.environ.get("CLUSTER_TESTS") and os.environ.get("RESTORE_TESTS"),
    "make test-restore runs these (as root: namespaces, Patroni, HAProxy, Barman)",
)
class RestoreDrills(SimpleTestCase):
    def setUp(self):
        self.topology = self.enterContext(Topology(app_workers=2, backup=True))
        self.lb = self.topology.address("lb")
        self.backup_home = self.topology.directory / "backup"

    # Helpers ---------------------------------------------------------------

    def barman(self, *args):
        result = self.topology.barman(*args, timeout=RESTORE_TIMEOUT_SECONDS)
        self.assertEqual(result.returncode, 0, f"barman {' '.join(args)}:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def start_sale(self, name):
        created = request(self.lb, HTTP_PORT, "POST", "/api/coupons", {"name": name, "amount": 10**6})
        self.assertEqual(created.status, 201, created)
        sale = self.enterContext(Sale(self.lb, HTTP_PORT, name, SALE_CLIENTS))
        wait_for(lambda: sale.count(201) >= 100, 60, "the sale under way")
        return sale

    def back_up(self):
        """A base backup now, then `barman check` whole (WAL archived, a backup, the slot, the streamer)."""
        started = time.monotonic()
        self.barman("backup", BARMAN_SERVER, "--wait", "--wait-timeout", "120")
        took = time.monotonic() - started
        self.barman("switch-wal", "--force", "--archive", "--archive-timeout", "60", BARMAN_SERVER)
        checks = self.topology.barman_check()
        self.assertTrue(checks and all(ok for ok, _ in checks.values()), checks)
        return took

    def backup_stream_metrics(self):
        """{series: value} of the backup stream, as an app host's /metrics reports it (coupons/stock_metrics.py)."""
        reply = self.topology.app_hosts["app1"].request("GET", "/metrics")
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(reply.body)
            for sample in family.samples
            if sample.name.startswith("coupon_backup_")
        }

    def verify_backup(self):
        """What Barman offers to check the latest backup, and what it does not; {check: result}.

        `barman check-backup`: every WAL segment from the backup's start to its end is in the archive (it must
        succeed). `barman verify-backup` runs pg_verifybackup on the stored backup, which PostgreSQL 15's reads
        in plain format only: ours are gzipped tar files, GPG-encrypted (what Barman's encryption needs), so it
        must fail, and the restored copy is verified instead (verify_restored)."""
        results = {"check-backup": self.barman("check-backup", BARMAN_SERVER, "latest").strip() or "OK"}
        shown = self.barman("show-backup", BARMAN_SERVER, "latest")
        self.assertRegex(shown, r"Encryption\s*:\s*gpg", "the backup is encrypted")
        # ...and the archived WAL, as Barman sees it (file(1): it decrypts at get-wal only what it recognises).
        archived = sorted((self.backup_home / "barman" / BARMAN_SERVER / "wals").glob("*/0*"))
        kinds = subprocess.run(["file", "--brief", *map(str, archived)], capture_output=True, text=True).stdout
        self.assertTrue(archived and all("PGP" in k and "encrypted" in k for k in kinds.splitlines()), kinds)
        stored = self.topology.barman("verify-backup", BARMAN_SERVER, "latest")
        self.assertNotEqual(stored.returncode, 0, f"pg_verifybackup 15 read a tar backup?\n{stored.stdout}")
        results["verify-backup"] = (stored.stdout + stored.stderr).strip().splitlines()[-1]
        return results

    def verify_restored(self, destination):
        """pg_verifybackup of the restored data directory, before PostgreSQL starts on it, against the manifest
        PostgreSQL sent with the backup (Barman keeps it, unencrypted, beside the backup's tar files): every
        file as the server sent it, checksums included, after GPG decryption, gunzip and untar. What recover
        adds or takes away is named and skipped, as pg_verifybackup itself skips the recovery settings: its own
        record, its copies of the configuration files before it edited them (*.origin), and tablespace_map (an
        empty file here: no tablespaces). WAL is fetched at start."""
        catalog = self.backup_home / "barman" / BARMAN_SERVER / "base"
        manifest = sorted(catalog.glob("*/data/backup_manifest"))[-1]  # backup ids are timestamps: the latest
        verified = subprocess.run(
            as_server_user([
                server_binary("pg_verifybackup"), "--no-parse-wal", "--manifest-path", str(manifest),
                *(f"--ignore={name}" for name in RECOVER_ADDS_OR_REMOVES), str(destination),
            ]),
            capture_output=True, text=True, cwd="/",
        )  # fmt: skip
        self.assertEqual(verified.returncode, 0, verified.stdout + verified.stderr)
        return verified.stdout.strip()

    def restore(self, *target, verify=False):
        """`barman recover` of the latest backup into a fresh data directory, every streamed WAL byte fetched with
        `barman get-wal --partial`; PostgreSQL started on it on the backup host. Returns the seconds it took.
        With `verify`, the restored files are checked against the backup's manifest before PostgreSQL starts."""
        destination = self.backup_home / "restored"
        barman = [*self.topology.barman_command, "-c", str(self.backup_home / "barman.conf")]
        started = time.monotonic()
        self.barman("recover", BARMAN_SERVER, "latest", str(destination), "--get-wal", *target)
        if verify:
            self.verified = self.verify_restored(destination)
        # Recovery fetches WAL with the backup host's own barman (the config path is this run's), the unfinished
        # segment too (-P); the restored server answers here, on the backup host, not as a Patroni member.
        restore_command = " ".join([*barman, "get-wal", "-P", BARMAN_SERVER, "%f", ">", "%p"])
        settings = {
            "port": "5432",
            "listen_addresses": self.topology.address("backup"),
            "unix_socket_directories": str(destination),
            "hba_file": str(destination / "pg_hba.conf"),
            "ident_file": str(destination / "pg_ident.conf"),
            "restore_command": restore_command,
            "synchronous_standby_names": "",
            "archive_mode": "off",
        }
        options = [f"--{name}={value}" for name, value in settings.items()]
        self.topology._spawn(
            "restored", "backup", as_server_user([server_binary("postgres"), "-D", str(destination), *options]), {}
        )
        wait_for(self.promoted_or_gone, RESTORE_TIMEOUT_SECONDS, "the restored database out of recovery")
        self.assertIsNone(
            self.topology.processes["restored"].poll(), f"PostgreSQL stopped:\n{self.topology.log('restored')}"
        )
        return time.monotonic() - started

    def connect_restored(self):
        return psycopg.connect(
            host=self.topology.address("backup"), port=5432, user="postgres", password=self.topology.password,
            dbname=DATABASE, autocommit=True, connect_timeout=5,
        )  # fmt: skip

    def promoted_or_gone(self):
        """Out of recovery, or exited (a restore that failed fails the drill at once, not after an hour)."""
        return self.topology.processes["restored"].poll() is not None or self.promoted()

    def promoted(self):
        try:
            with self.connect_restored() as connection:
                return not connection.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        except psycopg.Error:
            return False

    def restored_rows(self, coupon_name, connect=None):
        with (connect or self.connect_restored)() as connection:
            amount, remaining = connection.execute(
                "SELECT amount, remaining_amount FROM coupons_coupon WHERE name = %s", [coupon_name]
            ).fetchone()
            users = connection.execute(
                "SELECT u.user_id FROM coupons_claim u JOIN coupons_coupon c ON c.id = u.coupon_id WHERE c.name = %s",
                [coupon_name],
            ).fetchall()
        return amount, remaining, [user for (user,) in users]

    # Drills ----------------------------------------------------------------

    def test_an_operators_mistake_undone_by_point_in_time_recovery(self):
        name = "restore-mistake"
        sale = self.start_sale(name)
        self.back_up()

        # Mid-sale, the stream is up and, once it has caught up with the base backup's checkpoint, well under a
        # segment (16 MB) behind: the archive lags by WAL records, not by segments.
        def caught_up():
            stream = self.backup_stream_metrics()
            streaming = stream.get("coupon_backup_wal_streaming") == 1
            return stream if streaming and stream["coupon_backup_wal_lag_bytes"] < 16 * 2**20 else None

        stream = wait_for(caught_up, 60, "the backup stream within a segment (16 MB) of the primary")
        wait_for(lambda: sale.count(201) >= 400, 60, "claims after the backup")
        before_mistake = time.time()
        with self.topology.connect_primary() as connection:
            deleted = connection.execute("DELETE FROM coupons_claim").rowcount
        wait_for(lambda: sale.count(201, sent_after=time.monotonic() - 1) >= 1, 60, "claims after the mistake")
        time.sleep(2)
        sale.stop()
        answers = sale.snapshot()

        checked = self.verify_backup()
        target = datetime.datetime.fromtimestamp(before_mistake, datetime.UTC).isoformat()
        took = self.restore("--target-time", target, "--target-action", "promote", verify=True)
        verdict = check_restore(
            answers, self.restored_rows(name), kept_until=before_mistake, dropped_from=before_mistake
        )

        self.assertGreater(deleted, 0)
        self.assertEqual(verdict.anomalies, [])
        after = sum(1 for a in answers if a.status == 201 and wall_clock(a.sent) > before_mistake)
        FIGURES.append(
            f"point-in-time recovery: every claim deleted mid-sale ({deleted} rows); barman recover to the"
            f" instant before it: all {verdict.told_201} claims answered 201 before it back, none of the {after} sent"
            f" after it; {verdict.rows} rows, stock consistent; recover + replay + promotion {took:.1f} s; the WAL"
            f" stream {stream['coupon_backup_wal_lag_bytes']:.0f} bytes behind mid-sale (an app host's /metrics);"
            f" the backup GPG-encrypted, decrypted by the restore; barman check-backup: {checked['check-backup']};"
            f" barman verify-backup: {checked['verify-backup']!r}; the restored files: {self.verified!r}"
        )

    def copying(self):
        """Whether pg_basebackup runs on the backup host."""
        for pid in self.topology.network.pids("backup"):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"pg_basebackup"):
                    return True
        return False

    def fail_over(self, sale):
        """The primary's PostgreSQL SIGKILLed mid-sale; returns (old primary, new primary) once claims go on."""
        old_primary = self.topology.primary()
        failed_over = time.monotonic()
        kill_postmaster_and_backends(self.topology.directory / old_primary / "data")
        wait_for(lambda: sale.count(201, sent_after=failed_over + 1) >= 200, 120, "claims on the new primary")
        new_primary = self.topology.primary()
        self.assertNotEqual(new_primary, old_primary)
        return old_primary, new_primary

    def lose_every_database_host(self, sale):
        """Every database host killed and its disk wiped, mid-sale; the sale stopped: (when, its answers)."""
        for host in DATABASE_HOSTS:
            self.topology.kill_host(host)
        lost_at = time.time()
        for host in DATABASE_HOSTS:
            shutil.rmtree(self.topology.directory / host / "data")
        sale.stop()
        return lost_at, sale.snapshot()

    def lose_every_database_host_and_restore(self, sale, name):
        """Every database host and its disk lost at once, mid-sale; the restore checked; (verdict, seconds)."""
        lost_at, answers = self.lose_every_database_host(sale)
        took = self.restore()
        verdict = check_restore(answers, self.restored_rows(name), kept_until=lost_at)
        lost = ", ".join(verdict.lost[:5])
        self.assertEqual(verdict.anomalies, [], f"RPO {verdict.rpo_seconds:.2f} s ({lost})")
        return verdict, took

    def rebuild_cluster(self, old_primary):
        """A new Patroni cluster from the latest backup, as docs/operator-guide.md rebuilds one: the old
        cluster's state removed from etcd (`patronictl remove`), pg1 bootstrapped by deploy/patroni.yml's
        `barman_restore` method, pg2 and pg3 started empty (they clone pg1). Returns (seconds until pg1 leads,
        seconds until all three replicate under quorum commit)."""
        patronictl = str(Path(self.topology.patroni[0]).with_name("patronictl"))
        etcd = f"etcd3://{self.topology.address('etcd1')}:2379"
        started = time.monotonic()
        removed = subprocess.run(
            [*self.topology.network.launcher("pg1"), patronictl, "--dcs-url", etcd, "remove", "coupons"],
            input=f"coupons\nYes I am aware\n{old_primary}\n", capture_output=True, text=True, timeout=60, cwd="/",
        )  # fmt: skip
        self.assertEqual(removed.returncode, 0, removed.stdout + removed.stderr)
        self.topology.start_database_host("pg1", from_backup=True)
        try:
            wait_for(lambda: self.topology.primary() == "pg1", RESTORE_TIMEOUT_SECONDS, "pg1 leading, restored")
        except TimeoutError:
            self.fail(f"pg1 did not lead:\n{self.topology.log('pg1', 60)}")
        led = time.monotonic() - started
        for host in DATABASE_HOSTS[1:]:
            self.topology.start_database_host(host)
        self.topology.wait_until_replicated()
        return led, time.monotonic() - started

    def test_every_database_host_lost_after_a_failover_rebuilt_by_patroni_from_the_backup(self):
        """Every database host lost with its disk mid-sale (after a failover the WAL stream followed); a new
        three-node Patroni cluster bootstrapped from the backup host; the sale resumes through HAProxy. Every
        claim answered 201, before the loss and after the rebuild, has its row; none other."""
        name = "restore-all-lost"
        sale = self.start_sale(name)
        self.back_up()
        old_primary, new_primary = self.fail_over(sale)
        lost_at, answers = self.lose_every_database_host(sale)

        led, whole = self.rebuild_cluster(new_primary)
        verdict = check_restore(answers, self.restored_rows(name, self.topology.connect_primary), kept_until=lost_at)
        self.assertEqual(verdict.anomalies, [], f"RPO {verdict.rpo_seconds:.2f} s ({', '.join(verdict.lost[:5])})")

        resumed_at = time.monotonic()
        resumed = self.enterContext(Sale(self.lb, HTTP_PORT, name, SALE_CLIENTS, user_prefix=f"{name}-resumed"))
        wait_for(lambda: resumed.count(201) >= 200, 120, "the sale resumed through HAProxy")
        resumed.stop()
        first = resumed.first(201, resumed_at)
        after = check_restore(
            answers + resumed.snapshot(), self.restored_rows(name, self.topology.connect_primary), time.time()
        )
        self.assertEqual(after.anomalies, [])
        FIGURES.append(
            f"every database host lost (after a failover {old_primary} -> {new_primary}, which the WAL stream"
            f" followed), a new Patroni cluster bootstrapped from the backup (barman_restore): {verdict.told_201}"
            f" claims answered 201 before the loss, {len(verdict.lost)} missing (RPO {verdict.rpo_seconds:.2f} s);"
            f" pg1 leading {led:.1f} s after `patronictl remove`, three nodes under quorum commit at {whole:.1f} s;"
            f" the sale resumed through HAProxy (first 201 {first.answered - resumed_at:.1f} s after its first"
            f" request), {resumed.count(201)} more claims; {after.rows} rows, every 201 there, stock consistent"
        )

    def test_a_backup_taken_during_a_failover(self):
        """`barman backup` while the primary's PostgreSQL is SIGKILLed: it either completes, or fails and says so
        (never a backup listed as done that is not); the next one, with no change anywhere, reaches the new primary;
        the latest is restorable with every acknowledged claim."""
        name = "restore-backup-in-failover"
        sale = self.start_sale(name)
        with ThreadPoolExecutor(max_workers=1) as pool:
            backup = pool.submit(self.topology.barman, "backup", BARMAN_SERVER, "--wait", "--wait-timeout", "120")
            # pg_basebackup under way: past Barman's own checks (since encryption they include a test encryption;
            # a primary killed during them made `barman backup` refuse to start, listing nothing: CI saw it once).
            wait_for(lambda: self.copying() or backup.done(), 60, "pg_basebackup under way")
            old_primary, new_primary = self.fail_over(sale)
            first = backup.result()
        listed = self.barman("list-backups", BARMAN_SERVER).splitlines()
        failed = [line.split()[1] for line in listed if "FAILED" in line]
        self.assertEqual(
            bool(failed),
            first.returncode != 0,
            f"a backup that failed is listed FAILED, and only then: {listed}\n{first.stdout}\n{first.stderr}",
        )
        for backup_id in failed:  # `barman check` fails while a failed backup is kept: the operator deletes it
            self.barman("delete", BARMAN_SERVER, backup_id)
        self.back_up()

        verdict, took = self.lose_every_database_host_and_restore(sale, name)

        FIGURES.append(
            f"a backup during a failover ({old_primary} -> {new_primary}):"
            f" {'failed and listed FAILED' if first.returncode else 'completed'}; the next one, unchanged config,"
            f" from {new_primary}; every database host then lost: {verdict.told_201} claims answered 201,"
            f" {len(verdict.lost)} missing; restore {took:.1f} s"
        )

    @skipUnless(os.environ.get("RESTORE_CLAIMS"), "make test-restore-rto (RESTORE_CLAIMS=N claims) measures it")
    def test_the_restore_time_of_a_large_database(self):
        """Measured, barely asserted: N claims written in one statement, a base backup, every database host lost,
        the restore timed (the RTO of a database that size, on this machine)."""
        claims = int(os.environ["RESTORE_CLAIMS"])
        name = "restore-rto"
        created = request(self.lb, HTTP_PORT, "POST", "/api/coupons", {"name": name, "amount": claims})
        self.assertEqual(created.status, 201, created)
        started = time.monotonic()
        with self.topology.connect_primary() as connection:
            # Codes: 16 upper-case characters, unique (the table's constraints), as the claim path's would be.
            connection.execute(
                "INSERT INTO coupons_claim (user_id, coupon_id, created_at, code, status, order_id)"
                " SELECT 'rto-' || i, c.id, now(), upper(substr(md5(i::text), 1, 16)), 'held', ''"
                " FROM generate_series(1, %s) i, coupons_coupon c WHERE c.name = %s",
                [claims, name],
            )
            connection.execute("UPDATE coupons_coupon SET remaining_amount = 0 WHERE name = %s", [name])
            size = connection.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()[0]
        written = time.monotonic() - started
        backed_up = self.back_up()
        for host in DATABASE_HOSTS:
            self.topology.kill_host(host)
        took = self.restore()
        amount, remaining, users = self.restored_rows(name)

        self.assertEqual((amount, remaining, len(users)), (claims, 0, claims))
        FIGURES.append(
            f"RTO of {claims} claims (database {size}; written in {written:.0f} s): base backup {backed_up:.0f} s;"
            f" every database host lost: barman recover + replay + promotion {took:.0f} s"
        )
