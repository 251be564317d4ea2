"""The outcome of every claim request, counted for Prometheus and logged: how operators watch a sale.

One counter, labelled by outcome only (a label per user or coupon would make
a time series per user or coupon, without bound), and a `claim` field
({"outcome", "user_id", "coupon"}) on the request's own log line
(`request_finished`, couponsite/request_logs.py, which has the request id): one line
per claim, not a second one beside the request's, since formatting a log
line costs a refusal about as much as its database read. Neither touches the
database.
"""

import functools

import structlog
from django.db import InterfaceError, OperationalError
from prometheus_client import Counter
from rest_framework.exceptions import APIException

from coupons.api.serializers import MAX_TEXT_LENGTH
from coupons.exceptions import AlreadyClaimed, CouponNotFound, OutOfStock, SaleEnded, SaleNotStarted

SUCCESS = "success"
DOMAIN_OUTCOMES = {
    AlreadyClaimed: "already_claimed",
    SaleNotStarted: "sale_not_started",
    SaleEnded: "sale_ended",
    OutOfStock: "out_of_stock",
    CouponNotFound: "not_found",
}
INVALID = "invalid"  # refused input (a 400 before any claim was tried)
UNAVAILABLE = "unavailable"  # the database was unreachable (a 503, as coupons/api/errors.py maps it)
ERROR = "error"  # anything else: a bug (a 500)
OUTCOMES = (SUCCESS, *DOMAIN_OUTCOMES.values(), INVALID, UNAVAILABLE, ERROR)

claims_total = Counter("coupon_claims", "Claim requests, by outcome.", ["outcome"])
# Created up front so that every outcome is exported (as 0) from the start.
_counters = {outcome: claims_total.labels(outcome=outcome) for outcome in OUTCOMES}


def outcome_of(exc):
    if type(exc) in DOMAIN_OUTCOMES:
        return DOMAIN_OUTCOMES[type(exc)]
    if isinstance(exc, APIException) and exc.status_code < 500:
        return INVALID
    if isinstance(exc, (OperationalError, InterfaceError)):
        return UNAVAILABLE
    return ERROR


def record_claim_outcome(post):
    """Wraps the claim view's post(): whatever happens, its outcome is counted once and logged with the request."""

    @functools.wraps(post)
    def recorded_post(view, request, *args, **kwargs):
        try:
            response = post(view, request, *args, **kwargs)
        except Exception as exc:
            _record(request, outcome_of(exc))
            raise
        _record(request, SUCCESS)
        return response

    return recorded_post


def _record(request, outcome):
    user_id, coupon = _sent_identifiers(request)
    record_outcome(outcome, user_id=user_id, coupon=coupon)


def record_outcome(outcome, *, user_id, coupon):
    """Count a claim request's outcome, and name it on the request's log line (`request_finished` carries it)."""
    _counters[outcome].inc()
    structlog.contextvars.bind_contextvars(claim={"outcome": outcome, "user_id": user_id, "coupon": coupon})


def _sent_identifiers(request):
    """The user id and coupon name as sent, when they were sent as strings (cut to the longest valid length)."""
    try:
        data = request.data
    except APIException:  # a body that cannot be parsed at all
        return None, None
    if not isinstance(data, dict):
        return None, None
    return tuple(
        value[:MAX_TEXT_LENGTH] if isinstance(value, str) else None
        for value in (data.get("user_id"), data.get("coupon_name"))
    )
