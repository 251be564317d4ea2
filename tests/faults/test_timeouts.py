"""Waits on the database are bounded: a stuck row lock, a slow statement, an exhausted
connection pool and a database out of connection slots each end in a prompt JSON 503
with Retry-After, and the service serves claims again as soon as the cause is gone.

The limits are set low here (seconds) to keep the tests short; the defaults
are in docs/operator-guide.md (Configuration).
"""

import time
from concurrent.futures import ThreadPoolExecutor

import psycopg

from tests.faults.base import FaultTestCase, logger
from tests.faults.service import Service

LOCK_TIMEOUT = 2
STATEMENT_TIMEOUT = 4
POOL_TIMEOUT = 1
# What a bounded wait may add on a busy machine.
SLACK_SECONDS = 3


class DatabaseTimeoutTests(FaultTestCase):
    cluster_settings = {"max_connections": 20}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        limits = {"DATABASE_LOCK_TIMEOUT": str(LOCK_TIMEOUT), "DATABASE_STATEMENT_TIMEOUT": str(STATEMENT_TIMEOUT)}
        # One worker, four threads, one pooled connection: the pool runs dry at the second request in flight.
        cls.pooled = cls.enterClassContext(
            Service(
                cls.cluster.url,
                WEB_CONCURRENCY="1",
                WEB_THREADS="4",
                DATABASE_POOL_MAX_SIZE="1",
                DATABASE_POOL_TIMEOUT=str(POOL_TIMEOUT),
                **limits,
            )
        )
        # A connection per request, so that every request needs a free slot on the server.
        cls.unpooled = cls.enterClassContext(Service(cls.cluster.url, DATABASE_CONN_MAX_AGE="0", **limits))

    def setUp(self):
        self.name = self.id().rpartition(".")[2]
        self.create_coupon(self.pooled, self.name, 10)

    def lock_coupon_row(self):
        """Hold the coupon's row lock, as a claim stuck mid-transaction would, until the returned connection ends."""
        holder = self.cluster.connect(autocommit=False)
        self.addCleanup(holder.close)
        holder.execute("SELECT 1 FROM coupons_coupon WHERE name = %s FOR UPDATE", [self.name])
        return holder

    def assert_bounded_503(self, reply, limit):
        self.assert_unavailable(reply)
        self.assertGreaterEqual(reply.seconds, limit * 0.9, "answered only once the limit was reached")
        self.assertLess(reply.seconds, limit + SLACK_SECONDS)

    def assert_claims_again(self, service, user_id):
        self.assertEqual(service.claim(user_id, self.name).status, 201)
        self.assertEqual(self.claimers(self.name), [user_id])
        self.assertEqual(self.remaining(self.name), 9)

    def test_a_stuck_row_lock_ends_in_a_503_after_the_lock_timeout(self):
        holder = self.lock_coupon_row()

        reply = self.pooled.claim("user_1", self.name)

        self.assert_bounded_503(reply, LOCK_TIMEOUT)
        self.assertEqual(self.claimers(self.name), [])
        holder.rollback()
        self.assert_claims_again(self.pooled, "user_1")
        logger.info("stuck row lock: 503 after %.2f s (lock timeout %d s)", reply.seconds, LOCK_TIMEOUT)

    def test_a_slow_statement_ends_in_a_503_after_the_statement_timeout(self):
        with self.cluster.connect() as connection:
            connection.execute(
                "CREATE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN PERFORM pg_sleep(60); RETURN NEW; END $$;"
                "CREATE TRIGGER slow_claims BEFORE INSERT ON coupons_claim FOR EACH ROW EXECUTE FUNCTION slow_down()"
            )

        reply = self.pooled.claim("user_1", self.name)

        self.assert_bounded_503(reply, STATEMENT_TIMEOUT)
        self.assertEqual(self.claimers(self.name), [])
        self.assertEqual(self.remaining(self.name), 10)
        with self.cluster.connect() as connection:
            connection.execute("DROP TRIGGER slow_claims ON coupons_claim; DROP FUNCTION slow_down()")
        self.assert_claims_again(self.pooled, "user_1")
        logger.info("slow statement: 503 after %.2f s (statement timeout %d s)", reply.seconds, STATEMENT_TIMEOUT)

    def test_an_exhausted_pool_answers_503_after_the_pool_timeout(self):
        holder = self.lock_coupon_row()
        with ThreadPoolExecutor(max_workers=3) as pool:
            # This claim takes the pool's only connection and waits on the lock...
            stuck = pool.submit(self.pooled.claim, "user_1", self.name)
            time.sleep(0.3)
            # ... while these wait for a connection, both within the lock timeout.
            waiting = [
                pool.submit(self.pooled.request, "GET", path) for path in [f"/api/coupons/{self.name}", "/health"]
            ]
            replies = [future.result() for future in waiting]

            for reply in replies:
                self.assert_bounded_503(reply, POOL_TIMEOUT)
            self.assert_bounded_503(stuck.result(), LOCK_TIMEOUT)
        holder.rollback()
        self.assert_claims_again(self.pooled, "user_1")
        self.assertEqual(self.pooled.request("GET", "/health").status, 200)
        logger.info(
            "exhausted pool: 503 after %s s (pool timeout %d s)",
            ", ".join(f"{reply.seconds:.2f}" for reply in replies),
            POOL_TIMEOUT,
        )

    def test_a_database_out_of_connection_slots_answers_503_at_once(self):
        hogs = []
        self.addCleanup(lambda: [hog.close() for hog in hogs])
        while True:
            try:
                hogs.append(self.cluster.connect())
            except psycopg.OperationalError as exc:
                self.assertIn("too many clients", str(exc))
                break

        replies = [self.unpooled.claim("user_1", self.name), self.unpooled.request("GET", "/health")]

        for reply in replies:
            self.assert_unavailable(reply)
            self.assertLess(reply.seconds, SLACK_SECONDS)
        for hog in hogs:
            hog.close()
        self.assertEqual(self.claimers(self.name), [])
        self.assert_claims_again(self.unpooled, "user_1")
        logger.info("no connection slot left: 503 after %s s", ", ".join(f"{reply.seconds:.2f}" for reply in replies))
