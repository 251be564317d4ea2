"""POST /api/coupons/{name}/codes: import the shop's codes for a coupon's claims (coupons/imported_codes.py)."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from coupons.api.idempotency import idempotent
from coupons.api.key_access import ApiKeyRequired
from coupons.api.permissions import StaffOnlyWhenRestricted
from coupons.api.views import COMMON_ERRORS, coupon_detail_response, error_response_schema
from coupons.exceptions import CouponNotFound
from coupons.imported_codes import CSV, JSON_LINES
from coupons.models import MAX_AMOUNT
from coupons.services import import_codes
from coupons.validators import is_possible_coupon_name

FORMATS = {
    "text/csv": CSV,
    "application/x-ndjson": JSON_LINES,
    "application/jsonl": JSON_LINES,
}


class CodeImportQuerySerializer(serializers.Serializer):
    amount = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_AMOUNT,
        help_text="The coupon's stock, if lower than what its codes can serve (its live claims + its unused codes).",
    )


class CodeImportSerializer(serializers.Serializer):
    coupon_name = serializers.CharField()
    imported = serializers.IntegerField(help_text="Codes this import added.")
    unused_codes = serializers.IntegerField(help_text="The coupon's imported codes not handed out yet.")
    amount = serializers.IntegerField()
    remaining_amount = serializers.IntegerField()


class CodeImportApi(StaffOnlyWhenRestricted, ApiKeyRequired, APIView):
    api_key_scopes = {"POST": "create", "GET": "read"}
    # The body is streamed by the view itself, never parsed by DRF (nor held in memory).
    parser_classes = []

    @extend_schema(
        operation_id="coupons_codes_import",
        summary="Import the shop's codes for a coupon's claims",
        description="The body, streamed: CSV (`text/csv`: a row per line, the code in its first field, an optional"
        " header `code`)"
        ' or JSON lines (`application/x-ndjson`: `{"code": "..."}` or a JSON string per line), UTF-8. A code'
        " is 4 to 64 ASCII letters and digits, hyphens and spaces between them ignored, case ignored (stored upper"
        " case); a 16-character code of Crockford's letters must not hold I, L or O. All or nothing: malformed"
        " rows, a code twice, a code already in use are refused by line (`errors`, the first 1,000, and"
        " `error_count`), and nothing is kept. Then each granted claim of the coupon gets one of its codes, in"
        " import order, never the same twice, and its stock is what its codes can serve (or `amount`). With an"
        " Idempotency-Key the body is first copied to a temporary file while its SHA-256 (the key's fingerprint)"
        " is taken, then imported from that copy.",
        parameters=[CodeImportQuerySerializer],
        request={"text/csv": OpenApiTypes.STR, "application/x-ndjson": OpenApiTypes.STR},
        responses={
            201: CodeImportSerializer,
            400: error_response_schema(
                "Rows refused (import_rejected, with `errors` by line and `error_count`), no codes, `amount` above"
                " what the codes can serve, or an invalid `amount`."
            ),
            404: error_response_schema("No coupon has this name."),
            409: error_response_schema("`amount` is below the units already claimed (amount_below_claimed)."),
            415: error_response_schema("Neither CSV nor JSON lines."),
            **COMMON_ERRORS,
        },
    )
    @idempotent(streamed_body=True)
    def post(self, request, name):
        query = CodeImportQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        content_format = FORMATS.get(request.content_type.split(";")[0].strip().lower())
        if content_format is None:
            raise exceptions.UnsupportedMediaType(
                request.content_type,
                "Send the codes as text/csv, or as JSON lines (application/x-ndjson or application/jsonl).",
            )
        if not is_possible_coupon_name(name):
            raise CouponNotFound()
        done = import_codes(
            coupon_name=name,
            stream=request.body_stream,
            content_format=content_format,
            amount=query.validated_data.get("amount"),
        )
        return Response(CodeImportSerializer(done).data, status=status.HTTP_201_CREATED)

    @extend_schema(exclude=True)  # documented as GET /api/coupons/{name}
    def get(self, request, name):
        return coupon_detail_response(f"{name}/codes")


def document_import_body_required(result, generator, request, public):
    """drf-spectacular hook: a code import's body (CSV or JSON lines, not a serializer) is required, as the view
    requires it (no body: 415, or 400 no codes); drf-spectacular marks only serializer bodies required."""
    for operations in result["paths"].values():
        for operation in operations.values():
            if operation.get("operationId") == "coupons_codes_import":
                operation["requestBody"]["required"] = True
    return result
