from django.contrib import admin
from django.db.models import Count

from coupons.models import Claim, Coupon


class ClaimInline(admin.TabularInline):
    """A coupon's claims, read-only: claims are only ever made through the API."""

    model = Claim
    fields = ("user_id", "created_at")
    readonly_fields = fields
    ordering = ("id",)
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Coupon)
class CouponAdmin(admin.ModelAdmin):
    list_display = ("name", "amount", "remaining_amount", "claim_count", "created_at")
    search_fields = ("name",)
    date_hierarchy = "created_at"
    inlines = (ClaimInline,)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(claim_count=Count("claims"))

    @admin.display(description="claims", ordering="claim_count")
    def claim_count(self, obj):
        return obj.claim_count

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("name", "amount")  # remaining_amount starts at amount
        return ("name", "amount", "remaining_amount", "created_at")

    def get_readonly_fields(self, request, obj=None):
        # Once created, a coupon changes only through claims.
        if obj is None:
            return ()
        return ("name", "amount", "remaining_amount", "created_at")


@admin.register(Claim)
class ClaimAdmin(admin.ModelAdmin):
    list_display = ("user_id", "coupon", "created_at")
    list_select_related = ("coupon",)
    list_filter = ("coupon",)
    search_fields = ("user_id",)
    date_hierarchy = "created_at"

    # Claims are made by users through the API, never by hand: stock
    # arithmetic depends on every claim having gone through claim_coupon().
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
