"""The requests whose cost bench/cpu_per_request.py and bench/request_profile.py measure, one per outcome.

Each outcome is one kind of answer of the service (a granted claim, each
refusal, /health), with the data it needs made in the database first and
the requests to send: a new user per claim where a repeat would change
the answer.
"""

import itertools
import json
from dataclasses import dataclass
from datetime import timedelta

HUGE_STOCK = 2**31 - 1
REPEAT_CLAIMERS = 50  # users who already hold the "already claimed" coupon (named as bench/claim.lua names its pool)


@dataclass(frozen=True)
class Outcome:
    name: str
    status: int
    method: str
    path: str
    coupon: str | None = None  # claims: the coupon's name
    users: str = "new"  # "new": a new user per request; "holders": the coupon's holders in turn
    body: bytes | None = None  # a fixed body (bad input)

    def bodies(self, tag):
        """An endless supply of request bodies (None for a GET)."""
        if self.body is not None:
            return itertools.repeat(self.body)
        if self.coupon is None:
            return itertools.repeat(None)
        if self.users == "holders":
            users = (f"dip-{tag}-{i % REPEAT_CLAIMERS}" for i in itertools.count())
        else:
            users = (f"u-{tag}-{i}" for i in itertools.count())
        return (json.dumps({"user_id": user, "coupon_name": self.coupon}).encode() for user in users)


def outcomes(tag):
    """Every outcome, its coupons named after `tag` (made by `prepare`)."""

    def coupon(kind):
        return f"bench-{kind}-{tag}"

    claim = "/api/coupons/claim"
    return {
        "health": Outcome("health", 200, "GET", "/health"),
        "granted": Outcome("granted", 201, "POST", claim, coupon("granted")),
        "sold_out": Outcome("sold_out", 400, "POST", claim, coupon("sold-out")),
        "already_claimed": Outcome("already_claimed", 409, "POST", claim, coupon("held"), users="holders"),
        "not_found": Outcome("not_found", 404, "POST", claim, coupon("nowhere")),
        "sale_not_started": Outcome("sale_not_started", 403, "POST", claim, coupon("scheduled")),
        "sale_ended": Outcome("sale_ended", 403, "POST", claim, coupon("ended")),
        "invalid": Outcome(
            "invalid", 400, "POST", claim, body=json.dumps({"user_id": "", "coupon_name": coupon("granted")}).encode()
        ),
    }


def prepare(tag):
    """The coupons `outcomes(tag)` claims, in the database of the current Django setup."""
    from coupons.selectors import database_now
    from coupons.services import claim_coupon, create_coupon

    named = outcomes(tag)
    create_coupon(name=named["granted"].coupon, amount=HUGE_STOCK)
    create_coupon(name=named["sold_out"].coupon, amount=1)
    claim_coupon(user_id=f"first-{tag}", coupon_name=named["sold_out"].coupon)
    create_coupon(name=named["already_claimed"].coupon, amount=HUGE_STOCK)
    for i in range(REPEAT_CLAIMERS):
        claim_coupon(user_id=f"dip-{tag}-{i}", coupon_name=named["already_claimed"].coupon)
    now = database_now()
    create_coupon(name=named["sale_not_started"].coupon, amount=HUGE_STOCK, starts_at=now + timedelta(days=1))
    create_coupon(
        name=named["sale_ended"].coupon,
        amount=HUGE_STOCK,
        starts_at=now - timedelta(days=2),
        ends_at=now - timedelta(days=1),
    )
    return named
