"""The `code` of every error body, and JSON errors answered outside DRF.

Apart from coupons/api/errors.py (which imports DRF, whose settings import
it back), so that middleware and project views can use it.
"""

import enum

from django.http import JsonResponse


class ErrorCode(enum.StrEnum):
    """Every `code` an error body can carry (the OpenAPI schema's enum).

    HAProxy's error files (deploy/haproxy-errors) write "invalid",
    "forbidden", "request_timeout", "internal_error" and "unavailable" by
    hand: they are served without Django.
    """

    INVALID = "invalid"
    NOT_FOUND = "not_found"
    COUPON_EXISTS = "coupon_exists"
    ALREADY_CLAIMED = "already_claimed"
    OUT_OF_STOCK = "out_of_stock"
    SALE_NOT_STARTED = "sale_not_started"
    SALE_ENDED = "sale_ended"
    CLAIM_NOT_FOUND = "claim_not_found"
    AMOUNT_BELOW_CLAIMED = "amount_below_claimed"
    CODE_NOT_FOUND = "code_not_found"
    ALREADY_REDEEMED = "already_redeemed"
    CLAIM_EXPIRED = "claim_expired"
    REDEMPTION_CLOSED = "redemption_closed"
    NOT_REDEEMED = "not_redeemed"
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    LENGTH_REQUIRED = "length_required"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    # HAProxy's 408 (deploy/haproxy-errors): the whole request did not arrive in time.
    REQUEST_TIMEOUT = "request_timeout"
    INVALID_IDEMPOTENCY_KEY = "invalid_idempotency_key"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    IDEMPOTENCY_KEY_IN_USE = "idempotency_key_in_use"
    UNSAFE_WEBHOOK_URL = "unsafe_webhook_url"
    IMPORT_REJECTED = "import_rejected"
    # The campaigns app's (campaigns/extension.py: its http_errors), named here so that the schema lists them.
    CAMPAIGN_LIMIT_REACHED = "campaign_limit_reached"
    CAMPAIGN_EXHAUSTED = "campaign_exhausted"
    CAMPAIGN_NOT_FOUND = "campaign_not_found"
    CAMPAIGN_EXISTS = "campaign_exists"
    UNAVAILABLE = "unavailable"
    # Fair admission's (admission/, an extension: coupons/extensions.py maps its errors; listed here so that the
    # schema's enum holds every code the API can answer with).
    NO_ADMISSION = "no_admission"
    ALREADY_ENTERED = "already_entered"
    ENTRIES_NOT_OPEN = "entries_not_open"
    ENTRIES_CLOSED = "entries_closed"
    ENTRY_NOT_FOUND = "entry_not_found"
    NOT_A_DRAW = "not_a_draw"
    ADMISSION_REQUIRED = "admission_required"
    ADMISSION_INVALID = "admission_invalid"
    ADMISSION_EXPIRED = "admission_expired"
    PROOF_OF_WORK_REQUIRED = "proof_of_work_required"
    PROOF_OF_WORK_INVALID = "proof_of_work_invalid"
    # A bug (a 500): not one of the client's mistakes, but still a code to switch on.
    INTERNAL_ERROR = "internal_error"


def error_body(message, code):
    return {"error": message, "code": code}


def json_error(message, status_code, code, headers=None):
    """An error answered outside DRF (project views, middleware) in the API's shape."""
    return JsonResponse(error_body(message, code), status=status_code, headers=headers)
