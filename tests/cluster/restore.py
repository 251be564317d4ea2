"""The restore checker: a sale's history against a database Barman restored (tests/cluster/test_restore.py).

Like the chaos checker (tests/cluster/chaos.py), it reads what clients were
told and what the database holds, and names every difference:

- every claim answered 201 before `kept_until` (the recovery target, or the
  moment every database host was lost) has its row; each one missing is
  LOST, and the span from the earliest lost answer to `kept_until` is the
  recovery point actually reached (RPO);
- no row of a claim sent after `dropped_from` (the recovery target: a
  point-in-time restore replays nothing after it);
- no row of a user who never claimed, nobody holding the coupon twice;
- the stock adds up: remaining = amount - rows.

Times are wall-clock seconds (time.time()): PostgreSQL's commit timestamps,
which recovery targets are compared with, are the same clock here.
"""

import time
from collections import Counter
from dataclasses import dataclass, field

# time.time() - time.monotonic(): the sale records monotonic times, recovery targets are wall-clock.
WALL_CLOCK_OFFSET = time.time() - time.monotonic()


def wall_clock(monotonic):
    return monotonic + WALL_CLOCK_OFFSET


@dataclass
class RestoreVerdict:
    anomalies: list = field(default_factory=list)
    told_201: int = 0  # answered 201 before kept_until
    lost: list = field(default_factory=list)  # of those, the users without a row
    rpo_seconds: float = 0.0  # kept_until - the earliest lost 201's answer (0: nothing lost)
    rows: int = 0


def check_restore(answers, database, kept_until, dropped_from=None):
    """`answers`: the sale's Answers (monotonic times); `database`: (amount, remaining, [user ids with a row])."""
    amount, remaining, users = database
    verdict = RestoreVerdict(rows=len(users))
    rows = Counter(users)
    kept = [a for a in answers if a.status == 201 and wall_clock(a.answered) < kept_until]
    verdict.told_201 = len(kept)
    lost = sorted((a for a in kept if a.user_id not in rows), key=lambda a: a.answered)
    verdict.lost = [a.user_id for a in lost]
    if lost:
        verdict.rpo_seconds = kept_until - wall_clock(lost[0].answered)
        verdict.anomalies.append(f"{len(lost)} claims answered 201 before the recovery point are missing (LOST)")
    if dropped_from is not None:
        replayed = [a.user_id for a in answers if wall_clock(a.sent) > dropped_from and a.user_id in rows]
        if replayed:
            verdict.anomalies.append(f"rows of claims sent after the recovery target: {replayed[:10]}")
    claimed = {a.user_id for a in answers}
    strangers = set(rows) - claimed
    if strangers:
        verdict.anomalies.append(f"rows of users who never claimed: {sorted(strangers)[:10]}")
    twice = [user for user, count in rows.items() if count > 1]
    if twice:
        verdict.anomalies.append(f"users holding the coupon twice: {twice[:10]}")
    if remaining != amount - len(users) or remaining < 0:
        verdict.anomalies.append(f"stock: amount {amount}, remaining {remaining}, {len(users)} rows")
    return verdict
