"""Randomized fault schedules against the deployment, and a checker of what clients were told (after Jepsen).

Three parts, as in Jepsen:

- the workload: client threads run a sale through HAProxy for the whole
  run, each claim for a new user of the coupon on sale (a new coupon is
  created when it sells out), now and then a repeat of a claim already
  granted, and every claim that got no definite answer (a 503, or nothing)
  retried later, as a client would. Every request is recorded: what was
  asked, when, and what came back.
- the nemesis: a seeded schedule of faults, one at a time — SIGKILL,
  SIGSTOP then SIGCONT, and a network cut then healed, of the primary, the
  standby, one etcd member, all of etcd and an app host; PostgreSQL alone
  SIGKILLed on the primary (the OOM killer); partitions of the primary
  from etcd only and from one standby only; and two database hosts, the
  primary and a standby, killed at once (writes stop, nothing is lost). Each fault lasts a drawn time,
  is healed, and the next comes only once the deployment is whole again
  (Topology.problems()): a leader and streaming quorum standbys,
  every etcd member, every app host in rotation.
- the checker, over the history and the database once every fault has
  healed: every claim told 201 has its row; every row was told 201 or, its
  first answer lost, answers 409 on the retry; every 409 has its row; no
  user holds a coupon twice; remaining = amount - rows >= 0 for every
  coupon; no answer other than 201, 400, 409 and 503 (never a 500, never
  no answer at all).

Per fault type it reports how many were injected, the longest stretch
without a granted claim while each lasted (fault to healed; max and
median), the answers that failed meanwhile, by status, and how long the
deployment took to heal.
"""

import itertools
import random
import statistics
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from tests.cluster.topology import APP_HOSTS, DATABASE_HOSTS, ETCD_HOSTS, HTTP_PORT
from tests.faults.cluster import kill_postmaster_and_backends
from tests.faults.service import request

# Answers a claim may get, and whether they are definite (the claim's fate is known).
DEFINITE = {201, 400, 409}
INDEFINITE = {503, None}
# Longer than HAProxy's `timeout server` (35 s): HAProxy answers first, so "no answer" is a finding.
CLIENT_TIMEOUT_SECONDS = 40
RETRY_AFTER_SECONDS = 1.0
# The share of requests that repeat a claim already granted (they must hear 409).
REPEAT_SHARE = 0.05
HEAL_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class FaultType:
    name: str
    action: str  # a Nemesis method: it breaks the target's hosts, and returns how to heal them
    target: str  # whose hosts: one of Nemesis.inject's targets
    holds: tuple[float, float]  # how long the fault lasts: drawn uniformly, seconds


def kill_pause_cut(target, holds):
    return [FaultType(f"{action} {target}", action, target, holds) for action in ("kill", "pause", "cut")]


# The primary's faults last past Patroni's ttl (20 s) about a quarter of the
# time: long enough that the standby is promoted, then the old primary wakes.
FAULT_TYPES = [
    *kill_pause_cut("primary", (2, 26)),
    FaultType("kill primary's PostgreSQL", "kill_postgresql", "primary", (0, 0)),
    *kill_pause_cut("standby", (1, 8)),
    *kill_pause_cut("an etcd member", (1, 6)),
    *kill_pause_cut("all etcd", (2, 12)),
    *kill_pause_cut("an app host", (1, 6)),
    FaultType("partition primary from etcd", "partition_from_etcd", "primary", (2, 26)),
    FaultType("partition primary from a standby", "partition_from_a_standby", "primary", (1, 8)),
    # Two of the three database hosts: no quorum is left to promote or to acknowledge a commit, so writes stop
    # (503s) until they are back, and nothing acknowledged is lost.
    FaultType("kill primary and a standby", "kill", "primary and a standby", (2, 10)),
]


def schedule(seed, minutes, hold_scale=1.0):
    """The run's faults, seeded: every type once in a shuffled order, then drawn at random.

    An iterator of (FaultType, hold seconds, settle seconds before it);
    the caller stops drawing once `minutes` have passed (the first round
    always runs whole). The same seed gives the same schedule.
    """
    rng = random.Random(seed)
    first_round = list(FAULT_TYPES)
    rng.shuffle(first_round)
    for fault_type in itertools.chain(first_round, iter(lambda: rng.choice(FAULT_TYPES), None)):
        low, high = fault_type.holds
        yield fault_type, round(rng.uniform(low, high) * hold_scale, 1), round(rng.uniform(1, 3), 1)


class Nemesis:
    """Breaks the topology's hosts; inject() returns the function that heals what it broke."""

    def __init__(self, topology, rng):
        self.topology = topology
        self.rng = rng

    def inject(self, fault_type):
        hosts = {
            "primary": lambda: [self._primary()],
            "standby": lambda: [self._standby()],
            "primary and a standby": lambda: [self._primary(), self._standby()],
            "an etcd member": lambda: [self.rng.choice(ETCD_HOSTS)],
            "all etcd": lambda: list(ETCD_HOSTS),
            "an app host": lambda: [self.rng.choice(APP_HOSTS)],
        }[fault_type.target]()
        return getattr(self, fault_type.action)(hosts)

    def _primary(self):
        for _ in range(50):
            name = self.topology.primary()
            if name:
                return name
            time.sleep(0.1)
        raise RuntimeError("no primary to break")

    def _standby(self):
        primary = self._primary()
        return self.rng.choice([name for name in DATABASE_HOSTS if name != primary])

    def kill(self, hosts):
        for host in hosts:
            self.topology.kill_host(host)
        return lambda: [self.topology.restart_host(host) for host in hosts]

    def pause(self, hosts):
        for host in hosts:
            self.topology.pause_host(host)
        return lambda: [self.topology.resume_host(host) for host in hosts]

    def cut(self, hosts):
        for host in hosts:
            self.topology.network.cut(host)
        return lambda: [self.topology.network.reconnect(host) for host in hosts]

    def kill_postgresql(self, hosts):
        for host in hosts:
            kill_postmaster_and_backends(self.topology.directory / host / "data")
        return lambda: None  # Patroni fails over; the old primary comes back as a standby by itself

    def partition_from_etcd(self, hosts):
        return self._partition(hosts, ETCD_HOSTS)

    def partition_from_a_standby(self, hosts):
        return self._partition(hosts, [self._standby()])

    def _partition(self, hosts, others):
        for host in hosts:
            self.topology.network.partition(host, others)
        return lambda: [self.topology.network.partition(host, others, heal=True) for host in hosts]


@dataclass
class Op:
    """One claim request and its answer."""

    kind: str  # "new", "retry" (an earlier answer was not definite), "repeat" (of a granted claim)
    user_id: str
    coupon: str
    sent: float
    answered: float
    status: int | None
    code: str | None


@dataclass
class Injection:
    fault_type: FaultType
    hosts_before: dict  # Patroni's roles when it struck
    hold: float
    injected: float
    healed: float = 0.0  # when the heal was applied
    whole: float = 0.0  # when the deployment was whole again


class Workload:
    """Client threads claiming through HAProxy for the whole run, recording every answer."""

    def __init__(self, lb, clients, seed, stocks=(300, 1500)):
        self.lb = lb
        self.clients = clients
        self.rng = random.Random(f"workload-{seed}")
        self.stocks = stocks
        self.history: list[Op] = []
        self.coupons: dict[str, int] = {}  # created coupon -> amount
        self._lock = threading.Lock()
        self._users = itertools.count()
        self._coupon_numbers = itertools.count()
        self._retries: list[tuple[float, str, str]] = []  # (due, user, coupon)
        self._granted: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._rotating = threading.Lock()
        self.current = None
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self):
        self._rotate(None)
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _create_coupon(self):
        """A new coupon, created however long it takes (a created one whose answer was lost says 409)."""
        name = f"chaos-{next(self._coupon_numbers)}"
        amount = self.rng.randint(*self.stocks)
        while True:
            reply = request(self.lb, HTTP_PORT, "POST", "/api/coupons", {"name": name, "amount": amount}, timeout=10)
            if reply.status in (201, 409):
                with self._lock:
                    self.coupons[name] = amount
                return name
            time.sleep(0.2)

    def _rotate(self, sold_out):
        """When the coupon on sale sells out, one thread puts the next on sale; the others carry on meanwhile."""
        if not self._rotating.acquire(blocking=False):
            return
        try:
            if self.current == sold_out:
                self.current = self._create_coupon()
        finally:
            self._rotating.release()

    def _next_claim(self):
        now = time.monotonic()
        with self._lock:
            if self._retries and self._retries[0][0] <= now:
                _, user, coupon = self._retries.pop(0)
                return "retry", user, coupon
            if self._granted and self.rng.random() < REPEAT_SHARE:
                user, coupon = self.rng.choice(self._granted)
                return "repeat", user, coupon
            return "new", f"u{next(self._users)}", self.current

    def claim(self, kind, user, coupon):
        sent = time.monotonic()
        reply = request(
            self.lb, HTTP_PORT, "POST", "/api/coupons/claim", {"user_id": user, "coupon_name": coupon},
            timeout=CLIENT_TIMEOUT_SECONDS,
        )  # fmt: skip
        code = reply.body.get("code") if reply.is_json and isinstance(reply.body, dict) else None
        op = Op(kind, user, coupon, sent, time.monotonic(), reply.status, code)
        with self._lock:
            self.history.append(op)
            if op.status == 201:
                self._granted.append((user, coupon))
            elif op.status not in DEFINITE:
                self._retries.append((op.answered + RETRY_AFTER_SECONDS, user, coupon))
        return op

    def _run(self):
        while not self._stop.is_set():
            op = self.claim(*self._next_claim())
            if op.status == 400 and op.code == "out_of_stock" and op.coupon == self.current:
                self._rotate(op.coupon)
            elif op.status not in DEFINITE:
                time.sleep(0.05)  # a client backing off after an error, as real ones do

    def settle(self, timeout=120):
        """After the run: retry every claim still without a definite answer until it gets one."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                pending = list(self._retries)
                self._retries.clear()
            if not pending:
                return
            for _, user, coupon in pending:
                self.claim("retry", user, coupon)
            if time.monotonic() > deadline:
                raise TimeoutError(f"claims still without a definite answer: {self._retries[:10]}")
            time.sleep(0.2)


@dataclass
class Verdict:
    anomalies: list = field(default_factory=list)
    told_201: int = 0
    rows: int = 0
    committed_unanswered: int = 0
    statuses: Counter = field(default_factory=Counter)


def check(history, database):
    """The checker: the history against what the database holds ({coupon: (amount, remaining, [user ids])})."""
    verdict = Verdict(statuses=Counter(op.status for op in history))
    claims = defaultdict(lambda: defaultdict(list))  # coupon -> user -> ops, in the order they were sent
    for op in sorted(history, key=lambda op: op.sent):
        claims[op.coupon][op.user_id].append(op)
    for status in verdict.statuses:
        if status not in DEFINITE | {503}:
            examples = [op for op in history if op.status == status][:3]
            verdict.anomalies.append(f"{verdict.statuses[status]} answers with status {status}, e.g. {examples}")
    for coupon, (amount, remaining, users) in database.items():
        rows = Counter(users)
        verdict.rows += len(rows)
        twice = [user for user, count in rows.items() if count > 1]
        if twice:
            verdict.anomalies.append(f"{coupon}: users holding it twice: {twice[:10]}")
        if remaining != amount - len(users) or remaining < 0:
            verdict.anomalies.append(f"{coupon}: amount {amount}, remaining {remaining}, {len(users)} rows")
        for user, ops in claims[coupon].items():
            verdict.anomalies += _claim_anomalies(coupon, user, ops, holds=user in rows)
            verdict.told_201 += sum(op.status == 201 for op in ops)
            if user in rows and not any(op.status == 201 for op in ops):
                verdict.committed_unanswered += 1
        strangers = set(rows) - set(claims[coupon])
        if strangers:
            verdict.anomalies.append(f"{coupon}: rows of users who never claimed it: {sorted(strangers)[:10]}")
    unknown = set(claims) - set(database)
    if unknown:
        verdict.anomalies.append(f"claims of coupons the database does not have: {sorted(unknown)}")
    return verdict


def _claim_anomalies(coupon, user, ops, holds):
    """What is wrong with one user's attempts at one coupon, given whether a row says they hold it."""
    statuses = [op.status for op in ops]
    found = []
    granted = [op for op in ops if op.status == 201]
    if len(granted) > 1:
        found.append(f"{coupon}: {user} told 201 {len(granted)} times: {ops}")
    if granted and not holds:
        found.append(f"{coupon}: {user} was told 201 and has no row (LOST): {ops}")
    if 409 in statuses and not holds:
        found.append(f"{coupon}: {user} was told 409 and has no row: {ops}")
    if granted and any(op.status == 400 and op.sent > granted[0].answered for op in ops):
        found.append(f"{coupon}: {user} was told 201, then out of stock: {ops}")
    if holds and not granted:
        # The claim committed but its answer was lost: the first definite answer after that is a 409.
        first_definite = next((op for op in ops if op.status in DEFINITE), None)
        lost_answer = any(op.status in INDEFINITE for op in ops)
        if not (lost_answer and first_definite is not None and first_definite.status == 409):
            found.append(f"{coupon}: {user} has a row nobody was told of (PHANTOM): {ops}")
    return found


def fault_figures(injections, history):
    """Per fault type: count, longest stretch without a granted claim (max, median), failed answers, heal time."""
    granted = sorted(op.answered for op in history if op.status == 201)
    rows = {}
    for injection in injections:
        start, end = injection.injected, injection.whole
        moments = [start, *(t for t in granted if start < t < end), end]
        longest = max(b - a for a, b in zip(moments, moments[1:], strict=False))
        failed = Counter(op.status for op in history if start <= op.sent <= end and op.status not in DEFINITE)
        row = rows.setdefault(injection.fault_type.name, {"gaps": [], "failed": Counter(), "heals": []})
        row["gaps"].append(longest)
        row["failed"] += failed
        row["heals"].append(injection.whole - injection.healed)
    return {
        name: {
            "count": len(row["gaps"]),
            "longest_without_a_claim_max": max(row["gaps"]),
            "longest_without_a_claim_median": statistics.median(row["gaps"]),
            "failed": dict(row["failed"]),
            "heal_max": max(row["heals"]),
        }
        for name, row in rows.items()
    }


def figures_table(figures):
    lines = [
        "| fault | count | s without a granted claim: max | median | failed answers | s to heal: max |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for fault_type in FAULT_TYPES:
        row = figures.get(fault_type.name)
        if row is None:
            continue
        failed = ", ".join(f"{status}: {n}" for status, n in sorted(row["failed"].items(), key=str)) or "none"
        lines.append(
            f"| {fault_type.name} | {row['count']} | {row['longest_without_a_claim_max']:.1f} |"
            f" {row['longest_without_a_claim_median']:.1f} | {failed} | {row['heal_max']:.1f} |"
        )
    return lines
