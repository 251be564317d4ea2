"""A database restart breaks every idle persistent connection; the next request on each reconnects instead of failing.

The service keeps one connection per server thread (DATABASE_CONN_MAX_AGE).
After the database restarts (or Patroni fails over: tests/cluster), those
connections are dead, and a thread that was idle through the outage meets its
dead connection at its next request, maybe minutes later. With the health
check (DATABASE_CONN_HEALTH_CHECKS, on by default; couponsite/postgresql: no
round trip) that request reconnects and is answered; without it, it is a 503.
"""

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from tests.faults.base import FaultTestCase, logger
from tests.faults.service import Service

THREADS = 8
CLAIMS_PER_THREAD = 10


class BrokenConnectionTests(FaultTestCase):
    def claim_from_every_thread(self, service, name, prefix):
        """THREADS clients at once, CLAIMS_PER_THREAD claims each; the statuses counted."""
        users = [f"{prefix}-{i}" for i in range(THREADS * CLAIMS_PER_THREAD)]
        with ThreadPoolExecutor(THREADS) as clients:
            return Counter(reply.status for reply in clients.map(lambda user: service.claim(user, name), users))

    def service_connections(self):
        with self.cluster.connect() as connection:
            return connection.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'coupons' AND pid <> pg_backend_pid()"
            ).fetchone()[0]

    def restart_under(self, service, name):
        """Claims from every thread, a restart of the database, claims again: the statuses after the restart."""
        self.create_coupon(service, name, 10 * THREADS * CLAIMS_PER_THREAD)
        self.assertEqual(self.claim_from_every_thread(service, name, "before"), {201: THREADS * CLAIMS_PER_THREAD})
        broken = self.service_connections()
        self.assertGreater(broken, 1, "the threads hold persistent connections")

        self.cluster.stop("fast")
        self.cluster.start()

        after = self.claim_from_every_thread(service, name, "after")
        told_201 = after[201] + THREADS * CLAIMS_PER_THREAD
        self.assertEqual(len(self.claimers(name)), told_201, "every 201 has its row, and only they")
        return broken, after

    def test_with_the_health_check_no_request_meets_a_broken_connection(self):
        with Service(self.cluster.url, WEB_CONCURRENCY="1", WEB_THREADS=str(THREADS)) as service:
            broken, after = self.restart_under(service, "BROKEN CONNECTIONS CHECKED")
        self.assertEqual(after, {201: THREADS * CLAIMS_PER_THREAD})
        logger.info("health check on: %d connections broken by a restart; the %d claims after it: %s",
                    broken, after.total(), dict(after))  # fmt: skip

    def test_without_it_each_broken_connection_fails_a_request(self):
        """The control: the same restart with the check off costs 503s, so the test above can fail."""
        with Service(
            self.cluster.url, WEB_CONCURRENCY="1", WEB_THREADS=str(THREADS), DATABASE_CONN_HEALTH_CHECKS="0"
        ) as service:
            broken, after = self.restart_under(service, "BROKEN CONNECTIONS UNCHECKED")
        self.assertGreater(after[503], 0, after)
        self.assertLessEqual(after[503], broken, "one failed request per broken connection at most")
        self.assertEqual(set(after), {201, 503})
        logger.info("health check off: %d connections broken by a restart; the %d claims after it: %s",
                    broken, after.total(), dict(after))  # fmt: skip
