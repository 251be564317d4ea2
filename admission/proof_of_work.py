"""An optional proof of work on entry (ADMISSION_PROOF_OF_WORK), through ALTCHA's server library (`altcha`, v2).

GET /api/admission/challenge hands out a challenge: PBKDF2/SHA-256 at
ADMISSION_PROOF_OF_WORK_COST iterations per attempt, whose answer is a
counter drawn at random up to ADMISSION_PROOF_OF_WORK_MAX_NUMBER, signed
(HMAC) and valid for ADMISSION_PROOF_OF_WORK_SECONDS. A client (ALTCHA's
widget, or its libraries) tries counters until the derived key matches and
sends the base64 payload as the entry's `altcha`. Nothing is stored to
hand a challenge out; checking a solution costs two HMACs (the library's
fast path: the expected key is signed into the challenge), and the entry's
transaction records the challenge as spent (admission/services.py), so a
solution enters once, across every app host.
"""

import secrets
import time
from dataclasses import dataclass

import altcha
from django.conf import settings
from django.utils.crypto import salted_hmac

from admission.exceptions import ProofOfWorkInvalid, ProofOfWorkRequired

ALGORITHM = "PBKDF2/SHA-256"


def _secret(purpose):
    # Derived from SECRET_KEY: the same on every host that shares it, and a different key per use.
    return salted_hmac("admission.proof_of_work", purpose, secret=settings.SECRET_KEY).hexdigest()


def new_challenge() -> dict:
    """A fresh signed challenge, as ALTCHA's widget expects it from its challenge URL (CPU only)."""
    challenge = altcha.create_challenge(
        ALGORITHM,
        settings.ADMISSION_PROOF_OF_WORK_COST,
        counter=secrets.randbelow(settings.ADMISSION_PROOF_OF_WORK_MAX_NUMBER + 1),
        expires_at=int(time.time()) + settings.ADMISSION_PROOF_OF_WORK_SECONDS,
        hmac_secret=_secret("challenge"),
        hmac_key_secret=_secret("key"),
    )
    return challenge.to_dict()


@dataclass(frozen=True)
class Solved:
    # What the entry's transaction records as spent: the challenge's signature (unique per challenge, and only
    # this service can make one), and when the challenge expires (the record is useless after: expired is refused).
    signature: str
    expires_at: int


def check_solution(payload: str | None) -> Solved:
    """The solved challenge if `payload` solves one of ours, unexpired; ProofOfWorkRequired or ProofOfWorkInvalid
    otherwise. CPU only: whether it was spent already is the entry's transaction's question."""
    if not payload:
        raise ProofOfWorkRequired()
    result = altcha.verify_solution(payload, _secret("challenge"), hmac_key_secret=_secret("key"))
    if result.expired:
        raise ProofOfWorkInvalid("This proof of work's challenge has expired: solve a new one.")
    if not result.verified:
        raise ProofOfWorkInvalid()
    # Verified: the payload parsed and its challenge is ours, so these fields are the ones this service signed.
    parameters = altcha.Payload.from_base64(payload).challenge
    return Solved(signature=parameters.signature, expires_at=parameters.parameters.expires_at)
