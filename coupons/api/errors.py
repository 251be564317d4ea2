"""How the API turns failures into JSON: the one place that maps errors to HTTP.

Every error body is {"error": "<message>", "code": "<ErrorCode>"}: clients
switch on the code, people read the message.
"""

from django.db import InterfaceError, OperationalError
from rest_framework import status
from rest_framework.exceptions import NotAcceptable, ParseError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import exception_handler

from coupons import extensions
from coupons.api.error_codes import ErrorCode, error_body
from coupons.exceptions import (
    AlreadyClaimed,
    AlreadyRedeemed,
    AmountBelowClaimed,
    ClaimExpired,
    ClaimNotFound,
    CodeNotFound,
    CouponAlreadyExists,
    CouponError,
    CouponNotFound,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    ImportRejected,
    InvalidIdempotencyKey,
    MalformedCode,
    NotRedeemed,
    OutOfStock,
    RedemptionClosed,
    SaleEnded,
    SaleNotStarted,
    UnsafeWebhookUrl,
    WebhookNotFound,
)
from coupons.sale_windows import format_utc

DOMAIN_ERRORS = {
    CouponNotFound: (status.HTTP_404_NOT_FOUND, ErrorCode.NOT_FOUND),
    CouponAlreadyExists: (status.HTTP_409_CONFLICT, ErrorCode.COUPON_EXISTS),
    AlreadyClaimed: (status.HTTP_409_CONFLICT, ErrorCode.ALREADY_CLAIMED),
    SaleNotStarted: (status.HTTP_403_FORBIDDEN, ErrorCode.SALE_NOT_STARTED),
    SaleEnded: (status.HTTP_403_FORBIDDEN, ErrorCode.SALE_ENDED),
    OutOfStock: (status.HTTP_400_BAD_REQUEST, ErrorCode.OUT_OF_STOCK),
    ClaimNotFound: (status.HTTP_404_NOT_FOUND, ErrorCode.CLAIM_NOT_FOUND),
    AmountBelowClaimed: (status.HTTP_409_CONFLICT, ErrorCode.AMOUNT_BELOW_CLAIMED),
    MalformedCode: (status.HTTP_400_BAD_REQUEST, ErrorCode.INVALID),
    CodeNotFound: (status.HTTP_404_NOT_FOUND, ErrorCode.CODE_NOT_FOUND),
    AlreadyRedeemed: (status.HTTP_409_CONFLICT, ErrorCode.ALREADY_REDEEMED),
    ClaimExpired: (status.HTTP_410_GONE, ErrorCode.CLAIM_EXPIRED),
    RedemptionClosed: (status.HTTP_403_FORBIDDEN, ErrorCode.REDEMPTION_CLOSED),
    NotRedeemed: (status.HTTP_409_CONFLICT, ErrorCode.NOT_REDEEMED),
    InvalidIdempotencyKey: (status.HTTP_400_BAD_REQUEST, ErrorCode.INVALID_IDEMPOTENCY_KEY),
    IdempotencyKeyReused: (status.HTTP_422_UNPROCESSABLE_ENTITY, ErrorCode.IDEMPOTENCY_KEY_REUSED),
    IdempotencyKeyInUse: (status.HTTP_409_CONFLICT, ErrorCode.IDEMPOTENCY_KEY_IN_USE),
    UnsafeWebhookUrl: (status.HTTP_400_BAD_REQUEST, ErrorCode.UNSAFE_WEBHOOK_URL),
    WebhookNotFound: (status.HTTP_404_NOT_FOUND, ErrorCode.NOT_FOUND),
    ImportRejected: (status.HTTP_400_BAD_REQUEST, ErrorCode.IMPORT_REJECTED),
}

# DRF's own exceptions (and any raised by authentication or permission
# classes), by the status they answer with.
STATUS_CODES = {
    status.HTTP_400_BAD_REQUEST: ErrorCode.INVALID,
    status.HTTP_401_UNAUTHORIZED: ErrorCode.UNAUTHORIZED,
    status.HTTP_403_FORBIDDEN: ErrorCode.FORBIDDEN,
    status.HTTP_404_NOT_FOUND: ErrorCode.NOT_FOUND,
    status.HTTP_405_METHOD_NOT_ALLOWED: ErrorCode.METHOD_NOT_ALLOWED,
    status.HTTP_406_NOT_ACCEPTABLE: ErrorCode.INVALID,
    status.HTTP_411_LENGTH_REQUIRED: ErrorCode.LENGTH_REQUIRED,
    status.HTTP_413_REQUEST_ENTITY_TOO_LARGE: ErrorCode.PAYLOAD_TOO_LARGE,
    status.HTTP_415_UNSUPPORTED_MEDIA_TYPE: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    status.HTTP_429_TOO_MANY_REQUESTS: ErrorCode.RATE_LIMITED,
    status.HTTP_503_SERVICE_UNAVAILABLE: ErrorCode.UNAVAILABLE,
}

# Seconds a client should wait before retrying when the database is away.
DATABASE_UNAVAILABLE_RETRY_AFTER = 1


def error_response(message, status_code, code, headers=None, **details):
    return Response({**error_body(message, code), **details}, status=status_code, headers=headers)


def domain_error(exc):
    """(status, body, headers or None) of a CouponError: the coupon service's own, or an extension's
    (coupons/extensions.py)."""
    status_code, code = DOMAIN_ERRORS.get(type(exc)) or extensions.http_error(exc)
    headers, details = None, {}
    if isinstance(exc, (SaleNotStarted, IdempotencyKeyInUse)):
        headers = {"Retry-After": str(exc.retry_after_seconds)}
    if isinstance(exc, AlreadyRedeemed):
        # For programs too: when, and for which order (null: none given).
        details = {"redeemed_at": format_utc(exc.redeemed_at), "order_id": exc.order_id or None}
    if isinstance(exc, ImportRejected):
        # The rows refused, by line, so that the file can be fixed.
        details = {"errors": exc.errors, "error_count": exc.error_count}
    return status_code, {**error_body(str(exc), code), **details}, headers


def api_exception_handler(exc, context):
    if isinstance(exc, CouponError):
        status_code, body, headers = domain_error(exc)
        return Response(body, status=status_code, headers=headers)
    if isinstance(exc, (OperationalError, InterfaceError)):
        # The database is down or restarting, a lock or statement timed out,
        # or no connection was to be had. Retrying is safe: a claim whose
        # commit went through even so (its answer lost on the way) gets 409
        # on the retry, never a second unit (tests/faults/).
        return error_response(
            "Service temporarily unavailable: the database cannot be reached. Retry shortly.",
            status.HTTP_503_SERVICE_UNAVAILABLE,
            ErrorCode.UNAVAILABLE,
            headers={"Retry-After": str(DATABASE_UNAVAILABLE_RETRY_AFTER)},
        )
    response = exception_handler(exc, context)
    if response is not None:
        code = STATUS_CODES.get(response.status_code, ErrorCode.INVALID)
        response.data = error_body(" ".join(_messages(response.data)), code)
    return response


def _messages(detail, prefix=""):
    """Flatten DRF error details ({"field": ["msg"]}, ["msg"], "msg") into lines."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            field_prefix = prefix if key in {"detail", "non_field_errors"} else f"{prefix}{key}: "
            yield from _messages(value, field_prefix)
    elif isinstance(detail, list):
        for item in detail:
            yield from _messages(item, prefix)
    else:
        yield f"{prefix}{detail}"


class StrictJSONParser(JSONParser):
    """DRF's JSON parser, also refusing bodies nested too deeply to decode.

    json raises RecursionError (not ValueError) on absurd nesting, which DRF's
    parser would let through as a 500.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None


class LenientContentNegotiation(DefaultContentNegotiation):
    """Answer in the first renderer's format (JSON) rather than 406 when nothing matches Accept."""

    def select_renderer(self, request, renderers, format_suffix=None):
        if len(renderers) == 1:  # the API's views: JSON whatever was asked, no Accept parsing
            return renderers[0], renderers[0].media_type
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except NotAcceptable:
            return renderers[0], renderers[0].media_type
