from django.urls import path

from campaigns.api.views import CampaignDetailApi, CampaignsApi

urlpatterns = [
    path("campaigns", CampaignsApi.as_view(), name="campaigns"),
    path("campaigns/<path:name>", CampaignDetailApi.as_view(), name="campaign-detail"),
]
