"""How the API turns failures into JSON: the one place that maps errors to HTTP.

Every error body is {"error": "<message>"}.
"""

from django.db import InterfaceError, OperationalError
from rest_framework import status
from rest_framework.exceptions import NotAcceptable, ParseError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import exception_handler

from coupons.exceptions import (
    AlreadyClaimed,
    AmountBelowClaimed,
    CouponAlreadyExists,
    CouponError,
    CouponNotFound,
    OutOfStock,
)

DOMAIN_ERROR_STATUS = {
    CouponNotFound: status.HTTP_404_NOT_FOUND,
    CouponAlreadyExists: status.HTTP_409_CONFLICT,
    AlreadyClaimed: status.HTTP_409_CONFLICT,
    OutOfStock: status.HTTP_400_BAD_REQUEST,
    AmountBelowClaimed: status.HTTP_409_CONFLICT,
}

# Seconds a client should wait before retrying when the database is away.
DATABASE_UNAVAILABLE_RETRY_AFTER = 1


def error_response(message, status_code, headers=None):
    return Response({"error": message}, status=status_code, headers=headers)


def api_exception_handler(exc, context):
    if isinstance(exc, CouponError):
        return error_response(str(exc), DOMAIN_ERROR_STATUS[type(exc)])
    if isinstance(exc, (OperationalError, InterfaceError)):
        # The database is down or restarting, a lock or statement timed out,
        # or no connection was to be had. Retrying is safe: a claim whose
        # commit went through even so (its answer lost on the way) gets 409
        # on the retry, never a second unit (tests/faults/).
        return error_response(
            "Service temporarily unavailable: the database cannot be reached. Retry shortly.",
            status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(DATABASE_UNAVAILABLE_RETRY_AFTER)},
        )
    response = exception_handler(exc, context)
    if response is not None:
        response.data = {"error": " ".join(_messages(response.data))}
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
