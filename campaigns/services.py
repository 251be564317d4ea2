"""Writes of campaigns: every change to a campaign goes through these functions."""

from django.db import IntegrityError, transaction

from campaigns.exceptions import CampaignAlreadyExists
from campaigns.models import Campaign


def create_campaign(*, name: str, max_claims: int | None = None, max_claims_per_user: int | None = None) -> Campaign:
    """A campaign with no coupons yet: coupons join it when they are created (POST /api/coupons, `campaign`)."""
    try:
        # A savepoint, so that a duplicate name leaves any caller's transaction usable.
        with transaction.atomic():
            return Campaign.objects.create(name=name, max_claims=max_claims, max_claims_per_user=max_claims_per_user)
    except IntegrityError as exc:
        if Campaign.objects.filter(name=name).exists():
            raise CampaignAlreadyExists() from exc
        raise
