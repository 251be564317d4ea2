from rest_framework import serializers

from coupons.api.serializers import COUPON_NAME, InputSerializer, StrictCharField, StrictIntegerField
from coupons.models import MAX_AMOUNT
from coupons.validators import validate_coupon_name


class CampaignCreateInputSerializer(InputSerializer):
    name = StrictCharField(validators=[validate_coupon_name], help_text=COUPON_NAME)
    max_claims = StrictIntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=MAX_AMOUNT,
        help_text="Units all its coupons together may have claimed (held or redeemed) at once. Absent or null: no cap.",
    )
    max_claims_per_user = StrictIntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=MAX_AMOUNT,
        help_text="How many of its coupons one user may hold at once (1: one coupon of the sale per customer)."
        " Absent or null: no limit.",
    )


class CampaignSerializer(serializers.Serializer):
    name = serializers.CharField()
    max_claims = serializers.IntegerField(allow_null=True)
    max_claims_per_user = serializers.IntegerField(allow_null=True)
    claimed = serializers.IntegerField(help_text="Units its coupons' live claims (held or redeemed) hold now.")
    remaining_claims = serializers.IntegerField(allow_null=True, help_text="max_claims - claimed; null: no cap.")
    coupons = serializers.ListField(child=serializers.CharField(), help_text="Its coupons' names, oldest first.")


class CampaignListSerializer(serializers.Serializer):
    campaigns = CampaignSerializer(many=True)
