"""The deployment of deploy/ under failure: app hosts behind HAProxy, Patroni + etcd, quorum commit on three nodes.

One topology (tests/cluster/topology.py) for the whole class, built in
network namespaces and torn down at the end; the tests run in order, each
leaving the deployment whole again. `make test-cluster` runs them (as root;
make test skips them).
"""

import json
import os
import random
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from unittest import skipUnless

from django.test import SimpleTestCase

from tests.cluster.sale import (
    FIGURES,
    KeyedSale,
    Sale,
    claim,
    claim_at_once,
    retry_until_answered,
    retry_until_definite,
)
from tests.cluster.topology import APP_HOSTS, HTTP_PORT, STANDBY_ROLE, WORKERS, Topology, wait_for
from tests.faults.cluster import kill_postmaster_and_backends
from tests.faults.service import request

SALE_CLIENTS = 8
# More than every request slot of the app hosts (2 hosts x 2 workers x 16 threads).
SLOW_CLIENTS = 80
PGBENCH_CLIENTS = 32
PGBENCH_SECONDS = 5


@skipUnless(os.environ.get("CLUSTER_TESTS"), "make test-cluster runs these (as root: namespaces, Patroni, HAProxy)")
class ClusterTests(SimpleTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        started = time.monotonic()
        cls.topology = cls.enterClassContext(Topology(app_workers=2))
        cls.lb = cls.topology.address("lb")
        FIGURES.append(
            f"topology up in {time.monotonic() - started:.1f} s: etcd, pg1 + pg2 + pg3 (Patroni), app1 + app2, lb"
        )

    # Helpers ---------------------------------------------------------------

    def create_coupon(self, name, amount):
        reply = request(self.lb, HTTP_PORT, "POST", "/api/coupons", {"name": name, "amount": amount})
        self.assertEqual(reply.status, 201, reply)

    def rows(self, coupon_name):
        """(amount, remaining_amount, {users holding a live claim}) read on the primary."""
        with self.topology.connect_primary() as connection:
            amount, remaining = connection.execute(
                "SELECT amount, remaining_amount FROM coupons_coupon WHERE name = %s", [coupon_name]
            ).fetchone()
            users = connection.execute(
                "SELECT claim.user_id FROM coupons_claim claim"
                " JOIN coupons_coupon coupon ON coupon.id = claim.coupon_id"
                " WHERE coupon.name = %s AND claim.status IN ('held', 'redeemed')",
                [coupon_name],
            ).fetchall()
        return amount, remaining, {user for (user,) in users}

    @staticmethod
    def statuses(answers):
        return dict(Counter(answer.status for answer in answers))

    def assert_flash_sale(self, name, stock=50, crowd=200):
        """`crowd` users at once for `stock` units: exactly `stock` 201s and rows, the rest 400, on both hosts."""
        self.create_coupon(name, stock)
        served_before = self.topology.requests_served()
        answers = claim_at_once(self.lb, HTTP_PORT, [(f"{name}-user-{i}", name) for i in range(crowd)])
        served = {host: n - served_before[host] for host, n in self.topology.requests_served().items()}

        self.assertEqual(self.statuses(answers), {201: stock, 400: crowd - stock})
        amount, remaining, claimers = self.rows(name)
        self.assertEqual(claimers, {a.user_id for a in answers if a.status == 201})
        self.assertEqual((amount, remaining), (stock, 0))
        self.assertTrue(all(served.values()), f"HAProxy spread the sale: {served}")
        return served

    def assert_answers_match_rows(self, name, answers):
        """Retry every claim that got no answer; then the rows are exactly the users told 201 or, on retry, 409.

        Returns (users told 201, rows, retry statuses) for the figures.
        """
        unanswered = [a for a in answers if a.status not in {201, 400}]
        retried = retry_until_answered(self.lb, HTTP_PORT, unanswered, name)
        self.assertLessEqual(set(retried.values()), {201, 400, 409}, retried)
        told_201 = {a.user_id for a in answers if a.status == 201} | {u for u, s in retried.items() if s == 201}
        committed_unanswered = {u for u, s in retried.items() if s == 409}

        amount, remaining, claimers = self.rows(name)
        self.assertLessEqual(told_201, claimers, "a claim answered 201 is missing")
        self.assertEqual(claimers, told_201 | committed_unanswered, "a claim row nobody was told about")
        self.assertEqual(remaining, amount - len(claimers), "stock arithmetic")
        self.assertGreaterEqual(remaining, 0)
        return told_201, claimers, retried

    # Scenarios -------------------------------------------------------------

    def test_1_flash_sale_through_the_load_balancer(self):
        served = self.assert_flash_sale("cluster-flash")
        # Prometheus scrapes the app hosts directly; HAProxy keeps /metrics private.
        self.assertEqual(request(self.lb, HTTP_PORT, "GET", "/metrics").status, 403)
        self.assertEqual(self.topology.app_hosts["app1"].request("GET", "/metrics").status, 200)
        FIGURES.append(f"flash sale, 200 users for 50 units: 50 × 201, 150 × 400, 50 rows; served by {served}")

    def test_2_double_dip_through_the_load_balancer(self):
        name, users, attempts = "cluster-double-dip", 30, 4
        self.create_coupon(name, 1000)
        claims = [(f"{name}-user-{i % users}", name) for i in range(users * attempts)]

        answers = claim_at_once(self.lb, HTTP_PORT, claims)

        self.assertEqual(self.statuses(answers), {201: users, 409: users * (attempts - 1)})
        amount, remaining, claimers = self.rows(name)
        self.assertEqual(claimers, {user for user, _ in claims})
        self.assertEqual(remaining, amount - users)
        FIGURES.append(f"double dip, {users} users × {attempts} at once: {users} × 201, {users * 3} × 409")

    def request_slots(self):
        topology = self.topology
        return len(APP_HOSTS) * topology.app_workers * topology.app_threads

    def test_3_slow_clients_do_not_hold_the_app_hosts(self):
        """More slow clients than app-host request slots (workers x threads), each stuck mid-body: HAProxy holds
        them, claims go on."""
        name = "cluster-slow-clients"
        self.create_coupon(name, 100)
        slow = []
        for i in range(SLOW_CLIENTS):
            sock = socket.create_connection((self.lb, HTTP_PORT), timeout=5)
            self.addCleanup(sock.close)
            body = json.dumps({"user_id": f"slow-{i}", "coupon_name": name}).encode()
            head = f"POST /api/coupons/claim HTTP/1.1\r\nHost: {self.lb}\r\nContent-Type: application/json\r\n"
            sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[:5])  # the rest never comes
            slow.append(sock)

        answers = [claim(self.lb, HTTP_PORT, f"{name}-user-{i}", name) for i in range(10)]

        self.assertEqual([a.status for a in answers], [201] * 10)
        slowest = max(a.answered - a.sent for a in answers)
        self.assertLess(slowest, 5, "a claim waited for the slow clients")
        for sock in slow:  # HAProxy gives up on them itself (timeout http-request: 10 s), with a 408
            sock.settimeout(15)
            self.assertIn(b" 408 ", sock.recv(200))
        amount, remaining, claimers = self.rows(name)
        self.assertEqual(claimers, {a.user_id for a in answers})
        FIGURES.append(
            f"slow clients: {SLOW_CLIENTS} requests stuck mid-body (app hosts have {self.request_slots()} request slots"
            " in all): 10 claims"
            f" answered 201 meanwhile, slowest {slowest * 1000:.0f} ms; the slow ones got HAProxy's 408"
        )

    def test_4_an_app_host_killed_mid_sale(self):
        name = "cluster-app-host-kill"
        self.create_coupon(name, 100_000)
        with Sale(self.lb, HTTP_PORT, name, SALE_CLIENTS) as sale:
            wait_for(lambda: sale.count(201) >= 100, 60, "the sale under way")
            self.topology.kill_host("app1")  # returns once every process of it is gone
            dead = time.monotonic()
            wait_for(lambda: sale.count(201, sent_after=dead) >= 200, 60, "claims going on without app1")
        answers = sale.snapshot()
        failed = [a for a in answers if a.status != 201]

        # Only the requests app1 was serving when it died fail; every later one is answered.
        late = [(a.status, round(a.sent - dead, 2)) for a in failed if a.sent >= dead]
        self.assertLessEqual(len(failed), SALE_CLIENTS, f"{self.statuses(failed)}; sent after the kill: {late}")
        self.assertFalse(late, "sent after the kill and failed (status, seconds after)")
        told_201, claimers, retried = self.assert_answers_match_rows(name, answers)

        self.topology.start_app_host("app1")
        self.topology.wait_until_in_rotation("app1")
        FIGURES.append(
            f"app host app1 SIGKILLed mid-sale: {len(answers)} claims, {len(failed)} failed (all in flight on app1:"
            f" {self.statuses(failed)}); their retries: {dict(Counter(retried.values()))}; {len(told_201)} told 201,"
            f" {len(claimers)} rows"
        )

    def test_5_primary_killed_mid_sale(self):
        def kill(host):
            kill_postmaster_and_backends(self.topology.directory / host / "data")

        self.assert_failover("cluster-primary-kill", "postmaster SIGKILLed", kill, restore=lambda host: None)

    def test_6_primary_cut_off_mid_sale(self):
        self.assert_failover(
            "cluster-primary-cut", "network cut", self.topology.network.cut, restore=self.topology.network.reconnect
        )

    def test_7_database_ceilings_with_a_synchronous_standby(self):
        """Measured, not asserted: pgbench's claim transaction on the primary, one hot coupon vs 100 coupons."""
        from bench.capacity import spread_transaction
        from bench.flashsale import classic_transaction, run_pgbench

        for i in range(100):
            self.create_coupon(f"cluster-pgbench-{i}", 2**31 - 1)
        with self.topology.connect_primary() as connection:
            ids = [pk for (pk,) in connection.execute(
                "SELECT id FROM coupons_coupon WHERE name LIKE 'cluster-pgbench-%%' ORDER BY id"
            )]  # fmt: skip
        self.assertEqual(ids[-1] - ids[0], 99)
        url = self.topology.database_url(self.topology.address(self.topology.primary()), port=5432)
        ceilings = {
            label: run_pgbench(url, script, clients=PGBENCH_CLIENTS, duration=PGBENCH_SECONDS, tick=lambda: None)[0]
            for label, script in [
                ("one hot coupon", classic_transaction(ids[0])),
                ("100 coupons", spread_transaction(ids[0], ids[-1])),
            ]
        }
        self.assertTrue(all(ceilings.values()))
        FIGURES.append(
            f"database ceiling under quorum commit (pgbench, {PGBENCH_CLIENTS} clients, {PGBENCH_SECONDS} s): "
            + "; ".join(f"{label} {tps:.0f} claims/s" for label, tps in ceilings.items())
        )

    def test_8_redemptions_and_expiries_through_a_failover(self):
        """Claims with 3 s holds; two thirds of the users redeem, some before, some after the deadline, while the
        primary's PostgreSQL is SIGKILLed and the standby promoted; each app host's expiry worker carries on."""
        name, users, hold = "cluster-holds", 300, 3
        coupon = {"name": name, "amount": users, "hold_seconds": hold}
        reply = request(self.lb, HTTP_PORT, "POST", "/api/coupons", coupon)
        self.assertEqual(reply.status, 201, reply)
        rng = random.Random(14)
        # Who redeems, and how long after their claim: some before the deadline, some after.
        plan = {user: rng.uniform(0.2, hold + 1.0) for user in range(users) if rng.random() < 2 / 3}
        claimed = []

        def shop(user):
            code = self.claim_a_code(name, user)
            claimed.append(user)
            if user not in plan:
                return user, None
            time.sleep(plan[user])
            body = {"code": code, "order_id": f"order-{user}"}
            return user, retry_until_definite(self.lb, "POST", "/api/redemptions", body, {201, 409, 410})

        old_primary = self.topology.primary()
        with ThreadPoolExecutor(max_workers=64) as pool:
            outcomes = pool.map(shop, range(users))
            wait_for(lambda: len(claimed) >= users // 3, 60, "a third of the claims")
            kill_postmaster_and_backends(self.topology.directory / old_primary / "data")  # amid claims and redemptions
            answers = {user: reply for user, reply in outcomes if reply is not None}
        self.topology.wait_until_healthy()
        self.assertNotEqual(self.topology.primary(), old_primary)

        def every_hold_ended():
            with self.topology.connect_primary() as connection:
                return not connection.execute(
                    "SELECT 1 FROM coupons_claim u JOIN coupons_coupon c ON c.id = u.coupon_id"
                    " WHERE c.name = %s AND u.status = 'held'",
                    [name],
                ).fetchone()

        wait_for(every_hold_ended, 60, "every hold past its deadline expired")
        rows, amount, remaining = self.claim_rows(name)
        told = Counter()
        for user, reply in answers.items():
            status, order_id = rows[str(user)][:2]
            own_order = reply.status == 409 and reply.body.get("order_id") == f"order-{user}"
            acknowledged = reply.status == 201 or own_order
            told["redeemed" if acknowledged else reply.status] += 1
            if acknowledged:
                self.assertEqual((status, order_id), ("redeemed", f"order-{user}"), f"{user}'s acknowledged redemption")
            else:
                self.assertEqual((reply.status, reply.body["code"], status), (410, "claim_expired", "expired"), user)
        redeemed = {user for user, row in rows.items() if row[0] == "redeemed"}
        self.assertEqual(len(rows), users)
        self.assertLessEqual(redeemed, {str(user) for user in plan}, "a redemption nobody asked for")
        self.assertEqual({row[0] for row in rows.values()}, {"redeemed", "expired"})
        for status, _, redeemed_at, expires_at, returned_at in rows.values():
            if status == "redeemed":
                self.assertLess(redeemed_at, expires_at)
            else:
                self.assertGreaterEqual(returned_at, expires_at)
        self.assertEqual(remaining, amount - len(redeemed), "each expired unit returned once")
        workers = {host: self.topology.processes[f"{host}-{w}"].poll() for host in APP_HOSTS for w in WORKERS}
        self.assertEqual(set(workers.values()), {None}, "the workers carried on through the failover")
        FIGURES.append(
            f"redemptions through a failover: {users} claims with {hold} s holds, {len(plan)} redemptions asked;"
            f" the primary's PostgreSQL SIGKILLed amid claims and redemptions: {dict(told)}; every acknowledged"
            f" redemption on the new primary, {len(rows) - len(redeemed)} units expired back to stock once each"
        )

    def test_9_keyed_claims_get_their_own_201_through_a_failover(self):
        """Every claim sent with an Idempotency-Key and resent with it until a final answer, while the primary's
        PostgreSQL is SIGKILLed: each claim that committed answers its own 201 (replayed where the first answer was
        lost), never 409; the outbox holds one claim.granted per row, numbered without a gap."""
        name, stock = "cluster-keyed", 1500
        self.create_coupon(name, stock)
        old_primary = self.topology.primary()
        with KeyedSale(self.lb, HTTP_PORT, name, SALE_CLIENTS) as sale:
            wait_for(lambda: sum(a.status == 201 for a in sale.attempts) >= stock // 5, 60, "the sale under way")
            failed_at = time.monotonic()
            kill_postmaster_and_backends(self.topology.directory / old_primary / "data")
            wait_for(sale.sold_out, 180, "the sale to sell out")
        self.assertNotEqual(self.topology.primary(), old_primary)
        attempts = {}
        for attempt in sorted(sale.attempts, key=lambda a: a.sent):
            attempts.setdefault(attempt.user_id, []).append(attempt)
        with self.topology.connect_primary() as connection:
            rows = dict(connection.execute(
                "SELECT u.user_id, u.code FROM coupons_claim u JOIN coupons_coupon c ON c.id = u.coupon_id"
                " WHERE c.name = %s AND u.status IN ('held', 'redeemed')", [name],
            ).fetchall())  # fmt: skip
            remaining = connection.execute("SELECT remaining_amount FROM coupons_coupon WHERE name = %s", [name])
            remaining = remaining.fetchone()[0]
            events = connection.execute(
                "SELECT type, sequence, data ->> 'user_id' FROM coupons_event WHERE coupon_name = %s ORDER BY sequence",
                [name],
            ).fetchall()

        finals = {user: tries[-1] for user, tries in attempts.items()}
        for user in rows:
            final = finals[user]
            self.assertEqual(final.status, 201, f"{user} holds the coupon: its own 201, never 409 ({attempts[user]})")
            self.assertEqual(final.claim_code.replace("-", ""), rows[user], f"{user}'s 201 carries its row's code")
        for user, final in finals.items():
            self.assertIn(final.status, {201, 400}, attempts[user])
            if final.status == 400:
                self.assertNotIn(user, rows)
        replayed = [tries for tries in attempts.values() if tries[-1].replayed]
        for tries in replayed:  # a replay answers a request whose first answer was lost
            self.assertTrue(any(a.status not in KeyedSale.FINAL for a in tries[:-1]), tries)
        self.assertEqual(remaining, stock - len(rows))
        self.assertEqual(len(rows), stock, "sold out exactly")
        self.assertEqual([sequence for _, sequence, _ in events], list(range(1, len(events) + 1)), "gap-free")
        granted = [user for kind, _, user in events if kind == "claim.granted"]
        self.assertEqual(sorted(granted), sorted(rows), "one claim.granted per claim row")
        self.assertEqual([kind for kind, _, _ in events].count("coupon.sold_out"), 1)
        failed = Counter(f"{a.status} {a.code or ''}".strip() for a in sale.attempts if a.status != 201)
        first = min(a.answered for a in sale.attempts if a.status == 201 and a.sent > failed_at) - failed_at
        FIGURES.append(
            f"keyed claims through a failover ({old_primary}'s PostgreSQL SIGKILLed): {len(rows)} claims committed,"
            f" each answered its own 201 ({len(replayed)} of them replayed after a lost answer), no 409;"
            f" other answers: {dict(failed)}; {len(events)} events, gap-free, one claim.granted each;"
            f" first 201 {first:.1f} s after the kill"
        )

    def test_10_admission_tokens_through_a_failover(self):
        """A queued coupon (fair admission): 300 users enter through the load balancer, the admission worker of
        each app host admits them, and each admitted user claims with its token (sent to whichever app host the
        load balancer picks) while the primary's PostgreSQL is SIGKILLed. Every claim on the new primary spent its
        user's entry, no token granted two units, and a token replayed after its claim is refused."""
        name, users, stock = "cluster-queue", 300, 200
        reply = request(
            self.lb, HTTP_PORT, "POST", "/api/coupons", {"name": name, "amount": stock, "admission": "queue"}
        )
        self.assertEqual(reply.status, 201, reply)
        for user in range(users):
            entered = retry_until_definite(self.lb, "POST", f"/api/coupons/{name}/entries", {"user_id": f"q{user}"})
            self.assertIn(entered.status, (201, 409), entered)  # 409: a retried entry whose answer was lost
        tokens, claimed = {}, []

        def shop(user):
            user_id = f"q{user}"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                standing = request(self.lb, HTTP_PORT, "GET", f"/api/coupons/{name}/entries/{user_id}", timeout=15)
                if standing.status == 200 and standing.body["status"] == "admitted":
                    tokens[user_id] = standing.body["admission_token"]
                    body = {"user_id": user_id, "coupon_name": name, "admission_token": tokens[user_id]}
                    answer = retry_until_definite(self.lb, "POST", "/api/coupons/claim", body, {201, 400, 403, 409})
                    claimed.append(user_id)
                    return user_id, answer
                if standing.status == 200 and standing.body["status"] in ("sold_out", "expired", "claimed"):
                    return user_id, standing
                time.sleep(0.5)
            return user_id, None

        old_primary = self.topology.primary()
        with ThreadPoolExecutor(max_workers=64) as pool:
            outcomes = pool.map(shop, range(users))
            wait_for(lambda: len(claimed) >= stock // 4, 120, "a quarter of the claims")
            kill_postmaster_and_backends(self.topology.directory / old_primary / "data")
            answers = dict(outcomes)
        self.topology.wait_until_healthy()
        self.assertNotEqual(self.topology.primary(), old_primary)
        with self.topology.connect_primary() as connection:
            rows = connection.execute(
                "SELECT u.user_id, u.id, e.user_id, e.status FROM coupons_claim u"
                " JOIN coupons_coupon c ON c.id = u.coupon_id LEFT JOIN admission_entry e ON e.claim_id = u.id"
                " WHERE c.name = %s AND u.status IN ('held', 'redeemed')",
                [name],
            ).fetchall()
            remaining = connection.execute("SELECT remaining_amount FROM coupons_coupon WHERE name = %s", [name])
            remaining = remaining.fetchone()[0]
        self.assertEqual(remaining, stock - len(rows))
        for claimant, _, entrant, status in rows:
            self.assertEqual((entrant, status), (claimant, "claimed"), "each claim spent its own user's entry")
        self.assertEqual(len({claimant for claimant, *_ in rows}), len(rows))
        for user_id, answer in answers.items():
            if answer is not None and answer.status == 201:
                self.assertIn(user_id, {claimant for claimant, *_ in rows}, f"{user_id}'s acknowledged claim")
        # A token used again (its claim released meanwhile: the user may claim again) is spent: refused.
        replayed = next(user for user, *_ in rows)
        with self.topology.connect_primary() as connection:
            connection.execute(
                "UPDATE coupons_claim SET status = 'released', returned_at = now() WHERE user_id = %s", [replayed]
            )
            connection.execute(
                "UPDATE coupons_coupon SET remaining_amount = remaining_amount + 1 WHERE name = %s", [name]
            )
        body = {"user_id": replayed, "coupon_name": name, "admission_token": tokens[replayed]}
        again = retry_until_definite(self.lb, "POST", "/api/coupons/claim", body, {201, 400, 403, 409})
        self.assertEqual((again.status, again.body["code"]), (403, "admission_invalid"))
        FIGURES.append(
            f"admission tokens through a failover: {users} entrants, {len(rows)} claims committed, each spending its"
            f" own user's entry; a spent token replayed: 403 admission_invalid"
        )

    def test_11_campaign_caps_through_a_failover(self):
        """A campaign of 3 coupons (150 units each) with max_claims 200 and max_claims_per_user 1: 400 users each
        try all 3 coupons through the load balancer, retrying whatever got no definite answer, while the primary's
        PostgreSQL is SIGKILLed. On the new primary: exactly 200 live claims, nobody holds 2, the campaign's
        counter says 200, and every 201 is among them."""
        campaign, users, cap = "cluster-campaign", 400, 200
        coupons = [f"{campaign}-{i}" for i in range(3)]
        body = {"name": campaign, "max_claims": cap, "max_claims_per_user": 1}
        reply = request(self.lb, HTTP_PORT, "POST", "/api/campaigns", body)
        self.assertEqual(reply.status, 201, reply)
        for name in coupons:
            reply = request(
                self.lb, HTTP_PORT, "POST", "/api/coupons", {"name": name, "amount": 150, "campaign": campaign}
            )
            self.assertEqual(reply.status, 201, reply)
        granted = []

        def shop(user):
            user_id = f"camp-{user}"
            answers = []
            for name in coupons[user % 3 :] + coupons[: user % 3]:  # every user tries all 3, not in one order
                body = {"user_id": user_id, "coupon_name": name}
                answer = retry_until_definite(self.lb, "POST", "/api/coupons/claim", body, timeout=120)
                answers.append((name, answer.status, (answer.body or {}).get("code")))
                if answer.status == 201:
                    granted.append(time.monotonic())
            return user_id, answers

        old_primary = self.topology.primary()
        with ThreadPoolExecutor(max_workers=32) as pool:
            outcomes = pool.map(shop, range(users))
            wait_for(lambda: len(granted) >= cap // 4, 120, "a quarter of the campaign claimed")
            killed = time.monotonic()
            kill_postmaster_and_backends(self.topology.directory / old_primary / "data")
            answers = dict(outcomes)
        self.topology.wait_until_healthy()
        self.assertNotEqual(self.topology.primary(), old_primary)
        after_kill = sum(1 for answered in granted if answered > killed)
        self.assertGreater(after_kill, 0, "claims granted on the new primary: the sale went through the failover")
        with self.topology.connect_primary() as connection:
            rows = connection.execute(
                "SELECT u.user_id, c.name FROM coupons_claim u JOIN coupons_coupon c ON c.id = u.coupon_id"
                " WHERE c.name = ANY(%s) AND u.status IN ('held', 'redeemed')",
                [coupons],
            ).fetchall()
            (taken,) = connection.execute("SELECT taken FROM campaigns_campaign WHERE name = %s", [campaign]).fetchone()
        holders = Counter(user for user, _ in rows)
        self.assertEqual((len(rows), taken), (cap, cap), "max_claims: exactly, counter and rows alike")
        self.assertEqual(max(holders.values()), 1, "max_claims_per_user: nobody holds two")
        told_201 = {(user, name) for user, tries in answers.items() for name, status, _ in tries if status == 201}
        self.assertLessEqual(told_201, set(rows), "a claim answered 201 is missing")
        # A claim whose 201 was lost in the failover answers its retry 409 already_claimed: told so all the same.
        lost = {(user, name) for user, tries in answers.items() for name, _, code in tries if code == "already_claimed"}
        self.assertLessEqual(set(rows) - told_201, lost, "a claim row nobody was told about")
        tries = [(status, code) for tried in answers.values() for _, status, code in tried if status != 201]
        refusals = Counter(f"{status} {code}" for status, code in tries)
        self.assertLessEqual(
            set(refusals),
            {"400 campaign_exhausted", "400 out_of_stock", "409 campaign_limit_reached", "409 already_claimed"},
        )
        FIGURES.append(
            f"campaign sale through a failover ({old_primary}'s PostgreSQL SIGKILLed): {users} users x 3 coupons,"
            f" {len(rows)} claims = max_claims {cap}, counter {taken}, nobody holding 2; {len(told_201)} told 201"
            f" ({after_kill} after the kill); refusals {dict(refusals)}"
        )

    def claim_a_code(self, name, user):
        """Claim until the answer is definite; the code, from the 201 or, if the 201 was lost, the user's claims."""
        reply = retry_until_definite(self.lb, "POST", "/api/coupons/claim", {"user_id": str(user), "coupon_name": name})
        if reply.status == 201:
            return reply.body["code"]
        self.assertEqual(reply.status, 409, reply)
        claims = retry_until_definite(self.lb, "GET", f"/api/users/{user}/claims", None, {200})
        return claims.body["claims"][0]["code"]

    def claim_rows(self, coupon_name):
        """{user: (status, order_id, redeemed_at, expires_at, returned_at)}, amount, remaining, on the primary."""
        with self.topology.connect_primary() as connection:
            amount, remaining = connection.execute(
                "SELECT amount, remaining_amount FROM coupons_coupon WHERE name = %s", [coupon_name]
            ).fetchone()
            rows = {
                user: row
                for user, *row in connection.execute(
                    "SELECT u.user_id, u.status, u.order_id, u.redeemed_at, u.expires_at, u.returned_at"
                    " FROM coupons_claim u JOIN coupons_coupon c ON c.id = u.coupon_id WHERE c.name = %s",
                    [coupon_name],
                )
            }
        return rows, amount, remaining

    def assert_failover(self, name, how, fail, restore, stock=1500):
        """Fail the primary mid-sale; the standby takes over; every 201 is there; the old primary comes back."""
        old_primary = self.topology.primary()
        self.create_coupon(name, stock)
        with Sale(self.lb, HTTP_PORT, name, SALE_CLIENTS) as sale:
            wait_for(lambda: sale.count(201) >= stock // 5, 60, "the sale under way")
            failed_at = time.monotonic()
            fail(old_primary)
            first = wait_for(lambda: sale.first(201, sent_after=failed_at), 120, "a claim answered 201 again")
            wait_for(sale.sold_out, 120, "the sale to sell out")
        answers = sale.snapshot()
        new_primary = self.topology.primary()
        self.assertNotEqual(new_primary, old_primary)

        told_201, claimers, retried = self.assert_answers_match_rows(name, answers)
        self.assertEqual(len(claimers), stock, "sold out exactly: nothing oversold, nothing left")

        restore(old_primary)
        members = self.topology.wait_until_replicated()
        rejoined = time.monotonic() - failed_at
        self.assertEqual(members[old_primary]["role"], STANDBY_ROLE)
        served = self.assert_flash_sale(f"{name}-after")

        failed = [a for a in answers if a.status != 201 and a.status != 400]
        FIGURES.append(
            f"primary {old_primary} {how} mid-sale: {new_primary} promoted; first 201 again"
            f" {first.answered - failed_at:.1f} s after; {len(told_201)} claims told 201, {len(claimers)} rows"
            f" found (all 201s present), stock {stock} sold exactly; {len(failed)} failed meanwhile"
            f" {self.statuses(failed)}, retried: {dict(Counter(retried.values()))};"
            f" {old_primary} quorum standby again {rejoined:.1f} s after the failure;"
            f" next flash sale exact (served by {served})"
        )
