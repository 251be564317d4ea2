"""The database goes away in the middle of a flash sale, and comes back.

A crowd of clients claims one coupon through the server while the private
cluster is stopped cleanly, crashed, or killed outright. Throughout:
answers are JSON (201, or 503 with Retry-After), none hangs; no claim
reported as a success is lost; stock arithmetic stays exact. Once the
database is back, the same server processes serve claims again within
seconds, and /health goes 503 -> 200. Claims that got a 503 are retried:
each gets 201, or 409 when its commit had gone through after all, never a
second unit.
"""

import threading
import time

from tests.faults.base import FaultTestCase, logger
from tests.faults.service import Service

# Enough clients that claims meet in claim groups (3 workers of 16 threads):
# the faults strike groups, not lone claims.
CLIENTS = 24
STOCK = 100_000
SUCCESSES_BEFORE_THE_FAULT = 20
UNAVAILABLE_ANSWERS_DURING_THE_FAULT = 10
# The database stays away at least this long, however fast the 503s come.
OUTAGE_SECONDS = 1.0
SUCCESSES_AFTER_RECOVERY = 20
# Bounds that make a failure a hang rather than a slow machine.
LONGEST_ANSWER_SECONDS = 15
RECOVERY_SECONDS = 10
WAIT_SECONDS = 60


class ClaimLoad:
    """CLIENTS threads claiming one coupon back to back, a new user for every claim, until stopped."""

    def __init__(self, service, coupon_name, *, keyed=False):
        self.service = service
        self.coupon_name = coupon_name
        self.keyed = keyed  # each claim sent with an Idempotency-Key of its own
        self.attempts = []  # (user_id, reply, monotonic time the reply came)
        self._lock = threading.Lock()
        self._next_user = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(CLIENTS)]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self):
        while not self._stop.is_set():
            with self._lock:
                user_id = f"user_{self._next_user}"
                self._next_user += 1
            reply = self.service.claim(
                user_id,
                self.coupon_name,
                timeout=LONGEST_ANSWER_SECONDS * 2,
                idempotency_key=idempotency_key(user_id) if self.keyed else None,
            )
            with self._lock:
                self.attempts.append((user_id, reply, time.monotonic()))
            if reply.status != 201:
                time.sleep(0.01)  # a failing crowd still hammers, but leaves the CPU some air

    def answered_since(self, moment, status):
        with self._lock:
            return [(user, reply, at) for user, reply, at in self.attempts if at >= moment and reply.status == status]

    def wait_until(self, condition, what):
        deadline = time.monotonic() + WAIT_SECONDS
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.02)


def idempotency_key(user_id):
    return f"key-of-{user_id}"


def wait_for_status(service, path, status):
    """Poll `path` until it answers `status`; return the moment it did."""
    deadline = time.monotonic() + WAIT_SECONDS
    while service.request("GET", path, timeout=5).status != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never answered {status}")
        time.sleep(0.05)
    return time.monotonic()


class DatabaseStopsMidSaleTests(FaultTestCase):
    # Room for every thread's connection (3 workers x 16 threads) besides the test's own.
    cluster_settings = {"max_connections": 60}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.service = cls.enterClassContext(Service(cls.cluster.url))

    def run_sale_through(self, fault, *, keyed=False):
        """Claim through `fault(cluster)` and a restart; return the load and the moments that matter."""
        name = f"FAULT {fault.__name__}{' keyed' if keyed else ''}"
        self.create_coupon(self.service, name, STOCK)
        workers = self.service.workers()
        groups_before = self.service.claim_groups()

        with ClaimLoad(self.service, name, keyed=keyed) as load:
            load.wait_until(lambda: len(load.answered_since(0, 201)) >= SUCCESSES_BEFORE_THE_FAULT, "claims to flow")
            fault(self.cluster)
            fault_at = time.monotonic()
            load.wait_until(
                lambda: (
                    len(load.answered_since(fault_at, 503)) >= UNAVAILABLE_ANSWERS_DURING_THE_FAULT
                    and time.monotonic() - fault_at >= OUTAGE_SECONDS
                ),
                "the crowd to see the database gone",
            )
            health_while_down = self.service.request("GET", "/health")
            restart_at = time.monotonic()
            self.cluster.start()  # returns once the server accepts connections, crash recovery done
            back_at = time.monotonic()
            healthy_at = wait_for_status(self.service, "/health", 200)
            load.wait_until(
                lambda: len(load.answered_since(back_at, 201)) >= SUCCESSES_AFTER_RECOVERY, "claims to flow again"
            )

        self.assertIsNone(self.service.process.poll(), "the server is still running")
        self.assertEqual(self.service.workers(), workers, "no worker was restarted")
        self.assertEqual(health_while_down.status, 503)
        self.assertEqual(
            health_while_down.body, {"status": "unhealthy", "error": "Database unavailable.", "code": "unavailable"}
        )
        self.assertIn("retry-after", health_while_down.headers)
        first_claim_at = min(at for _, _, at in load.answered_since(back_at, 201))
        recovery = {"health": healthy_at - back_at, "claims": first_claim_at - back_at}
        for what, seconds in recovery.items():
            self.assertLess(seconds, RECOVERY_SECONDS, f"{what} recovered {seconds:.1f} s after the database")
        recovery["database restart"] = back_at - restart_at
        transactions, claims = (
            now - then for now, then in zip(self.service.claim_groups(), groups_before, strict=True)
        )
        self.assertLess(transactions, claims, "claims were granted in groups")
        recovery["claims per transaction"] = claims / transactions
        return name, load, back_at - fault_at, recovery

    def assert_exact_through(self, fault):
        name, load, outage, recovery = self.run_sale_through(fault)

        replies = [reply for _, reply, _ in load.attempts]
        self.assertEqual([reply for reply in replies if reply.status is None], [], "every claim got an answer")
        self.assertEqual({reply.status for reply in replies}, {201, 503})
        for reply in replies:
            self.assertTrue(reply.is_json, reply)
            if reply.status == 503:
                self.assert_unavailable(reply)
        self.assertLess(max(reply.seconds for reply in replies), LONGEST_ANSWER_SECONDS)

        succeeded = {user for user, reply, _ in load.attempts if reply.status == 201}
        unavailable = {user for user, reply, _ in load.attempts if reply.status == 503}
        claimers = set(self.claimers(name))
        self.assertLessEqual(succeeded, claimers, "no claim reported as a success is lost")
        committed_unreported = claimers - succeeded
        self.assertLessEqual(committed_unreported, unavailable, "a claim nobody was told about had a 503")
        self.assertEqual(self.remaining(name), STOCK - len(claimers), "remaining = amount - claims")

        # Every 503 is retried once: 409 exactly where the commit had gone through.
        retried = {user: self.service.claim(user, name).status for user in sorted(unavailable)}
        self.assertEqual({user for user, status in retried.items() if status == 409}, committed_unreported)
        self.assertEqual({user for user, status in retried.items() if status == 201}, unavailable - claimers)
        self.assertEqual(set(self.claimers(name)), succeeded | unavailable)
        self.assertEqual(self.remaining(name), STOCK - len(succeeded | unavailable))

        logger.info(
            "%s: %d claims (%d answered 201, %d answered 503, %d of those had committed); database away %.2f s "
            "(restart %.2f s); /health back %.2f s and claims back %.2f s after the database; slowest answer %.2f s; "
            "%.1f claims per claim transaction",
            fault.__name__,
            len(replies),
            len(succeeded),
            len(unavailable),
            len(committed_unreported),
            outage,
            recovery["database restart"],
            recovery["health"],
            recovery["claims"],
            max(reply.seconds for reply in replies),
            recovery["claims per transaction"],
        )

    def test_crash_with_idempotency_keys_every_retry_gets_its_own_201(self):
        def immediate_shutdown(cluster):
            cluster.stop("immediate")

        name, load, outage, _ = self.run_sale_through(immediate_shutdown, keyed=True)

        succeeded = {user for user, reply, _ in load.attempts if reply.status == 201}
        unavailable = {user for user, reply, _ in load.attempts if reply.status == 503}
        self.assertEqual({reply.status for _, reply, _ in load.attempts}, {201, 503})
        claimers = set(self.claimers(name))
        committed_unreported = claimers - succeeded
        # Every 503 retried with its key until it is answered: always the claim's own 201 (replayed where the
        # commit had gone through), never 409 already_claimed.
        retried = {}
        for user in sorted(unavailable):
            deadline = time.monotonic() + WAIT_SECONDS
            while True:
                reply = self.service.claim(user, name, idempotency_key=idempotency_key(user))
                if reply.status != 503 and reply.body.get("code") != "idempotency_key_in_use":
                    break
                self.assertLess(time.monotonic(), deadline, f"{user}'s key never settled: {reply}")
                time.sleep(0.2)
            retried[user] = reply
        self.assertEqual({user: reply.status for user, reply in retried.items()}, dict.fromkeys(unavailable, 201))
        replayed = {user for user, reply in retried.items() if reply.headers.get("idempotent-replayed") == "true"}
        self.assertEqual(replayed, committed_unreported, "replayed exactly where the commit had gone through")
        # Each 201, replayed or not, carries the code of the claim the database holds for its user.
        self.assertEqual(
            {user: reply.body["code"] for user, reply in retried.items()},
            {user: self.live_code(name, user) for user in retried},
        )
        self.assertEqual(set(self.claimers(name)), succeeded | unavailable)
        self.assertEqual(self.remaining(name), STOCK - len(succeeded | unavailable))
        logger.info(
            "crash with idempotency keys: %d answered 503, %d of those had committed and were replayed as 201, "
            "database away %.2f s",
            len(unavailable),
            len(committed_unreported),
            outage,
        )

    def test_clean_shutdown(self):
        def fast_shutdown(cluster):
            cluster.stop("fast")

        self.assert_exact_through(fast_shutdown)

    def test_crash(self):
        def immediate_shutdown(cluster):
            cluster.stop("immediate")

        self.assert_exact_through(immediate_shutdown)

    def test_every_server_process_killed(self):
        def sigkill(cluster):
            cluster.kill()

        self.assert_exact_through(sigkill)
