"""The stress scenarios through real HTTP, against a live multi-threaded server.

Every request is its own TCP connection, opened before the start line; the
server answers each on its own thread with its own database connection.
"""

import http.client
import json
from urllib.parse import quote, urlsplit

from django.contrib.auth import get_user_model
from django.core.servers.basehttp import ThreadedWSGIServer
from django.test.testcases import LiveServerThread
from hypothesis.extra.django import LiveServerTestCase
from rest_framework.authtoken.models import Token

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


class RoomyThreadedWSGIServer(ThreadedWSGIServer):
    # Django's default listen backlog (10) would make the kernel drop some of
    # fifty simultaneous connections and retry them a second later.
    request_queue_size = 128


class RoomyLiveServerThread(LiveServerThread):
    server_class = RoomyThreadedWSGIServer


class HttpStressTests(StressScenarios, LiveServerTestCase):
    server_thread_class = RoomyLiveServerThread

    def open_connection(self):
        parts = urlsplit(self.live_server_url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
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
            self.assertEqual(body, {"user_id": user_id, "coupon_name": coupon_name})
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
