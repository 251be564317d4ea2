"""Reads of campaigns."""

from dataclasses import dataclass

from campaigns.exceptions import CampaignNotFound
from campaigns.models import Campaign, CampaignCoupon


@dataclass(frozen=True)
class CampaignDetail:
    name: str
    max_claims: int | None
    max_claims_per_user: int | None
    claimed: int  # units its coupons' live claims hold
    remaining_claims: int | None  # max_claims - claimed; None: no cap
    coupons: list[str]


def get_campaign_detail(*, name: str) -> CampaignDetail:
    """The campaign, its counter as last committed, and its coupons' names (oldest first)."""
    campaign = Campaign.objects.filter(name=name).first()
    if campaign is None:
        raise CampaignNotFound()
    return _detail(campaign)


def list_campaigns(*, limit: int = 100) -> list[CampaignDetail]:
    """The newest campaigns first, `limit` of them."""
    return [_detail(campaign) for campaign in Campaign.objects.all()[:limit]]


def _detail(campaign):
    coupons = list(
        CampaignCoupon.objects.filter(campaign=campaign).order_by("coupon_id").values_list("coupon__name", flat=True)
    )
    return CampaignDetail(
        name=campaign.name,
        max_claims=campaign.max_claims,
        max_claims_per_user=campaign.max_claims_per_user,
        claimed=campaign.taken,
        remaining_claims=campaign.remaining_claims,
        coupons=coupons,
    )
