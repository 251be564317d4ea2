"""Fair admission over HTTP: validate the input, call one service or selector, render."""

from django.http import JsonResponse
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from admission.api.serializers import (
    ChallengeSerializer,
    DrawProofSerializer,
    EntryInputSerializer,
    EntrySerializer,
    JwksSerializer,
    StandingSerializer,
)
from admission.proof_of_work import new_challenge
from admission.selectors import get_draw_proof, get_standing
from admission.services import enter
from admission.tokens import jwks
from coupons.api.idempotency import idempotent
from coupons.api.key_access import ApiKeyRequired
from coupons.api.throttling import ClaimRateThrottle, ClaimRateThrottlePerKey
from coupons.api.views import BODY_ERRORS, COMMON_ERRORS, coupon_detail_response, error_response_schema
from coupons.exceptions import CouponNotFound
from coupons.validators import is_possible_coupon_name


def _check_name(name):
    if not is_possible_coupon_name(name):
        raise CouponNotFound()


class EntriesApi(ApiKeyRequired, APIView):
    """POST enters a user; a GET here reads the coupon whose name this whole path spells (as the release's path)."""

    api_key_scopes = {"POST": "claim", "GET": "read"}
    # Entries are limited per address and per key as claims are (CLAIM_RATE_LIMIT, CLAIM_RATE_LIMIT_PER_KEY).
    throttle_classes = [ClaimRateThrottle, ClaimRateThrottlePerKey]

    @extend_schema(
        operation_id="coupons_entries_create",
        summary="Enter a user for a queue or draw coupon",
        description="The coupon name is what precedes the final `/entries` of the path (and holds no `/claims/`)."
        " Entries open at `entries_open_at` (or when the coupon is created); a draw's close at `draw_at`.",
        request=EntryInputSerializer,
        responses={
            201: EntrySerializer,
            400: error_response_schema("Invalid input."),
            403: error_response_schema(
                "Entries not open yet (entries_not_open), or the draw is made or due (entries_closed). With"
                " ADMISSION_PROOF_OF_WORK: no `altcha` (proof_of_work_required); one that solves no challenge of"
                " this service, an expired one, or one an entry has used (proof_of_work_invalid). The proof of"
                " work is judged first, before the coupon is read."
            ),
            404: error_response_schema("No coupon has this name."),
            409: error_response_schema(
                "This user has entered already (already_entered), or the coupon is first come, first served"
                " (no_admission)."
            ),
            429: error_response_schema("Over CLAIM_RATE_LIMIT or CLAIM_RATE_LIMIT_PER_KEY."),
            **BODY_ERRORS,
            **COMMON_ERRORS,
        },
    )
    @idempotent
    def post(self, request, name):
        serializer = EntryInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        _check_name(name)
        data = serializer.validated_data
        entry = enter(coupon_name=name, user_id=data["user_id"], proof_of_work=data.get("altcha"))
        body = {"coupon_name": name, "user_id": entry.user_id, "status": entry.status, "position": entry.position}
        return Response(EntrySerializer(body).data, status=status.HTTP_201_CREATED)

    @extend_schema(exclude=True)  # documented as GET /api/coupons/{name}
    def get(self, request, name):
        return coupon_detail_response(f"{name}/entries")


class StandingApi(ApiKeyRequired, APIView):
    api_key_scopes = {"GET": "read"}

    @extend_schema(
        operation_id="coupons_entries_retrieve",
        summary="Where a user stands in a queue or draw (poll this)",
        description="The coupon name is what precedes the first `/entries/` of the path; the user id is the rest"
        " (it may hold `/`). Answered from a per-process cache refreshed every ADMISSION_POLL_REFRESH_MS: no"
        " database statement per poll in the steady state. While `admitted`, `admission_token` is the token to"
        " claim with, valid until `admitted_until`.",
        responses={
            200: StandingSerializer,
            404: error_response_schema("No such coupon (not_found), or this user has not entered (entry_not_found)."),
            409: error_response_schema("The coupon is first come, first served (no_admission)."),
            **COMMON_ERRORS,
        },
    )
    def get(self, request, name, user_id):
        _check_name(name)
        try:
            standing = get_standing(coupon_name=name, user_id=user_id)
        except CouponNotFound:
            return coupon_detail_response(f"{name}/entries/{user_id}")  # a coupon whose name holds "/entries/"
        body = {key: value for key, value in standing.__dict__.items() if value is not None or key in _ALWAYS}
        return Response(StandingSerializer(body).data)


# Shown even when null; the token and its deadline only while admitted.
_ALWAYS = {"position", "ahead", "estimated_wait_seconds"}


class DrawApi(ApiKeyRequired, APIView):
    api_key_scopes = {"GET": "read"}

    @extend_schema(
        operation_id="coupons_draw_retrieve",
        summary="A draw's public proof",
        description="Before the draw: the commitment and the entries so far. After: the seed (whose SHA-256 is the"
        " commitment), the frozen entry list and its hash, the winners and the waiting list, which anyone can"
        " recompute (docs: Fair admission, verifying a draw). The coupon name is what precedes the final `/draw`.",
        responses={
            200: DrawProofSerializer,
            404: error_response_schema("No such coupon (not_found), or its admission is not a draw (not_a_draw)."),
            **COMMON_ERRORS,
        },
    )
    def get(self, request, name):
        _check_name(name)
        try:
            proof = get_draw_proof(coupon_name=name)
        except CouponNotFound:
            return coupon_detail_response(f"{name}/draw")  # a coupon whose name ends in "/draw"
        return Response(DrawProofSerializer(proof).data)


class ChallengeApi(APIView):
    # No key: ALTCHA's widget fetches its challenge from the user's browser. A challenge costs two HMACs and a
    # random number, and no query.
    authentication_classes = []
    permission_classes = []

    @extend_schema(
        operation_id="admission_challenge",
        summary="A proof-of-work challenge for an entry (ALTCHA)",
        description="With ADMISSION_PROOF_OF_WORK on, an entry carries a solution of one of these as `altcha`."
        " The format is ALTCHA's (v2, PBKDF2/SHA-256): its widget takes this path as its challenge URL. A"
        " challenge is valid for ADMISSION_PROOF_OF_WORK_SECONDS and enters once.",
        responses={200: ChallengeSerializer},
    )
    def get(self, request):
        return JsonResponse(new_challenge(), headers={"Cache-Control": "no-store"})


class JwksApi(APIView):
    authentication_classes = []
    permission_classes = []

    @extend_schema(
        operation_id="admission_jwks",
        summary="The public keys of admission tokens (JWKS)",
        description="Ed25519 keys (RFC 8037) that verify admission tokens: every key of ADMISSION_SIGNING_KEYS.",
        responses={200: JwksSerializer},
    )
    def get(self, request):
        # Public keys: anyone (an edge, a client) may check a token's signature.
        return JsonResponse(jwks(), headers={"Cache-Control": "public, max-age=300"})
