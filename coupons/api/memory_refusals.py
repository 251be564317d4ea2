"""Claims refused from memory before DRF's request cycle: a refusal storm answered at a plain Django view's cost.

Nearly every claim of a flash sale is refused, and once a coupon is sold
out (or its window closed, or it does not exist) the process proves most of
those refusals from what it already knows, without the database
(coupons/coupon_states.py, `known_refusal`). Answered by ClaimApi, such a
refusal still paid for DRF's request cycle around that lookup (the request
wrapper, authentication, permissions, throttles, content negotiation, the
input serializer, the exception handler, the renderer): more than half of its
CPU (docs/performance.md). `refusing_from_memory`, around the claim view in
the URL patterns, answers those refusals itself, the way Django's cache
middleware answers a cached page without running its view: the status,
headers and body ClaimApi sends (tests/test_memory_refusals.py holds the two
to the same bytes), the claim's outcome counted and logged as ClaimApi's
are. Every middleware, the request log line and the request metrics run as
for any request: only the view's inside is skipped.

It answers only what nothing else could change, and hands every other
request to ClaimApi untouched: a POST whose body is exactly
{"coupon_name": ..., "user_id": ...} as `application/json`, with values the
input serializer accepts; no Idempotency-Key (ClaimApi stores the answer);
no claim rate limit configured (ClaimApi counts the request, and may answer
429 first); with API_KEYS_REQUIRED, a known, unexpired key holding the
`claim` scope (anything else is ClaimApi's 401 or 403 to give).
"""

import functools

import orjson
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from rest_framework.exceptions import AuthenticationFailed

from coupons.api.claim_outcomes import outcome_of, record_outcome
from coupons.api.errors import domain_error
from coupons.api.idempotency import HEADER_META_KEY
from coupons.api.key_access import ApiKeyAuthentication
from coupons.api.serializers import is_plain_claim_input
from coupons.coupon_states import coupon_states


def refusing_from_memory(view):
    """Wrap ClaimApi's view (`ClaimApi.as_view()`): the claims this process can refuse without the database are
    answered here, every other request by the view."""
    api = view.cls
    scope = api.api_key_scopes["POST"]
    renderer = api.renderer_classes[0]()
    # DRF puts Allow on every answer of an APIView (its finalize_response); one renderer, so no Vary: Accept. The
    # methods of a view set up as for a request (Django's setup adds HEAD where there is GET).
    configured = api(**view.initkwargs)
    configured.setup(HttpRequest())
    allowed_methods = ", ".join(configured.allowed_methods)

    @functools.wraps(view)  # and its attributes: csrf_exempt, cls, initkwargs (the schema reads them)
    def refusing_view(request, *args, **kwargs):
        claimed = _claim_refusable_here(request, scope)
        refusal = claimed and coupon_states.known_refusal(claimed["coupon_name"], claimed["user_id"])
        if not refusal:
            return view(request, *args, **kwargs)
        record_outcome(outcome_of(refusal), user_id=claimed["user_id"], coupon=claimed["coupon_name"])
        status, body, headers = domain_error(refusal)
        response = HttpResponse(renderer.render(body), status=status, content_type=renderer.media_type, headers=headers)
        response["Allow"] = allowed_methods
        return response

    return refusing_view


def _claim_refusable_here(request, scope):
    """The claim's validated fields when nothing but the coupon's state can decide its answer, else None."""
    if (
        request.method != "POST"
        or request.META.get("CONTENT_TYPE") != "application/json"
        or HEADER_META_KEY in request.META
        or settings.CLAIM_RATE_LIMIT
        or settings.CLAIM_RATE_LIMIT_PER_KEY
    ):
        return None
    if settings.API_KEYS_REQUIRED and not _key_holds(request, scope):
        return None
    try:
        data = orjson.loads(request.body)  # ClaimApi's parser is orjson too: the same data
    except orjson.JSONDecodeError:
        return None
    return data if is_plain_claim_input(data) else None


def _key_holds(request, scope):
    """Whether the request carries a known, unexpired API key with `scope` (ClaimApi's authentication, which
    also names the key on the request's log line)."""
    try:
        authenticated = ApiKeyAuthentication().authenticate(request)
    except AuthenticationFailed:
        return False
    return authenticated is not None and scope in authenticated[1].scopes
