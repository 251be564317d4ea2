"""Client applications' API keys: creating them, and verifying a presented key without a query per request.

The keys themselves are djangorestframework-api-key's: "<prefix>.<secret>",
of which the database keeps the prefix and a SHA-512 hash of the whole.
Checking one costs a query; a flash sale's claims come from a few client
applications, each sending its one key thousands of times a second, so a
worker remembers a key it has verified for API_KEY_CACHE_SECONDS and checks
only the expiry date in between. That is also the most a revocation, or a
change to a key's scopes or expiry date, takes to reach every worker.
"""

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from time import monotonic

from django.conf import settings
from django.utils import timezone

from coupons.models import API_KEY_SCOPES, ClientApiKey

# The library's keys: an 8-character prefix, a dot, a 32-character secret,
# all ASCII letters and digits. Anything else is no key, and never reaches a
# query (a NUL would make PostgreSQL fail the statement).
KEY_FORMAT = re.compile(r"[A-Za-z0-9]{8}\.[A-Za-z0-9]{32}")


@dataclass(frozen=True)
class VerifiedKey:
    prefix: str  # unique: names the key in logs, the admin and the per-key rate limit
    scopes: frozenset[str]
    expiry_date: datetime | None

    def has_expired(self):
        return self.expiry_date is not None and self.expiry_date <= timezone.now()


# sha256(key) -> (VerifiedKey, monotonic time of the check). Only keys found
# valid are remembered, so it holds at most one entry per key in the table.
_verified = {}


def create_api_key(*, name: str, scopes: set[str] | frozenset[str], expiry_date: datetime | None = None):
    """A new key holding `scopes`: (the ClientApiKey row, the key itself, which is never stored)."""
    unknown = set(scopes) - set(API_KEY_SCOPES)
    if unknown:
        raise ValueError(f"Unknown scopes: {', '.join(sorted(unknown))} (known: {', '.join(API_KEY_SCOPES)}).")
    flags = {f"scope_{scope}": scope in scopes for scope in API_KEY_SCOPES}
    api_key = ClientApiKey(name=name, expiry_date=expiry_date, **flags)
    api_key.full_clean(exclude=["id", "prefix", "hashed_key"])
    return ClientApiKey.objects.create_key(name=name, expiry_date=expiry_date, **flags)


def verify_api_key(key: str) -> VerifiedKey | None:
    """The key's identity and scopes if it exists and is not revoked (expired or not), else None.

    Remembered for API_KEY_CACHE_SECONDS after each read of the database.
    """
    if not KEY_FORMAT.fullmatch(key):
        return None
    digest = hashlib.sha256(key.encode()).digest()
    remembered = _verified.get(digest)
    if remembered is not None and monotonic() - remembered[1] < settings.API_KEY_CACHE_SECONDS:
        return remembered[0]
    try:
        api_key = ClientApiKey.objects.get_from_key(key)  # the library: unrevoked, hash compared in constant time
    except ClientApiKey.DoesNotExist:
        _verified.pop(digest, None)
        return None
    verified = VerifiedKey(api_key.prefix, api_key.scopes, api_key.expiry_date)
    _verified[digest] = (verified, monotonic())
    return verified
