"""The same two scenarios through real HTTP, against a live multi-threaded server."""

import http.client
import json
from urllib.parse import quote, urlsplit

from django.core.servers.basehttp import ThreadedWSGIServer
from django.test import LiveServerTestCase
from django.test.testcases import LiveServerThread

from coupons.services import create_coupon
from tests.stress.base import REPETITIONS, StressTestCase, run_simultaneously


class RoomyThreadedWSGIServer(ThreadedWSGIServer):
    # Django's default listen backlog (10) would make the kernel drop some of
    # fifty simultaneous connections and retry them a second later.
    request_queue_size = 128


class RoomyLiveServerThread(LiveServerThread):
    server_class = RoomyThreadedWSGIServer


class HttpClient:
    """One keep-alive-free HTTP connection, opened before the start line."""

    def __init__(self, base_url):
        parts = urlsplit(base_url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        self.connection.connect()

    def request(self, method, path, body=None):
        headers = {"Content-Type": "application/json"} if body is not None else {}
        payload = json.dumps(body).encode() if body is not None else None
        try:
            self.connection.request(method, path, body=payload, headers=headers)
            response = self.connection.getresponse()
            return response.status, response.getheader("Content-Type"), json.loads(response.read())
        finally:
            self.connection.close()


STATUS_OUTCOMES = {201: "claimed", 409: "already_claimed", 400: "out_of_stock"}


class LiveStressTestCase(LiveServerTestCase, StressTestCase):
    server_thread_class = RoomyLiveServerThread

    def http_claims(self, requests):
        """Fire (user_id, coupon_name) claims at once; each caller's outcome, from the status code."""
        clients = [HttpClient(self.live_server_url) for _ in requests]

        def claim(client, user_id, coupon_name):
            status, content_type, body = client.request(
                "POST", "/api/coupons/claim", {"user_id": user_id, "coupon_name": coupon_name}
            )
            self.assertEqual(content_type, "application/json")
            if status == 201:
                self.assertEqual(body, {"user_id": user_id, "coupon_name": coupon_name})
            else:
                self.assertEqual(list(body), ["error"])
            return STATUS_OUTCOMES.get(status, f"HTTP {status}")

        calls = [
            lambda client=client, user_id=user_id, name=name: claim(client, user_id, name)
            for client, (user_id, name) in zip(clients, requests, strict=True)
        ]
        return run_simultaneously(calls, connect=False)

    def http_detail(self, name):
        status, _, body = HttpClient(self.live_server_url).request("GET", "/api/coupons/" + quote(name, safe=""))
        self.assertEqual(status, 200)
        return body


class HttpFlashSaleTests(LiveStressTestCase):
    def test_fifty_users_race_for_five_coupons_over_http(self):
        for round_number in range(REPETITIONS):
            with self.subTest(round=round_number):
                name = f"HTTP FLASH/{round_number}"
                create_coupon(name=name, amount=5)
                users = [f"user_{round_number}_{i}" for i in range(50)]

                outcomes = self.http_claims([(user, name) for user in users])

                winners = [user for user, outcome in zip(users, outcomes, strict=True) if outcome == "claimed"]
                self.assert_sale_outcome(
                    name,
                    outcomes=outcomes,
                    expected_counts={"claimed": 5, "out_of_stock": 45},
                    expected_winners=winners,
                )
                detail = self.http_detail(name)
                self.assertEqual(detail["remaining_amount"], 0)
                self.assertEqual(sorted(detail["claimed_by"]), sorted(winners))


class HttpDoubleDipTests(LiveStressTestCase):
    def test_one_user_claims_ten_times_at_once_over_http(self):
        for round_number in range(REPETITIONS):
            with self.subTest(round=round_number):
                name = f"HTTP DIP {round_number}"
                create_coupon(name=name, amount=100)
                user = f"dipper_{round_number}"

                outcomes = self.http_claims([(user, name)] * 10)

                self.assert_sale_outcome(
                    name,
                    outcomes=outcomes,
                    expected_counts={"claimed": 1, "already_claimed": 9},
                    expected_winners=[user],
                )
                detail = self.http_detail(name)
                self.assertEqual((detail["remaining_amount"], detail["claimed_by"]), (99, [user]))
