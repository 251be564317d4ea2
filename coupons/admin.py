"""The operators' view of a live sale: stock at a glance, claims page by page, restock, CSV export.

Every page stays fast however many claims a coupon has: the coupon list
reads stock from the coupon row (no join with claims), and a coupon's page
reads one page of its claims.
"""

import structlog
from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import F
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from coupons.exceptions import CouponError
from coupons.exports import claims_csv_response
from coupons.models import Claim, Coupon
from coupons.selectors import coupon_claims
from coupons.services import create_coupon, restock_coupon

CLAIMS_PER_PAGE = 50

logger = structlog.get_logger(__name__)


class StockFilter(admin.SimpleListFilter):
    title = "stock"
    parameter_name = "stock"

    def lookups(self, request, model_admin):
        return [("available", "Available"), ("sold_out", "Sold out")]

    def queryset(self, request, queryset):
        if self.value() == "available":
            return queryset.filter(remaining_amount__gt=0)
        if self.value() == "sold_out":
            return queryset.filter(remaining_amount=0)
        return queryset


class CountedPaginator(Paginator):
    """A paginator told how many rows there are instead of counting them.

    A coupon's claims number exactly `amount - remaining_amount` (every claim
    takes one unit, and every release gives it back, in the same transaction):
    reading that from the coupon row saves a COUNT(*) over 100,000 claims.
    """

    def __init__(self, object_list, per_page, *, count):
        super().__init__(object_list, per_page)
        self.count = count


class RestockForm(forms.Form):
    amount = forms.IntegerField(
        label="New amount",
        help_text="The total number of units. The remaining stock moves by the same difference; "
        "the amount cannot go below the units already claimed.",
    )

    def clean_amount(self):
        amount = self.cleaned_data["amount"]
        # The model field's own validators: the rules the API applies to an amount.
        Coupon._meta.get_field("amount").run_validators(amount)
        return amount


@admin.register(Coupon)
class CouponAdmin(admin.ModelAdmin):
    list_display = ("name", "stock", "remaining_amount", "amount", "created_at")
    list_filter = (StockFilter,)
    search_fields = ("name",)
    date_hierarchy = "created_at"
    actions = ("export_claims_csv",)
    change_form_template = "admin/coupons/coupon/change_form.html"

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(claimed=F("amount") - F("remaining_amount"))

    @admin.display(description="claimed", ordering="claimed")
    def stock(self, coupon):
        claimed = coupon.claimed_amount
        return format_html(
            '<progress value="{}" max="{}" title="{}% claimed"></progress> {} / {}',
            claimed,
            coupon.amount,
            claimed * 100 // coupon.amount,
            claimed,
            coupon.amount,
        )

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("name", "amount")  # remaining_amount starts at amount
        return ("name", "stock", "remaining_amount", "amount", "created_at")

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.get_fields(request, obj)

    # A coupon's page never edits it: claims change its stock, and operators
    # change its amount through the restock page (restock_coupon), which needs
    # Django's "change coupon" permission.
    def has_change_permission(self, request, obj=None):
        return False

    def has_restock_permission(self, request):
        return request.user.has_perm(f"{self.opts.app_label}.change_{self.opts.model_name}")

    def has_delete_permission(self, request, obj=None):
        # Claims protect their coupon; only a coupon nobody claimed can go.
        # (No bulk delete either: its confirmation page would list every claim.)
        if obj is not None and obj.claimed_amount:
            return False
        return super().has_delete_permission(request, obj)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def save_model(self, request, obj, form, change):
        # Only the add form saves (a coupon's page is read-only): create the
        # coupon the way the API does.
        coupon = create_coupon(name=obj.name, amount=obj.amount)
        obj.pk, obj.remaining_amount, obj.created_at = coupon.pk, coupon.remaining_amount, coupon.created_at

    def get_urls(self):
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path(
                "<path:object_id>/restock/",
                self.admin_site.admin_view(self.restock_view),
                name=f"{prefix}_restock",
            ),
            path(
                "<path:object_id>/claims.csv",
                self.admin_site.admin_view(self.claims_csv_view),
                name=f"{prefix}_claims_csv",
            ),
            *super().get_urls(),
        ]

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            paginator = CountedPaginator(coupon_claims(coupon_id=obj.pk), CLAIMS_PER_PAGE, count=obj.claimed_amount)
            page = paginator.get_page(request.GET.get("claims_page"))
            context.update(
                can_restock=self.has_restock_permission(request),
                claims_page=page,
                claims_page_range=paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1),
                claims_changelist_url=reverse("admin:coupons_claim_changelist") + f"?coupon__id__exact={obj.pk}",
            )
        return super().render_change_form(request, context, add, change, form_url, obj)

    def get_viewable_coupon(self, request, object_id):
        coupon = self.get_object(request, unquote(object_id))
        if coupon is None:
            raise Http404("No such coupon.")
        if not self.has_view_permission(request, coupon):
            raise PermissionDenied
        return coupon

    def restock_view(self, request, object_id):
        coupon = self.get_viewable_coupon(request, object_id)
        if not self.has_restock_permission(request):
            raise PermissionDenied
        form = RestockForm(request.POST or None, initial={"amount": coupon.amount})
        if request.method == "POST" and form.is_valid():
            try:
                restocked = restock_coupon(coupon_name=coupon.name, amount=form.cleaned_data["amount"])
            except CouponError as exc:
                form.add_error("amount", str(exc))
            else:
                change = f"Restocked: amount {coupon.amount} → {restocked.amount}, {restocked.remaining_amount} left."
                self.log_change(request, restocked, change)
                logger.info(
                    "coupon_restocked",
                    coupon=restocked.name,
                    amount_before=coupon.amount,
                    amount=restocked.amount,
                    remaining_amount=restocked.remaining_amount,
                    operator=request.user.get_username(),
                )
                self.message_user(request, f"“{restocked}”: {change}", messages.SUCCESS)
                return redirect("admin:coupons_coupon_change", restocked.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Restock {coupon}",
            "opts": self.opts,
            "original": coupon,
            "form": form,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/coupons/coupon/restock.html", context)

    def claims_csv_view(self, request, object_id):
        coupon = self.get_viewable_coupon(request, object_id)
        return claims_csv_response([coupon], filename=f"{coupon.name}-claims.csv")

    @admin.action(description="Export the claims of the selected coupons as CSV", permissions=["view"])
    def export_claims_csv(self, request, queryset):
        return claims_csv_response(queryset, filename="coupon-claims.csv")


@admin.register(Claim)
class ClaimAdmin(admin.ModelAdmin):
    list_display = ("user_id", "coupon", "created_at")
    list_select_related = ("coupon",)
    list_filter = ("coupon",)
    search_fields = ("user_id",)
    date_hierarchy = "created_at"
    # A filtered list says "N claims" without also counting the whole table.
    show_full_result_count = False

    # Claims are made by users through the API, never by hand: stock
    # arithmetic depends on every claim having gone through claim_coupon().
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
