"""The HTTP API: validate the input, call one service or selector, render."""

import functools

from drf_orjson_renderer.parsers import ORJSONParser
from drf_orjson_renderer.renderers import ORJSONRenderer
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from coupons import extensions
from coupons.api.claim_outcomes import record_claim_outcome
from coupons.api.cursors import decode_cursor, encode_cursor
from coupons.api.idempotency import answering, idempotent
from coupons.api.key_access import ApiKeyRequired
from coupons.api.permissions import StaffOnlyWhenRestricted, StaffOrKeyToDelete, operator_name
from coupons.api.serializers import (
    ClaimInputSerializer,
    ClaimSerializer,
    CouponCreateInputSerializer,
    CouponDetailSerializer,
    CouponSerializer,
    ErrorSerializer,
    ReleaseInputSerializer,
    UserClaimsPageSerializer,
    UserClaimsQuerySerializer,
)
from coupons.api.throttling import ClaimRateThrottle, ClaimRateThrottlePerKey
from coupons.exceptions import CouponNotFound
from coupons.models import LIVE_STATUSES
from coupons.selectors import get_coupon_detail, get_user_claims_page
from coupons.services import claim_coupon, create_coupon, release_claim
from coupons.validators import is_possible_coupon_name


def error_response_schema(description):
    return OpenApiResponse(ErrorSerializer, description=description)


# Failures any endpoint can answer with.
COMMON_ERRORS = {
    503: error_response_schema("The database is unreachable; retry after the Retry-After delay."),
}
BODY_ERRORS = {
    411: error_response_schema("The body was sent chunked, without a Content-Length."),
    413: error_response_schema("The request body is larger than the limit."),
    415: error_response_schema("The body is not sent as application/json."),
}
DETAIL_RESPONSES = {
    200: CouponDetailSerializer,
    404: error_response_schema("No coupon has this name."),
    **COMMON_ERRORS,
}


def coupon_detail_response(name):
    # A name no coupon can have (control characters, NUL among them, which
    # PostgreSQL cannot even compare) is answered without a query.
    if not is_possible_coupon_name(name):
        raise CouponNotFound()
    return Response({**CouponDetailSerializer(get_coupon_detail(name=name)).data, **extensions.details_of(name)})


class CouponCreateApi(StaffOnlyWhenRestricted, ApiKeyRequired, APIView):
    api_key_scopes = {"POST": "create"}

    @extend_schema(
        operation_id="coupons_create",
        summary="Create a coupon",
        # Explicit: without it the schema shows the permission mixin's docstring, which speaks to maintainers.
        description="Anyone, unless COUPON_CREATE_REQUIRES_STAFF is on: then a staff user only (a DRF token, or an"
        " admin session with its CSRF token).",
        request=CouponCreateInputSerializer,
        responses={
            201: CouponSerializer,
            400: error_response_schema(
                "Invalid input: malformed JSON, wrong types, blank or over-long name, amount out of range,"
                " a timestamp without an offset, or ends_at not after starts_at."
            ),
            401: error_response_schema("COUPON_CREATE_REQUIRES_STAFF is on and no valid token or session was sent."),
            403: error_response_schema("COUPON_CREATE_REQUIRES_STAFF is on and the user is not staff."),
            # An extension's field (coupons/extensions.py) naming something that is not there: nothing is created.
            404: error_response_schema("The campaign named by `campaign` does not exist (campaign_not_found)."),
            409: error_response_schema("A coupon with this name already exists."),
            **BODY_ERRORS,
            **COMMON_ERRORS,
        },
    )
    @idempotent
    def post(self, request):
        serializer = CouponCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        fields, options = serializer.extension_options(serializer.validated_data)
        coupon = create_coupon(**fields, options=options)
        body = {**CouponSerializer(coupon).data, **extensions.details_of(coupon.name)}
        return Response(body, status=status.HTTP_201_CREATED)


class ClaimApi(ApiKeyRequired, APIView):
    api_key_scopes = {"POST": "claim", "GET": "read"}
    throttle_classes = [ClaimRateThrottle, ClaimRateThrottlePerKey]
    # orjson: 4.6% fewer instructions per sold-out refusal than DRF's json parser and renderer
    # (docs/performance.md). Here only: every value this view renders is a string, a number or null, so the
    # bytes are DRF's; elsewhere DRF's renderer writes datetimes its own way ("Z", milliseconds).
    parser_classes = [ORJSONParser]
    renderer_classes = [ORJSONRenderer]

    @extend_schema(
        operation_id="coupons_claim",
        summary="Claim a coupon for a user",
        description="One unit of the coupon's stock for the user: at most one claim per user and coupon, never more"
        " claims than the stock. The 201 carries the claim's code, which the shop's checkout redeems.",
        request=ClaimInputSerializer,
        parameters=[
            OpenApiParameter(
                "Retry-After",
                OpenApiTypes.INT,
                OpenApiParameter.HEADER,
                response=[403, 429, 503],
                description="Whole seconds to wait before retrying.",
            )
        ],
        responses={
            201: ClaimSerializer,
            400: error_response_schema(
                "Invalid input (code invalid), or the coupon has no stock left (code out_of_stock)."
            ),
            403: error_response_schema(
                "Outside the sale window, by the database's clock: sale_not_started (with Retry-After, the whole"
                " seconds until the start, rounded up) or sale_ended. Checked after 404 and 409, before 400."
            ),
            404: error_response_schema("No coupon has this name."),
            409: error_response_schema("This user has already claimed this coupon."),
            429: error_response_schema(
                "Over CLAIM_RATE_LIMIT for this client, or CLAIM_RATE_LIMIT_PER_KEY for this API key;"
                " retry after the Retry-After delay."
            ),
            **BODY_ERRORS,
            **COMMON_ERRORS,
        },
    )
    @idempotent(answered_in_service=True)
    @record_claim_outcome
    def post(self, request):
        serializer = ClaimInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        claimed, claim_input = serializer.extension_options(serializer.validated_data)
        granted = functools.partial(granted_response, claimed)
        # With an Idempotency-Key, the claim group stores this answer, code and all, in its transaction.
        claim = claim_coupon(**claimed, claim_input=claim_input, idempotency=answering(request, granted))
        return granted(claim)

    # Out of the schema: GET /api/coupons/{name} with the name `claim` is this very request, and documents it. As
    # an operation of its own it had no parameter to vary, and its 404 misled clients and fuzzers into
    # taking it for an endpoint.
    @extend_schema(exclude=True)
    def get(self, request):
        return coupon_detail_response("claim")


def granted_response(claimed, claim):
    """The 201 of a granted claim: what was claimed (the validated input), and the claim's code, status and hold."""
    body = {**claimed, "code": claim.code, "status": claim.status, "expires_at": claim.expires_at}
    return Response(ClaimSerializer(body).data, status=status.HTTP_201_CREATED)


class CouponDetailApi(ApiKeyRequired, APIView):
    api_key_scopes = {"GET": "read"}

    @extend_schema(
        operation_id="coupons_retrieve",
        summary="Read a coupon and its claimers",
        description="The name is percent-encoded in the path (spaces, `/`, `?`, `#`, `%`, non-ASCII). The coupon"
        " named `claim` is read here too (`GET /api/coupons/claim`; a POST there claims).",
        responses=DETAIL_RESPONSES,
    )
    def get(self, request, name):
        return coupon_detail_response(name)


class ClaimReleaseApi(StaffOrKeyToDelete, ApiKeyRequired, APIView):
    """DELETE releases a claim, and is never anonymous: a staff user (DRF token, or admin session with CSRF)
    or an API key with the `release` scope, whether or not API_KEYS_REQUIRED is on. A GET here reads the
    coupon whose name this path spells (below), like any read."""

    api_key_scopes = {"GET": "read"}
    delete_scope = "release"

    @extend_schema(
        operation_id="coupons_claims_release",
        summary="Release a user's claim back to stock",
        description="Staff (a DRF token, or an admin session with its CSRF token) or an API key with the `release`"
        " scope, never anonymous. The user's live claim (held or redeemed) becomes `released` (kept for audit),"
        " `remaining_amount` goes up by one, the user may claim again while the sale is live, and the release"
        " is recorded (coupon, user, when, by whom, reason). The coupon name is what precedes the first"
        " `/claims/` of the path.",
        request=ReleaseInputSerializer,
        responses={
            204: OpenApiResponse(description="Released."),
            400: error_response_schema("Invalid body: the reason must be a string of 1 to 255 characters."),
            401: error_response_schema("No valid token, session or API key was sent."),
            403: error_response_schema(
                "The user is not staff, the session's CSRF token is missing, or the key lacks `release`."
            ),
            404: error_response_schema(
                "No coupon has this name (not_found), or this user holds no claim of it (claim_not_found)."
            ),
            **BODY_ERRORS,
            **COMMON_ERRORS,
        },
    )
    @idempotent
    def delete(self, request, name, user_id):
        serializer = ReleaseInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        release_claim(
            coupon_name=name, user_id=user_id, released_by=operator_name(request), **serializer.validated_data
        )
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(exclude=True)  # documented as GET /api/coupons/{name}
    def get(self, request, name, user_id):
        return coupon_detail_response(f"{name}/claims/{user_id}")


class UserClaimsApi(ApiKeyRequired, APIView):
    api_key_scopes = {"GET": "read"}

    @extend_schema(
        operation_id="users_claims_list",
        summary="A user's claims, newest first, a page at a time",
        description="Keyset pagination: pass `next` back as `cursor` for the following page. A user with no claims"
        " gets an empty list. By default the claims that hold a unit (held, redeemed); `status` picks others.",
        parameters=[UserClaimsQuerySerializer],
        responses={
            200: UserClaimsPageSerializer,
            # The URL pattern's "." stops at a line break, as Django's own converters do: such a path is no route.
            404: error_response_schema("A user id holding a line break, which no user id can (not_found)."),
            400: error_response_schema(
                "`limit` is not an integer from 1 to 100, `cursor` is not one this API gave out, `status` is no"
                " claim status, or a parameter is sent empty (`?cursor=`): leave it out instead."
            ),
            **COMMON_ERRORS,
        },
    )
    def get(self, request, user_id):
        query = UserClaimsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        cursor = query.validated_data.get("cursor")
        page = get_user_claims_page(
            user_id=user_id,
            limit=query.validated_data["limit"],
            after=decode_cursor(cursor) if cursor is not None else None,
            statuses=query.validated_data.get("status") or LIVE_STATUSES,
        )
        body = {"user_id": page.user_id, "claims": page.claims, "next": encode_cursor(page.next_position)}
        return Response(UserClaimsPageSerializer(body).data)
