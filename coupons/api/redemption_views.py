"""Redemption over HTTP: a shop's checkout spends a claim's code, reads its state, and undoes a redemption.

The code is a bearer secret: it never reaches a log line (couponsite/logs.py
redacts it from the paths that carry it) or a metric label.
"""

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from coupons.api.idempotency import idempotent
from coupons.api.key_access import ApiKeyRequired
from coupons.api.permissions import StaffOrKeyToDelete, operator_name
from coupons.api.serializers import (
    CLAIM_CODE,
    CLAIM_CODE_SCHEMA,
    AlreadyRedeemedErrorSerializer,
    RedemptionInputSerializer,
    RedemptionSerializer,
    UndoRedemptionInputSerializer,
)
from coupons.api.views import BODY_ERRORS, COMMON_ERRORS, error_response_schema
from coupons.claim_codes import normalise_code
from coupons.selectors import get_redemption
from coupons.services import redeem_claim, undo_redemption

CODE_PARAMETER = OpenApiParameter("code", CLAIM_CODE_SCHEMA, OpenApiParameter.PATH, description=CLAIM_CODE)
NOT_FOUND = error_response_schema("No claim has this code (code_not_found).")
MALFORMED = error_response_schema("Not a code: another alphabet, the wrong length, a control character (invalid).")


class RedemptionApi(ApiKeyRequired, APIView):
    api_key_scopes = {"POST": "redeem"}

    @extend_schema(
        operation_id="redemptions_create",
        summary="Redeem a claim's code",
        description="Exactly once: of any number of concurrent redemptions of one code, one is answered 201 and"
        " the others 409. The stock does not change (a redeemed claim keeps its unit).",
        request=RedemptionInputSerializer,
        responses={
            201: RedemptionSerializer,
            400: error_response_schema(
                "Invalid input (code invalid): a malformed code, order_id or coupon_name, or malformed JSON."
            ),
            403: error_response_schema("At or after the coupon's redeem_until, by the database's clock."),
            404: error_response_schema(
                "No claim has this code, or (with coupon_name) no claim of that coupon (code_not_found)."
            ),
            409: OpenApiResponse(
                AlreadyRedeemedErrorSerializer,
                description="Already redeemed (already_redeemed): the body says when and for which order.",
            ),
            410: error_response_schema(
                "The claim no longer holds a unit: released by an operator, or its hold expired (claim_expired)."
            ),
            **BODY_ERRORS,
            **COMMON_ERRORS,
        },
    )
    @idempotent
    def post(self, request):
        serializer = RedemptionInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        redemption = redeem_claim(**serializer.validated_data)
        return Response(RedemptionSerializer(redemption).data, status=status.HTTP_201_CREATED)


class RedemptionDetailApi(StaffOrKeyToDelete, ApiKeyRequired, APIView):
    """GET reads a code's state. DELETE undoes its redemption, and is never anonymous: a staff user (DRF token,
    or admin session with CSRF) or an API key with the `redeem` scope, whether or not API_KEYS_REQUIRED is on."""

    api_key_scopes = {"GET": "redeem"}
    delete_scope = "redeem"

    @extend_schema(
        operation_id="redemptions_retrieve",
        summary="Read a claim's state by its code",
        parameters=[CODE_PARAMETER],
        responses={200: RedemptionSerializer, 400: MALFORMED, 404: NOT_FOUND, **COMMON_ERRORS},
    )
    def get(self, request, code):
        return Response(RedemptionSerializer(get_redemption(code=normalise_code(code))).data)

    @extend_schema(
        operation_id="redemptions_destroy",
        summary="Undo a redemption (its order was cancelled)",
        description="Staff (a DRF token, or an admin session with its CSRF token) or an API key with the `redeem`"
        " scope, never anonymous. The claim is held again: its unit stays taken, its hold keeps its deadline."
        " The undo deletes the redemption, not the claim: the code is still there, and GET"
        " /api/redemptions/{code} then answers 200 with `status: held`."
        " The redemption undone is recorded (order, when it was redeemed, when undone, by whom, reason).",
        parameters=[CODE_PARAMETER],
        request=UndoRedemptionInputSerializer,
        responses={
            204: OpenApiResponse(description="Undone: the claim is held again."),
            400: MALFORMED,
            401: error_response_schema("No valid token, session or API key was sent."),
            403: error_response_schema("Not staff, the session's CSRF token is missing, or the key lacks `redeem`."),
            404: NOT_FOUND,
            409: error_response_schema("The code is not redeemed: nothing to undo (not_redeemed)."),
            410: error_response_schema("The claim was released by an operator (claim_expired)."),
            **BODY_ERRORS,
            **COMMON_ERRORS,
        },
    )
    @idempotent
    def delete(self, request, code):
        code = normalise_code(code)
        serializer = UndoRedemptionInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        undo_redemption(code=code, undone_by=operator_name(request), **serializer.validated_data)
        return Response(status=status.HTTP_204_NO_CONTENT)
