"""A claim whose commit succeeded but whose answer was lost is safe to retry.

Lost between the database and the service (the database commits, the
service's connection dies before the answer arrives: the service answers 503)
or between the service and the client (the client hangs up before reading
its 201): either way the retry gets 409, never a second unit; sent with an
Idempotency-Key, the retry gets the claim's own 201 again. The same holds
for a redemption sent with a key. (A request whose client hung up before
the server handed it to the application may also never run at all: granian
drops it. The retry is then the claim.)
"""

import json
import socket
import time

from tests.faults.base import FaultTestCase, logger
from tests.faults.proxy import CommitAnswerThief
from tests.faults.service import Service

ROUNDS = 5
WAIT_SECONDS = 30
# Ample for a claim on an idle service to commit; a claim not committed by then was dropped unrun.
SETTLE_SECONDS = 3


class LostAnswerTests(FaultTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.thief = cls.enterClassContext(CommitAnswerThief(cls.cluster.port))
        # No encryption negotiation: the proxy reads the plain protocol.
        url = f"postgres://postgres@127.0.0.1:{cls.thief.port}/coupons?sslmode=disable&gssencmode=disable"
        cls.service = cls.enterClassContext(Service(url))

    def assert_one_claim_each(self, name, users, stock):
        self.assertEqual(self.claimers(name), sorted(users))
        self.assertEqual(self.remaining(name), stock - len(users))

    def test_the_database_commits_but_the_service_never_hears_back(self):
        name = "LOST COMMIT ANSWER"
        self.create_coupon(self.service, name, 2 * ROUNDS)
        users = []
        for round_number in range(ROUNDS):
            with self.subTest(round=round_number):
                user = f"user_{round_number}"
                lost_before = self.thief.answers_lost
                self.thief.lose_next_commit_answer()

                reply = self.service.claim(user, name)

                self.assertEqual(self.thief.answers_lost, lost_before + 1, "the COMMIT's answer was lost")
                self.assert_unavailable(reply)  # the service cannot know: it says "retry"
                users.append(user)
                self.assert_one_claim_each(name, users, 2 * ROUNDS)  # yet the claim is committed

                retry = self.service.claim(user, name)

                self.assertEqual(retry.status, 409, retry)
                self.assert_one_claim_each(name, users, 2 * ROUNDS)
        self.assertEqual(self.service.claim("someone_else", name).status, 201)
        logger.info("commit answers lost between the database and the service: %d", self.thief.answers_lost)

    def test_with_an_idempotency_key_the_retry_gets_the_201_the_commit_answered(self):
        name = "LOST COMMIT ANSWER, KEYED"
        self.create_coupon(self.service, name, 2 * ROUNDS)
        users = []
        for round_number in range(ROUNDS):
            with self.subTest(round=round_number):
                user, key = f"user_{round_number}", f"key-{round_number}"
                self.thief.lose_next_commit_answer()

                reply = self.service.claim(user, name, idempotency_key=key)

                self.assert_unavailable(reply)
                users.append(user)
                self.assert_one_claim_each(name, users, 2 * ROUNDS)  # committed, with its answer

                retry = self.service.claim(user, name, idempotency_key=key)

                self.assertEqual(retry.status, 201, retry)
                granted = {"user_id": user, "coupon_name": name, "code": self.live_code(name, user)}
                # The claim's own code: its answer was stored with it.
                self.assertEqual(retry.body, {**granted, "status": "held", "expires_at": None})
                self.assertEqual(retry.headers.get("idempotent-replayed"), "true")
                self.assert_one_claim_each(name, users, 2 * ROUNDS)

    def test_with_an_idempotency_key_a_redemption_whose_commit_answer_was_lost_gets_its_201(self):
        name = "LOST REDEMPTION ANSWER, KEYED"
        self.create_coupon(self.service, name, ROUNDS)
        for round_number in range(ROUNDS):
            with self.subTest(round=round_number):
                user, key = f"user_{round_number}", f"redeem-key-{round_number}"
                self.assertEqual(self.service.claim(user, name).status, 201)
                body = {"code": self.live_code(name, user), "order_id": f"order-{round_number}"}
                self.thief.lose_next_commit_answer()

                reply = self.service.request("POST", "/api/redemptions", body, headers={"Idempotency-Key": key})

                self.assert_unavailable(reply)
                self.assertEqual(self.redemption_of(name, user), ("redeemed", body["order_id"]))  # committed

                retry = self.service.request("POST", "/api/redemptions", body, headers={"Idempotency-Key": key})

                self.assertEqual(retry.status, 201, retry)  # its own 201, not a 409 already_redeemed
                self.assertEqual(retry.headers.get("idempotent-replayed"), "true")
                self.assertEqual(
                    {field: retry.body[field] for field in ("coupon_name", "user_id", "code", "status", "order_id")},
                    {"coupon_name": name, "user_id": user, **body, "status": "redeemed"},
                )
                self.assertEqual(self.redemption_of(name, user), ("redeemed", body["order_id"]))

    def redemption_of(self, coupon_name, user_id):
        """(status, order_id) of the user's claim of the coupon, read straight from the database."""
        with self.cluster.connect() as connection:
            return connection.execute(
                "SELECT claim.status, claim.order_id FROM coupons_claim claim"
                " JOIN coupons_coupon coupon ON coupon.id = claim.coupon_id"
                " WHERE coupon.name = %s AND claim.user_id = %s",
                [coupon_name, user_id],
            ).fetchone()

    def test_the_client_hangs_up_before_reading_its_answer(self):
        name = "LOST HTTP ANSWER"
        self.create_coupon(self.service, name, 2 * ROUNDS)
        users, dropped = [], 0
        for round_number in range(ROUNDS):
            with self.subTest(round=round_number):
                user = f"user_{round_number}"
                body = json.dumps({"user_id": user, "coupon_name": name}).encode()
                with socket.create_connection(("127.0.0.1", self.service.port)) as client:
                    client.sendall(
                        b"POST /api/coupons/claim HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                    )
                # Hung up unanswered: the service either carries on and commits, or drops the request unrun.
                deadline = time.monotonic() + SETTLE_SECONDS
                while user not in self.claimers(name) and time.monotonic() < deadline:
                    time.sleep(0.05)
                committed = user in self.claimers(name)
                dropped += not committed

                retry = self.service.claim(user, name)

                self.assertIn(retry.status, {409} if committed else {201, 409}, retry)
                users.append(user)
                self.assert_one_claim_each(name, users, 2 * ROUNDS)
        logger.info("HTTP answers abandoned by the client: %d, of which %d requests dropped unrun", ROUNDS, dropped)
