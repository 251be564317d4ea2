"""Crowds of claims through the load balancer, and what they were told."""

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tests.cluster.topology import HTTP_PORT
from tests.faults.service import request

# Lines for the end of the run's output (tests/cluster/conftest.py prints them).
FIGURES = []


@dataclass
class Answer:
    user_id: str
    status: int | None  # None: no HTTP answer at all
    sent: float  # time.monotonic() when the request went out
    answered: float


def claim(host, port, user_id, coupon_name):
    sent = time.monotonic()
    reply = request(host, port, "POST", "/api/coupons/claim", {"user_id": user_id, "coupon_name": coupon_name})
    return Answer(user_id, reply.status, sent, time.monotonic())


def claim_at_once(host, port, claims, clients=32):
    """Fire (user_id, coupon_name) claims from `clients` threads; the answers, in order."""
    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(lambda c: claim(host, port, *c), claims))


class Sale:
    """`clients` threads claiming one coupon, each request for a new user, until stop() or sold out (a 400)."""

    def __init__(self, host, port, coupon_name, clients=8, user_prefix=None):
        self.host, self.port, self.coupon_name, self.clients = host, port, coupon_name, clients
        self.user_prefix = user_prefix or coupon_name  # a second sale of the same coupon: users of its own
        self.answers = []
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._threads = [threading.Thread(target=self._claim_until_stopped) for _ in range(clients)]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def _claim_until_stopped(self):
        while not self._stopped.is_set():
            with self._lock:
                user_id = f"{self.user_prefix}-user-{next(self._numbers)}"
            answer = claim(self.host, self.port, user_id, self.coupon_name)
            with self._lock:
                self.answers.append(answer)
            if answer.status == 400:
                self._stopped.set()  # sold out
            elif answer.status != 201:
                time.sleep(0.05)  # a client backing off after an error, as real ones do

    def stop(self):
        self._stopped.set()
        for thread in self._threads:
            thread.join()

    def sold_out(self):
        return self._stopped.is_set()

    def snapshot(self):
        with self._lock:
            return list(self.answers)

    def count(self, status, sent_after=float("-inf")):
        return sum(1 for a in self.snapshot() if a.status == status and a.sent >= sent_after)

    def first(self, status, sent_after):
        """The first answer with `status` to a request sent after `sent_after`, or None."""
        answers = [a for a in self.snapshot() if a.status == status and a.sent >= sent_after]
        return min(answers, key=lambda a: a.answered, default=None)


def retry_until_answered(host, port, answers, coupon_name, timeout=60):
    """Claim again for every user whose claim got no 2xx/4xx answer, until each gets one.

    A claim whose first answer was lost may have committed: its retry must
    say 409 (already claimed), never claim twice. Returns {user_id: final status}.
    """
    deadline = time.monotonic() + timeout
    final = {}
    for answer in answers:
        while True:
            status = claim(host, port, answer.user_id, coupon_name).status
            if status is not None and status < 500:
                final[answer.user_id] = status
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"retries of {answer.user_id} still get {status}")
            time.sleep(0.2)
    return final


def retry_until_definite(host, method, path, body, definite=(201, 400, 409), timeout=60):
    """Send the request until its answer is one of `definite` (503s and no answer are retried every 0.2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        reply = request(host, HTTP_PORT, method, path, body, timeout=15)
        if reply.status in definite:
            return reply
        if reply.status not in (503, None) or time.monotonic() > deadline:
            raise AssertionError(f"{method} {path} {body}: {reply}")
        time.sleep(0.2)


@dataclass
class KeyedAttempt:
    user_id: str
    status: int | None
    sent: float
    answered: float
    replayed: bool  # Idempotent-Replayed: true
    code: str | None  # the error body's code
    claim_code: str | None  # a 201's claim code


class KeyedSale(Sale):
    """`clients` threads, each claiming for one new user at a time with an Idempotency-Key of its own, and resending
    that very request (same body, same key) after every answer that is not final, until one is, as a careful client
    does; until stop() or sold out. `attempts` records every answer."""

    FINAL = {201, 400, 409}  # 409 idempotency_key_in_use is not final: the first request is still running

    def __init__(self, host, port, coupon_name, clients=8, give_up_seconds=120):
        super().__init__(host, port, coupon_name, clients)
        self.attempts = []
        self.give_up_seconds = give_up_seconds

    def _claim_until_stopped(self):
        while not self._stopped.is_set():
            with self._lock:
                user_id = f"{self.coupon_name}-user-{next(self._numbers)}"
            status = self._claim_until_final(user_id)
            if status == 400:
                self._stopped.set()  # sold out

    def _claim_until_final(self, user_id):
        body = {"user_id": user_id, "coupon_name": self.coupon_name}
        headers = {"Idempotency-Key": f"claim-{user_id}"}
        give_up = time.monotonic() + self.give_up_seconds
        while True:
            sent = time.monotonic()
            reply = request(self.host, self.port, "POST", "/api/coupons/claim", body, headers=headers)
            payload = reply.body if reply.is_json and isinstance(reply.body, dict) else {}
            granted = reply.status == 201
            attempt = KeyedAttempt(
                user_id, reply.status, sent, time.monotonic(), reply.headers.get("idempotent-replayed") == "true",
                None if granted else payload.get("code"), payload.get("code") if granted else None,
            )  # fmt: skip
            with self._lock:
                self.attempts.append(attempt)
            final = reply.status in self.FINAL and attempt.code != "idempotency_key_in_use"
            if final or time.monotonic() > give_up:
                return reply.status
            time.sleep(float(reply.headers.get("retry-after", 0.2)) if reply.status == 409 else 0.2)
