"""Campaigns in the admin: created here or through the API; their counts read live from the counter row."""

from django.contrib import admin

from campaigns.models import Campaign, CampaignCoupon


class CampaignCouponInline(admin.TabularInline):
    """Its coupons (they join when they are created: POST /api/coupons with `campaign`)."""

    model = CampaignCoupon
    fields = ["coupon"]
    readonly_fields = ["coupon"]
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        # A coupon joins when created: joining later would need its live claims added to the counter.
        return False


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ["name", "max_claims", "max_claims_per_user", "taken", "remaining", "created_at"]
    search_fields = ["name"]
    inlines = [CampaignCouponInline]

    @admin.display(description="units left")
    def remaining(self, campaign):
        left = campaign.remaining_claims
        return "no cap" if left is None else left

    def get_readonly_fields(self, request, obj=None):
        # The caps are set once: changed under a running sale, the counter would no longer agree with them (the
        # database's CHECK refuses max_claims below the units taken).
        if obj is None:
            return ["taken", "remaining"]
        return ["name", "max_claims", "max_claims_per_user", "taken", "remaining"]
