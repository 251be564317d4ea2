"""The campaigns' HTTP API: validate, call one service or selector, render."""

from dataclasses import asdict

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from campaigns.api.serializers import CampaignCreateInputSerializer, CampaignListSerializer, CampaignSerializer
from campaigns.exceptions import CampaignNotFound
from campaigns.selectors import get_campaign_detail, list_campaigns
from campaigns.services import create_campaign
from coupons.api.idempotency import idempotent
from coupons.api.key_access import ApiKeyRequired
from coupons.api.permissions import StaffOnlyWhenRestricted
from coupons.api.views import BODY_ERRORS, COMMON_ERRORS, error_response_schema
from coupons.validators import is_possible_coupon_name


class CampaignsApi(StaffOnlyWhenRestricted, ApiKeyRequired, APIView):
    api_key_scopes = {"POST": "create", "GET": "read"}

    @extend_schema(
        operation_id="campaigns_create",
        summary="Create a campaign",
        description="Coupons join it when they are created (POST /api/coupons with `campaign`).",
        request=CampaignCreateInputSerializer,
        responses={
            201: CampaignSerializer,
            400: error_response_schema("Invalid input: wrong types, blank or over-long name, a cap below 1."),
            409: error_response_schema("A campaign with this name already exists (campaign_exists)."),
            **BODY_ERRORS,
            **COMMON_ERRORS,
        },
    )
    @idempotent
    def post(self, request):
        serializer = CampaignCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        campaign = create_campaign(**serializer.validated_data)
        return Response(
            CampaignSerializer(asdict(get_campaign_detail(name=campaign.name))).data, status=status.HTTP_201_CREATED
        )

    @extend_schema(
        operation_id="campaigns_list",
        summary="The newest 100 campaigns",
        responses={200: CampaignListSerializer, **COMMON_ERRORS},
    )
    def get(self, request):
        return Response(CampaignListSerializer({"campaigns": [asdict(c) for c in list_campaigns()]}).data)


class CampaignDetailApi(ApiKeyRequired, APIView):
    api_key_scopes = {"GET": "read"}

    @extend_schema(
        operation_id="campaigns_retrieve",
        summary="Read a campaign: its caps, what is left, its coupons",
        responses={
            200: CampaignSerializer,
            404: error_response_schema("No campaign has this name (campaign_not_found)."),
            **COMMON_ERRORS,
        },
    )
    def get(self, request, name):
        if not is_possible_coupon_name(name):
            raise CampaignNotFound()
        return Response(CampaignSerializer(asdict(get_campaign_detail(name=name))).data)
