"""The stress scenarios through real HTTP: against a live multi-threaded server, and against the shipped server.

Every request is its own TCP connection, opened before the start line; the
server answers each on its own thread with its own database connection, so
the claims of one coupon meet in the server's claim groups
(coupons/claim_groups.py).
"""

import http.client
import json
import time
from urllib.parse import quote, urlsplit

from django.contrib.auth import get_user_model
from django.core.servers.basehttp import ThreadedWSGIServer
from django.db import connection
from django.test.testcases import LiveServerThread
from hypothesis.extra.django import LiveServerTestCase, TransactionTestCase
from rest_framework.authtoken.models import Token

from tests.faults.service import Service
from tests.helpers import subprocess_database_url
from tests.stress.base import StressScenarios, run_simultaneously

# A refusal's outcome is its error code, which must come with its status.
REFUSAL_STATUS = {
    "already_claimed": 409,
    "sale_not_started": 403,
    "sale_ended": 403,
    "out_of_stock": 400,
    "not_found": 404,
    "claim_not_found": 404,
}


class HttpClaims:
    """Mixed into a StressScenarios test case: claims over HTTP to `server_address` ((host, port))."""

    server_address = None

    def open_connection(self):
        connection = http.client.HTTPConnection(*self.server_address, timeout=60)
        connection.connect()
        return connection

    def send(self, connection, method, path, body=None, headers=None):
        headers = {**({"Content-Type": "application/json"} if body is not None else {}), **(headers or {})}
        try:
            connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            response = connection.getresponse()
            content = response.read()
            if response.status == 204:
                return 204, None
            self.assertEqual(response.getheader("Content-Type"), "application/json")
            return response.status, json.loads(content)
        finally:
            connection.close()

    def refusal(self, status, body):
        self.assertEqual(list(body), ["error", "code"])
        self.assertEqual(status, REFUSAL_STATUS.get(body["code"]), body)
        return body["code"]

    def claim(self, connection, user_id, coupon_name):
        status, body = self.send(
            connection, "POST", "/api/coupons/claim", {"user_id": user_id, "coupon_name": coupon_name}
        )
        if status == 201:
            self.assertEqual(
                (body["user_id"], body["coupon_name"], body["status"], body["expires_at"]),
                (user_id, coupon_name, "held", None),
            )
            self.assertRegex(body["code"], r"^[0-9A-Z]{4}(-[0-9A-Z]{4}){3}$")
            return "claimed"
        return self.refusal(status, body)

    def release(self, connection, user_id, coupon_name, token):
        path = f"/api/coupons/{quote(coupon_name, safe='')}/claims/{quote(user_id, safe='')}"
        status, body = self.send(connection, "DELETE", path, headers={"Authorization": f"Token {token}"})
        return "released" if status == 204 else self.refusal(status, body)

    def fire(self, connection, action, user_id, coupon_name, *, token):
        if action == "release":
            return self.release(connection, user_id, coupon_name, token)
        return self.claim(connection, user_id, coupon_name)

    def fire_all(self, requests):
        # An operator's token for the releases (the database is emptied after each generated sale).
        operator, _ = get_user_model().objects.get_or_create(username="stress-operator", defaults={"is_staff": True})
        token = Token.objects.get_or_create(user=operator)[0].key
        connections = [self.open_connection() for _ in requests]
        calls = [
            lambda connection=connection, request=request: self.fire(connection, *request, token=token)
            for connection, request in zip(connections, requests, strict=True)
        ]
        return run_simultaneously(calls, connect=False)

    def read_detail(self, name):
        status, body = self.send(self.open_connection(), "GET", "/api/coupons/" + quote(name, safe=""))
        self.assertEqual(status, 200)
        return body


class RoomyThreadedWSGIServer(ThreadedWSGIServer):
    # Django's default listen backlog (10) would make the kernel drop some of
    # fifty simultaneous connections and retry them a second later.
    request_queue_size = 128


class RoomyLiveServerThread(LiveServerThread):
    server_class = RoomyThreadedWSGIServer


class HttpStressTests(HttpClaims, StressScenarios, LiveServerTestCase):
    server_thread_class = RoomyLiveServerThread

    def setUp(self):
        super().setUp()
        parts = urlsplit(self.live_server_url)
        self.server_address = (parts.hostname, parts.port)


# Well above the few milliseconds a notification takes to reach the server's processes (docs/performance.md).
NOTIFICATION_SETTLE_SECONDS = 0.2


class ServedByShippedServer:
    """A TransactionTestCase mixin: the class's requests go to the server as it ships, couponsite/serve.py
    (granian's threaded workers).

    It runs in processes of its own, so it needs a database they can share:
    PostgreSQL (an SQLite test database lives in this process's memory).
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if connection.vendor != "postgresql":
            cls.service = None
            return
        cls.service = Service(subprocess_database_url(), WEB_CONCURRENCY="2").__enter__()
        cls.server_address = ("127.0.0.1", cls.service.port)

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.service is not None:
                cls.service.__exit__(None, None, None)
        finally:
            super().tearDownClass()

    def setUp(self):
        if self.service is None:
            self.skipTest("the server in another process needs a shared database: PostgreSQL")
        super().setUp()

    def sale_set_up(self):
        # Each generated sale reuses the last one's coupon names in a database emptied in between: the server's
        # processes forget the old coupons when PostgreSQL notifies them of the new ones
        # (coupons/coupon_states.py), within milliseconds of the commit; until then they may still refuse as
        # the old coupon's state said. A crowd does not come that fast after a coupon is created.
        time.sleep(NOTIFICATION_SETTLE_SECONDS)


class ShippedServerStressTests(ServedByShippedServer, HttpClaims, StressScenarios, TransactionTestCase):
    """The scenarios against the server as it ships."""

    def test_flash_sale_fifty_users_race_for_five(self):
        groups_before, claims_before = self.service.claim_groups()

        super().test_flash_sale_fifty_users_race_for_five()

        # The claims really were granted in groups: fewer transactions than claims.
        groups, claims = self.service.claim_groups()
        self.assertLess(groups - groups_before, claims - claims_before)
