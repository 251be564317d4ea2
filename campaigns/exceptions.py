"""The campaigns' own refusals: coupons.api maps them to HTTP through the extension's http_errors."""

from coupons.exceptions import CouponError


class CampaignExhausted(CouponError):
    default_message = "This coupon's campaign has no units left (its max_claims is reached)."


class CampaignLimitReached(CouponError):
    default_message = "This user already holds as many of this campaign's coupons as it allows (max_claims_per_user)."


class CampaignNotFound(CouponError):
    default_message = "No campaign has this name."


class CampaignAlreadyExists(CouponError):
    default_message = "A campaign with this name already exists."
