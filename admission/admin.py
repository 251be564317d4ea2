"""Operators' view of fair admission: each coupon's policy with its live counts and its draw's proof, and the
entries with their statuses. Read-only but for the admission rate and window (the mode is fixed at creation:
it decides which claims need a token)."""

from django.contrib import admin
from django.utils.html import format_html_join

from admission.models import AdmissionPolicy, Entry
from admission.selectors import queue_counts


@admin.register(AdmissionPolicy)
class AdmissionPolicyAdmin(admin.ModelAdmin):
    list_display = ["coupon", "mode", "admit_per_second", "admission_seconds", "opened_at", "sold_out_at", "counts"]
    list_filter = ["mode"]
    search_fields = ["coupon__name"]
    fields = [
        "coupon",
        "mode",
        "admit_per_second",
        "admission_seconds",
        "entries_open_at",
        "draw_at",
        "opened_at",
        "sold_out_at",
        "live_counts",
        "commitment",
        "revealed_seed",
        "entries_hash",
        "drawn_amount",
    ]
    # Only the rate and the admission's length may change after creation (the next admission pass uses them).
    readonly_fields = [field for field in fields if field not in ("admit_per_second", "admission_seconds")]

    def has_add_permission(self, request):
        return False  # created with its coupon (POST /api/coupons with `admission`)

    @admin.display(description="entries (waiting / admitted / claimed / lapsed)")
    def counts(self, policy):
        counts = queue_counts(coupon_id=policy.pk)
        return f"{counts['waiting']} / {counts['admitted']} / {counts['claimed']} / {counts['expired']}"

    @admin.display(description="entries by status")
    def live_counts(self, policy):
        return format_html_join(", ", "{}: {}", queue_counts(coupon_id=policy.pk).items())

    @admin.display(description="seed (revealed at the draw or the queue's opening)")
    def revealed_seed(self, policy):
        # Shown to staff only once public: before, knowing it would let an operator predict the draw.
        return policy.seed if policy.opened_at is not None else "— secret until then"


@admin.register(Entry)
class EntryAdmin(admin.ModelAdmin):
    list_display = ["user_id", "coupon", "arrival", "position", "status", "admitted_at", "admitted_until", "claim"]
    list_filter = ["status"]
    search_fields = ["user_id", "coupon__name"]
    list_select_related = ["coupon", "claim"]
    readonly_fields = [field.name for field in Entry._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # an entry is part of the draw's published list and the queue's order
