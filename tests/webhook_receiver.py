"""A real HTTP receiver of webhooks for the tests: a server on 127.0.0.1 that can fail the way receivers do.

Its `script` says how to answer the next requests, one behaviour each
(then 200 for every later one): a status to answer, TIMEOUT (answer only
after `slow_seconds`), SLOW_BODY (a 200 whose body trickles out over
`slow_seconds`), or HANG_UP (close the connection without answering). While
it is stopped, its port refuses connections. Every request is kept:
headers, body, when it came, what it was answered, and whether its
signature verified (with standardwebhooks, the scheme's reference code).
"""

import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

TIMEOUT = "timeout"
SLOW_BODY = "slow body"
HANG_UP = "hang up"


@dataclass
class Received:
    headers: dict
    body: bytes
    at: float  # time.time() when the request was read
    answer: object = None  # the behaviour applied: a status, TIMEOUT, SLOW_BODY, HANG_UP
    signature_valid: bool | None = None
    completed: bool = field(default=False)  # its answer was sent in full

    @property
    def webhook_id(self):
        return self.headers.get("webhook-id")


class Receiver:
    def __init__(self, port, *, secret=None, script=(), slow_seconds=3.0):
        self.port = port
        self.secret = secret
        self.script = list(script)
        self.slow_seconds = slow_seconds
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._server = None
        self._connections = []

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/hooks/coupons?source=test"

    def start(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keeps connections open
            # An answer's head and body in one write, as servers do (unbuffered, the two small writes of a
            # kept-alive connection meet the sender's delayed ACK: 40 ms each).
            wbufsize = 64 * 1024

            def setup(self):
                super().setup()
                with receiver._lock:
                    receiver._connections.append(self.connection)

            def do_POST(self):  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received = Received({k.lower(): v for k, v in self.headers.items()}, body, time.time())
                received.signature_valid = receiver.verify(received)
                with receiver._lock:
                    received.answer = receiver.script.pop(0) if receiver.script else 200
                    receiver.received.append(received)
                receiver.answer(self, received)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        """Stop listening, and close the connections senders keep open, as a receiver that goes down does."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # closed already
            self._connections.clear()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def verify(self, received):
        if self.secret is None:
            return None
        try:
            Webhook(self.secret).verify(received.body, received.headers)
        except WebhookVerificationError:
            return False
        return True

    def answer(self, handler, received):
        behaviour = received.answer
        if behaviour == HANG_UP:
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        if behaviour == TIMEOUT:
            time.sleep(self.slow_seconds)
            behaviour = 200
        status = 200 if behaviour == SLOW_BODY else behaviour
        body = b'{"received": true}' * (8 if behaviour == SLOW_BODY else 1)
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            if behaviour == SLOW_BODY:
                for byte in range(len(body)):  # trickled over slow_seconds
                    handler.wfile.write(body[byte : byte + 1])
                    handler.wfile.flush()
                    time.sleep(self.slow_seconds / len(body))
            else:
                handler.wfile.write(body)
            received.completed = True
        except OSError:
            pass  # the sender gave up

    def acknowledged(self):
        """The requests answered 2xx in full, in the order they came."""
        with self._lock:
            return [r for r in self.received if r.answer in (200, 201, 204) and r.completed]
