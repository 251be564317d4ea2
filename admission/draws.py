"""The draw's arithmetic, pure and public: anyone can recompute a draw from what GET .../draw publishes.

- `seed`: 256 random bits from the operating system's CSPRNG, kept secret
  until the draw; `commitment` = SHA-256(seed bytes), published when the
  coupon is created, so the seed cannot be chosen after the entries are seen.
- `entries_hash` = SHA-256 of the entered user ids, sorted by code point,
  each UTF-8 encoded and followed by "\\n": the frozen entry list.
- the order: entries sorted by HMAC-SHA256(key = seed bytes, message = the
  user id in UTF-8), as lowercase hex, ties (impossible in practice) by user
  id. Winners: the first `amount`; the rest, in that order: the waiting list.

The queue's pre-queue (entries before the opening) is ordered the same way
with the queue's own seed. This module imports nothing of Django, so the
docs' verification snippet can be this very code.
"""

import hashlib
import hmac
import secrets

ALGORITHM = (
    "commitment = SHA-256(seed); entries_hash = SHA-256(concatenation of each user_id, sorted by code point,"
    " UTF-8 encoded, followed by a newline); order = user_ids sorted by HMAC-SHA256(key=seed, msg=user_id UTF-8)"
    " as hex, then by user_id; winners = the first `amount` of the order, waiting_list = the rest"
)


def new_seed() -> str:
    return secrets.token_hex(32)


def commitment_of(seed: str) -> str:
    return hashlib.sha256(bytes.fromhex(seed)).hexdigest()


def entries_hash(user_ids) -> str:
    digest = hashlib.sha256()
    for user_id in sorted(user_ids):
        digest.update(user_id.encode() + b"\n")
    return digest.hexdigest()


def draw_order(seed: str, user_ids) -> list[str]:
    key = bytes.fromhex(seed)
    return sorted(user_ids, key=lambda user_id: (hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest(), user_id))


def verify(proof: dict) -> list[str]:
    """What is wrong with a published draw (GET /api/coupons/{name}/draw's body): [] when it checks out."""
    problems = []
    seed, entries = proof.get("seed"), proof.get("entries") or []
    if seed is None:
        return ["the draw has not been made: no seed published yet"]
    if commitment_of(seed) != proof["commitment"]:
        problems.append("the seed does not match the commitment published at creation")
    if entries_hash(entries) != proof["entries_hash"]:
        problems.append("the entry list does not match its published hash")
    order = draw_order(seed, entries)
    winners = order[: proof["amount"]]
    if winners != proof["winners"]:
        problems.append("the winners are not the first `amount` of the seeded order")
    if order[proof["amount"] :] != proof["waiting_list"]:
        problems.append("the waiting list is not the rest of the seeded order")
    return problems
