"""The claim rate limits, counted in the cache: CLAIM_RATE_LIMIT per address, CLAIM_RATE_LIMIT_PER_KEY per API key."""

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle

from coupons.api_keys import VerifiedKey


class ClaimRateThrottle(SimpleRateThrottle):
    """A fixed window per client, counted with the cache's atomic increment.

    DRF's own rate throttles read a list of timestamps, append and write it
    back, so a burst of simultaneous requests all read the same list and all
    pass: exactly the bots a flash sale attracts. An increment cannot be
    raced: of any burst, at most CLAIM_RATE_LIMIT requests get through.
    """

    scope = "claim"

    def get_rate(self):
        # Read per request, so the limit follows the settings (and tests can change it).
        return settings.CLAIM_RATE_LIMIT or None

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def allow_request(self, request, view):
        # Only claims count: a GET on the claim path reads the coupon named "claim".
        if self.rate is None or request.method != "POST":
            return True
        client_key = self.get_cache_key(request, view)
        if client_key is None:  # nothing to count by
            return True
        now = self.timer()
        window = int(now // self.duration)
        self.retry_after = (window + 1) * self.duration - now
        key = f"{client_key}_{window}"
        # The key outlives its window, so it cannot expire between add and incr.
        self.cache.add(key, 0, self.duration + 1)
        try:
            count = self.cache.incr(key)
        except ValueError:
            # Evicted from a full local-memory cache: count afresh.
            self.cache.set(key, 1, self.duration + 1)
            count = 1
        # None: django-redis could not reach Redis (and logged it); let the claim through.
        return count is None or count <= self.num_requests

    def wait(self):
        return self.retry_after


class ClaimRateThrottlePerKey(ClaimRateThrottle):
    """The same fixed window, counted per API key; requests without a verified key are not counted here."""

    scope = "claim_key"

    def get_rate(self):
        return settings.CLAIM_RATE_LIMIT_PER_KEY or None

    def get_cache_key(self, request, view):
        if not isinstance(request.auth, VerifiedKey):
            return None
        return self.cache_format % {"scope": self.scope, "ident": request.auth.prefix}  # unique, and short
