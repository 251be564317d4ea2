"""The operators' view of a live sale: stock at a glance, claims page by page, restock, CSV export.

Every page stays fast however many claims a coupon has: the coupon list
reads stock from the coupon row (no join with claims), and a coupon's page
reads one page of its claims.
"""

import copy

import structlog
from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.admin.widgets import AdminSplitDateTime
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import F
from django.db.models.functions import Now
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey

from coupons import extensions
from coupons.claim_codes import format_code, normalise_code
from coupons.exceptions import CouponError, ImportRejected, MalformedCode
from coupons.exports import claims_csv_response
from coupons.imported_codes import CSV, JSON_LINES
from coupons.models import (
    API_KEY_SCOPES,
    LIVE_STATUSES,
    Claim,
    ClaimRelease,
    ClaimStatus,
    ClientApiKey,
    Coupon,
    Event,
    RedemptionUndo,
    WebhookDelivery,
    WebhookSubscription,
)
from coupons.outbox import EVENT_TYPES
from coupons.sale_windows import SaleStatus, format_utc
from coupons.selectors import count_claims_by_status, coupon_claims, filter_by_sale_status
from coupons.services import create_coupon, import_codes, release_claim, restock_coupon, schedule_sale
from coupons.webhooks import check_url, create_subscription

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


class SaleStatusFilter(admin.SimpleListFilter):
    title = "sale status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [(status.value, status.label) for status in SaleStatus]

    def queryset(self, request, queryset):
        if self.value() in [status.value for status in SaleStatus]:
            return filter_by_sale_status(queryset, SaleStatus(self.value()))
        return queryset


class CountedPaginator(Paginator):
    """A paginator told how many rows there are instead of counting them again.

    A coupon's page counts its claims by status anyway (one GROUP BY over
    the (coupon, status) index); their sum is the number of rows.
    """

    def __init__(self, object_list, per_page, *, count):
        super().__init__(object_list, per_page)
        self.count = count


class ScheduleForm(forms.ModelForm):
    """The sale window, in the operator's time zone (settings.TIME_ZONE, from ADMIN_TIME_ZONE)."""

    class Meta:
        model = Coupon
        fields = ("starts_at", "ends_at")
        widgets = {"starts_at": AdminSplitDateTime, "ends_at": AdminSplitDateTime}
        field_classes = {"starts_at": forms.SplitDateTimeField, "ends_at": forms.SplitDateTimeField}


class ImportCodesForm(forms.Form):
    file = forms.FileField(
        help_text="CSV (the code in the first column, an optional header `code`) or JSON lines (a .jsonl or .ndjson"
        ' file: {"code": "..."} per line). All or nothing.'
    )
    amount = forms.IntegerField(
        required=False, min_value=1, help_text="The stock, if lower than what the codes can serve; empty: all of it."
    )


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


class ReadOnly:
    """A ModelAdmin or inline mixin: rows are only ever read here."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReleaseInline(ReadOnly, admin.TabularInline):
    """The coupon's releases, newest first: read-only, like the audit trail they are."""

    model = ClaimRelease
    fields = ("user_id", "claimed_at", "released_at", "released_by", "reason")
    readonly_fields = fields
    extra = 0
    verbose_name_plural = "releases"


@admin.register(Coupon)
class CouponAdmin(admin.ModelAdmin):
    # New columns go after the first four, so that sorted-list links (?o=2) keep their meaning.
    list_display = ("name", "stock", "remaining_amount", "amount", "status", "starts_at", "ends_at", "created_at")
    list_filter = (SaleStatusFilter, StockFilter)
    inlines = (ReleaseInline,)
    search_fields = ("name",)
    date_hierarchy = "created_at"
    actions = ("export_claims_csv",)
    change_form_template = "admin/coupons/coupon/change_form.html"

    def get_queryset(self, request):
        # The database's clock rides along with each row: the status is the API's.
        return super().get_queryset(request).annotate(claimed=F("amount") - F("remaining_amount"), database_now=Now())

    @admin.display(description="status")
    def status(self, coupon):
        return coupon.window.status(now=coupon.database_now, remaining_amount=coupon.remaining_amount).label

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

    def get_inlines(self, request, obj):
        return self.inlines if obj is not None else ()  # a new coupon has no releases

    def get_fields(self, request, obj=None):
        if obj is None:
            # remaining_amount starts at amount; the extensions' own fields (a campaign...) after the coupon's
            return (
                "name",
                "amount",
                "starts_at",
                "ends_at",
                "hold_seconds",
                "redeem_until",
                *extensions.extra_fields("admin_create"),
            )
        return (
            "name",
            "status",
            "stock",
            "remaining_amount",
            "amount",
            "starts_at",
            "ends_at",
            "hold_seconds",
            "redeem_until",
            "created_at",
        )

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.get_fields(request, obj)

    # A coupon's page never edits it: claims change its stock, and operators
    # change its amount through the restock page (restock_coupon) and its
    # window through the schedule page (schedule_sale), which need Django's
    # "change coupon" permission.
    def has_change_permission(self, request, obj=None):
        return False

    def has_restock_permission(self, request):
        return request.user.has_perm(f"{self.opts.app_label}.change_{self.opts.model_name}")

    def has_delete_permission(self, request, obj=None):
        # Claims protect their coupon, expired and released ones too; only a
        # coupon nobody claimed can go. (No bulk delete either: its
        # confirmation page would list every claim.)
        if obj is not None and (obj.claimed_amount or obj.claims.exists()):
            return False
        return super().has_delete_permission(request, obj)

    def delete_model(self, request, obj):
        # The row first (the admin's delete runs in one transaction): an import of the coupon's codes holds it FOR
        # KEY SHARE until it commits, so the cascade looks for the codes only once that import is over (sooner, it
        # would miss them, and the coupon's DELETE then break their foreign key).
        list(Coupon.objects.select_for_update().filter(pk=obj.pk).values_list("pk"))
        super().delete_model(request, obj)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            # The add form also shows the extensions' fields (coupons/extensions.py: admin_create_fields).
            extra = {name: copy.deepcopy(field) for name, field in extensions.extra_fields("admin_create").items()}
            kwargs["form"] = type("CouponAddForm", (self.form,), extra)
        return super().get_form(request, obj, change, **kwargs)

    def save_model(self, request, obj, form, change):
        # Only the add form saves (a coupon's page is read-only): create the
        # coupon the way the API does.
        options = {
            name: form.cleaned_data[name]
            for name in extensions.extra_fields("admin_create")
            if form.cleaned_data.get(name) not in (None, "")
        }
        coupon = create_coupon(
            options=options,
            name=obj.name,
            amount=obj.amount,
            starts_at=obj.starts_at,
            ends_at=obj.ends_at,
            hold_seconds=obj.hold_seconds,
            redeem_until=obj.redeem_until,
        )
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
                "<path:object_id>/import-codes/",
                self.admin_site.admin_view(self.import_codes_view),
                name=f"{prefix}_import_codes",
            ),
            path(
                "<path:object_id>/schedule/",
                self.admin_site.admin_view(self.schedule_view),
                name=f"{prefix}_schedule",
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
            counts = count_claims_by_status(coupon_id=obj.pk)
            paginator = CountedPaginator(coupon_claims(coupon_id=obj.pk), CLAIMS_PER_PAGE, count=sum(counts.values()))
            page = paginator.get_page(request.GET.get("claims_page"))
            for claim in page.object_list:
                claim["code"] = format_code(claim["code"])
                claim["status"] = ClaimStatus(claim["status"]).label
            context.update(
                claim_counts=[(status.label, count) for status, count in counts.items()],
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

    def get_changeable_coupon(self, request, object_id):
        """The coupon of a restock or schedule page, for operators with the "change coupon" permission."""
        coupon = self.get_viewable_coupon(request, object_id)
        if not self.has_restock_permission(request):
            raise PermissionDenied
        return coupon

    def coupon_changed(self, request, coupon, change):
        """Record the change in the coupon's history, say so, and go back to the coupon's page."""
        self.log_change(request, coupon, change)
        self.message_user(request, f"“{coupon}”: {change}", messages.SUCCESS)
        return redirect("admin:coupons_coupon_change", coupon.pk)

    def coupon_form_page(self, request, coupon, form, operation):
        context = {
            **self.admin_site.each_context(request),
            "title": f"{operation} {coupon}",
            "operation": operation,
            "opts": self.opts,
            "original": coupon,
            "form": form,
            "media": self.media + form.media,
        }
        template = operation.lower().replace(" ", "_")
        return TemplateResponse(request, f"admin/coupons/coupon/{template}.html", context)

    def restock_view(self, request, object_id):
        coupon = self.get_changeable_coupon(request, object_id)
        form = RestockForm(request.POST or None, initial={"amount": coupon.amount})
        if request.method == "POST" and form.is_valid():
            try:
                restocked = restock_coupon(coupon_name=coupon.name, amount=form.cleaned_data["amount"])
            except CouponError as exc:
                form.add_error("amount", str(exc))
            else:
                logger.info(
                    "coupon_restocked",
                    coupon=restocked.name,
                    amount_before=coupon.amount,
                    amount=restocked.amount,
                    remaining_amount=restocked.remaining_amount,
                    operator=request.user.get_username(),
                )
                change = f"Restocked: amount {coupon.amount} → {restocked.amount}, {restocked.remaining_amount} left."
                return self.coupon_changed(request, restocked, change)
        return self.coupon_form_page(request, coupon, form, "Restock")

    def import_codes_view(self, request, object_id):
        """The shop's codes for the coupon's claims, from a CSV or JSON lines file (coupons/imported_codes.py)."""
        coupon = self.get_changeable_coupon(request, object_id)
        form = ImportCodesForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            content_format = JSON_LINES if upload.name.lower().endswith((".jsonl", ".ndjson")) else CSV
            try:
                # The upload is read from Django's temporary file as it goes: never held whole.
                done = import_codes(
                    coupon_name=coupon.name,
                    stream=upload,
                    content_format=content_format,
                    amount=form.cleaned_data["amount"],
                )
            except ImportRejected as exc:
                form.add_error("file", str(exc))
                for error in exc.errors[:20]:
                    form.add_error("file", f"line {error['line']}: {error['reason']} ({error['code']!r})")
            except CouponError as exc:
                form.add_error(None, str(exc))
            else:
                logger.info(
                    "codes_imported", coupon=coupon.name, imported=done.imported, operator=request.user.get_username()
                )
                change = f"Imported {done.imported} codes: amount {done.amount}, {done.remaining_amount} left."
                return self.coupon_changed(request, Coupon.objects.get(pk=coupon.pk), change)
        return self.coupon_form_page(request, coupon, form, "Import codes")

    def schedule_view(self, request, object_id):
        coupon = self.get_changeable_coupon(request, object_id)
        # A POST with both bounds empty is a bound form too: it clears the window.
        form = ScheduleForm(request.POST if request.method == "POST" else None, instance=coupon)
        if request.method == "POST" and form.is_valid():
            try:
                scheduled = schedule_sale(coupon_name=coupon.name, **form.cleaned_data)
            except CouponError as exc:
                form.add_error(None, str(exc))
            else:
                window = {"starts_at": format_utc(scheduled.starts_at), "ends_at": format_utc(scheduled.ends_at)}
                logger.info("coupon_scheduled", coupon=scheduled.name, operator=request.user.get_username(), **window)
                change = f"Sale window: {window['starts_at']} → {window['ends_at']} (UTC)."
                return self.coupon_changed(request, scheduled, change)
        return self.coupon_form_page(request, coupon, form, "Schedule")

    def claims_csv_view(self, request, object_id):
        coupon = self.get_viewable_coupon(request, object_id)
        return claims_csv_response([coupon], filename=f"{coupon.name}-claims.csv")

    @admin.action(description="Export the claims of the selected coupons as CSV", permissions=["view"])
    def export_claims_csv(self, request, queryset):
        return claims_csv_response(queryset, filename="coupon-claims.csv")


class ReleaseForm(forms.Form):
    reason = forms.CharField(
        max_length=255, help_text="Why the claims are given back (an order cancelled, a fraudulent claim…)."
    )


class ClaimStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("live", "Live (held or redeemed)"), *ClaimStatus.choices]

    def queryset(self, request, queryset):
        if self.value() == "live":
            return queryset.filter(status__in=LIVE_STATUSES)
        if self.value() in ClaimStatus.values:
            return queryset.filter(status=self.value())
        return queryset


@admin.register(Claim)
class ClaimAdmin(admin.ModelAdmin):
    list_display = ("user_id", "coupon", "claim_code", "status", "created_at", "expires_at", "redeemed_at", "order_id")
    actions = ("release_selected_claims",)
    list_select_related = ("coupon",)
    list_filter = (ClaimStatusFilter, "coupon")
    search_fields = ("user_id",)
    search_help_text = "A user id, or a claim's code (in any case, with or without hyphens)."
    date_hierarchy = "created_at"
    # A filtered list says "N claims" without also counting the whole table.
    show_full_result_count = False

    @admin.display(description="code", ordering="code")
    def claim_code(self, claim):
        return format_code(claim.code)

    def get_search_results(self, request, queryset, search_term):
        """A user id, or a code as a customer reads it out (normalised, then matched exactly)."""
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        try:
            code = normalise_code(search_term.strip())
        except MalformedCode:
            return results, may_have_duplicates
        return results | queryset.filter(code=code), may_have_duplicates

    # Claims are made by users through the API, never by hand: stock
    # arithmetic depends on every claim having gone through claim_coupon().
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    # Releasing is not deleting by hand: release_claim() gives the unit back
    # and records the release. It needs Django's "delete claim" permission.
    def has_release_permission(self, request):
        return request.user.has_perm(f"{self.opts.app_label}.delete_{self.opts.model_name}")

    @admin.action(description="Release selected claims", permissions=["release"])
    def release_selected_claims(self, request, queryset):
        # Only live claims hold a unit to give back (a released or expired row's
        # user may hold a newer claim, which is not the one selected).
        queryset = queryset.filter(status__in=LIVE_STATUSES)
        form = ReleaseForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            released = 0
            for coupon_name, user_id in queryset.values_list("coupon__name", "user_id"):
                try:
                    release_claim(
                        coupon_name=coupon_name,
                        user_id=user_id,
                        released_by=request.user.get_username(),
                        reason=form.cleaned_data["reason"],
                    )
                except CouponError:
                    continue  # released meanwhile
                released += 1
                logger.info("claim_released", coupon=coupon_name, user_id=user_id, operator=request.user.get_username())
            self.message_user(
                request, f"Released {released} claim(s): their units are back in stock.", messages.SUCCESS
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Release claims",
            "opts": self.opts,
            "claims": queryset.select_related("coupon"),
            "form": form,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/coupons/claim/release_claims.html", context)


@admin.register(ClaimRelease)
class ClaimReleaseAdmin(ReadOnly, admin.ModelAdmin):
    """Every release, as release_claim() recorded it: the audit trail is only ever read."""

    list_display = ("user_id", "coupon", "claimed_at", "released_at", "released_by", "reason")
    list_select_related = ("coupon",)
    list_filter = ("coupon",)
    search_fields = ("user_id", "released_by")
    date_hierarchy = "released_at"


@admin.register(RedemptionUndo)
class RedemptionUndoAdmin(ReadOnly, admin.ModelAdmin):
    """Every redemption undone (an order cancelled), as undo_redemption() recorded it: only ever read."""

    list_display = ("claim_user_id", "claim_coupon", "order_id", "redeemed_at", "undone_at", "undone_by", "reason")
    list_select_related = ("claim__coupon",)
    list_filter = ("claim__coupon",)
    search_fields = ("claim__user_id", "order_id", "undone_by")
    date_hierarchy = "undone_at"

    @admin.display(description="user id", ordering="claim__user_id")
    def claim_user_id(self, undo):
        return undo.claim.user_id

    @admin.display(description="coupon", ordering="claim__coupon__name")
    def claim_coupon(self, undo):
        return undo.claim.coupon


# The library registers its own key model; the service's keys are ClientApiKey.
admin.site.unregister(APIKey)


@admin.register(ClientApiKey)
class ClientApiKeyAdmin(APIKeyModelAdmin):
    """API keys for client applications: created here (the key is shown once), listed, expired and revoked.

    A revocation, or a change to a key's scopes or expiry date, reaches every
    worker within API_KEY_CACHE_SECONDS (coupons/api_keys.py).
    """

    scope_fields = tuple(f"scope_{scope}" for scope in API_KEY_SCOPES)
    list_display = ("prefix", "name", *scope_fields, "created", "expiry_date", "_has_expired", "revoked")
    list_filter = ("revoked", *scope_fields, "created")
    fields = ("name", "prefix", *scope_fields, "expiry_date", "revoked")
    actions = ("revoke_keys", "expire_keys_now")

    def get_readonly_fields(self, request, obj=None):
        readonly = super().get_readonly_fields(request, obj)
        if obj is not None and obj.revoked:
            return (*readonly, *self.scope_fields)  # a revoked key is kept as it was
        return readonly

    def has_delete_permission(self, request, obj=None):
        return False  # revoked, not deleted: the list keeps who had which key

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    @admin.action(description="Revoke the selected keys (cannot be undone)", permissions=["change"])
    def revoke_keys(self, request, queryset):
        count = queryset.filter(revoked=False).update(revoked=True)
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)

    @admin.action(description="Expire the selected keys now", permissions=["change"])
    def expire_keys_now(self, request, queryset):
        now = timezone.now()
        count = queryset.exclude(expiry_date__lte=now).update(expiry_date=now)
        self.message_user(request, f"Expired {count} key(s).", messages.SUCCESS)


class WebhookSubscriptionForm(forms.ModelForm):
    url = forms.URLField(max_length=2000, assume_scheme="https", help_text=WebhookSubscription.url.field.help_text)
    event_types = forms.MultipleChoiceField(
        choices=[(event_type, event_type) for event_type in EVENT_TYPES],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None checked: all of them.",
    )

    class Meta:
        model = WebhookSubscription
        fields = ("url", "event_types", "description")

    def clean_url(self):
        url = self.cleaned_data["url"]
        try:
            check_url(url)  # the API's rules: no private address unless WEBHOOK_ALLOW_PRIVATE
        except CouponError as exc:
            raise forms.ValidationError(str(exc)) from None
        return url


@admin.register(WebhookSubscription)
class WebhookSubscriptionAdmin(admin.ModelAdmin):
    """Webhook subscriptions: created here or through the API (the secret is shown once), disabled and re-enabled.

    A subscription whose deliveries kept failing for WEBHOOK_RETRY_FOR is
    disabled by the worker, with the reason; enabling it resumes delivery
    where it stopped.
    """

    form = WebhookSubscriptionForm
    list_display = ("url", "types", "is_active", "disabled_reason", "failing_since", "failed_attempts", "created_at")
    list_filter = ("is_active",)
    search_fields = ("url", "description")
    actions = ("enable_subscriptions", "disable_subscriptions")
    readonly_fields = (
        "deliveries",
        "is_active",
        "disabled_at",
        "disabled_reason",
        "failing_since",
        "failed_attempts",
        "next_attempt_at",
        "created_by",
        "created_at",
    )

    @admin.display(description="event types")
    def types(self, subscription):
        return ", ".join(subscription.event_types) or "all"

    @admin.display(description="delivery attempts")
    def deliveries(self, subscription):
        url = reverse("admin:coupons_webhookdelivery_changelist") + f"?subscription__id__exact={subscription.pk}"
        return format_html('<a href="{}">Every attempt, newest first</a>', url)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("url", "event_types", "description")
        return ("url", "event_types", "description", *self.readonly_fields)

    def get_readonly_fields(self, request, obj=None):
        # The URL and the types of an existing subscription stay as its receiver was told.
        return () if obj is None else ("url", "event_types", *self.readonly_fields)

    def save_model(self, request, obj, form, change):
        if change:
            obj.save(update_fields=["description"])
            return
        subscription = create_subscription(
            url=obj.url,
            event_types=form.cleaned_data["event_types"],
            description=obj.description,
            created_by=request.user.get_username(),
        )
        obj.pk = subscription.pk
        self.message_user(
            request,
            f"The signing secret of this subscription is: {subscription.secret} — store it now: it is not shown"
            " again. Receivers verify each request's Webhook-Signature with it.",
            messages.WARNING,
        )

    @admin.action(description="Enable the selected subscriptions (resume where they stopped)", permissions=["change"])
    def enable_subscriptions(self, request, queryset):
        count = queryset.filter(is_active=False).update(
            is_active=True,
            disabled_at=None,
            disabled_reason="",
            failing_since=None,
            failed_attempts=0,
            next_attempt_at=None,
        )
        self.message_user(request, f"Enabled {count} subscription(s).", messages.SUCCESS)

    @admin.action(description="Disable the selected subscriptions", permissions=["change"])
    def disable_subscriptions(self, request, queryset):
        count = queryset.filter(is_active=True).update(
            is_active=False, disabled_at=timezone.now(), disabled_reason=f"Disabled by {request.user.get_username()}."
        )
        self.message_user(request, f"Disabled {count} subscription(s).", messages.SUCCESS)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnly, admin.ModelAdmin):
    """Every delivery attempt: what was sent where, and what came of it."""

    list_display = ("attempted_at", "subscription", "event", "attempt", "outcome", "response_status", "duration_ms")
    list_filter = ("outcome", "subscription")
    list_select_related = ("subscription", "event")
    date_hierarchy = "attempted_at"
    show_full_result_count = False


@admin.register(Event)
class EventAdmin(ReadOnly, admin.ModelAdmin):
    """The outbox: every event, as subscribers get it."""

    list_display = ("occurred_at", "type", "coupon_name", "sequence", "uuid")
    list_filter = ("type",)
    search_fields = ("coupon_name", "=uuid")
    date_hierarchy = "occurred_at"
    show_full_result_count = False
