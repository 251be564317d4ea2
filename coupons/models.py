from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from rest_framework_api_key.models import AbstractAPIKey

from coupons.sale_windows import SaleWindow
from coupons.validators import validate_coupon_name, validate_identifier_text

# Amounts live in a 32-bit signed integer column on every backend.
MAX_AMOUNT = 2**31 - 1

# What an API key may be allowed to do (ClientApiKey below).
API_KEY_SCOPES = ("create", "claim", "read", "release")


class Coupon(models.Model):
    name = models.CharField(max_length=255, unique=True, validators=[validate_coupon_name])
    amount = models.IntegerField(validators=[MinValueValidator(1), MaxValueValidator(MAX_AMOUNT)])
    # Set from `amount` when the coupon is created, then only ever changed by claims.
    remaining_amount = models.IntegerField(editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # The sale window [starts_at, ends_at), checked with the database's
    # clock; None: no bound.
    starts_at = models.DateTimeField(null=True, blank=True, help_text="Claims are refused before this instant.")
    ends_at = models.DateTimeField(null=True, blank=True, help_text="Claims are refused from this instant on.")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(starts_at__isnull=True)
                | models.Q(ends_at__isnull=True)
                | models.Q(ends_at__gt=models.F("starts_at")),
                name="coupon_window_ends_after_it_starts",
                violation_error_message="The sale must end after it starts.",
            ),
            models.CheckConstraint(condition=models.Q(amount__gte=1), name="coupon_amount_at_least_one"),
            models.CheckConstraint(
                condition=models.Q(remaining_amount__gte=0) & models.Q(remaining_amount__lte=models.F("amount")),
                name="coupon_remaining_within_amount",
            ),
        ]

    def __str__(self):
        return self.name

    def save(self, *args, **kwargs):
        if self._state.adding and self.remaining_amount is None:
            self.remaining_amount = self.amount  # a new coupon starts with its full stock
        super().save(*args, **kwargs)

    @property
    def claimed_amount(self):
        return self.amount - self.remaining_amount

    @property
    def window(self):
        return SaleWindow(self.starts_at, self.ends_at)


class Claim(models.Model):
    user_id = models.CharField(max_length=255, validators=[validate_identifier_text])
    # The unique constraint below leads with `coupon`, so its index serves
    # every per-coupon lookup and a separate foreign-key index is redundant.
    coupon = models.ForeignKey(Coupon, on_delete=models.PROTECT, related_name="claims", db_index=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["coupon", "user_id"], name="claim_one_per_user_per_coupon"),
        ]
        # A user's claims, newest first, a page at a time (get_user_claims_page).
        indexes = [models.Index(fields=["user_id", "-created_at", "-id"], name="claim_user_newest_first")]

    def __str__(self):
        return f"{self.user_id} → {self.coupon_id}"


class ClientApiKey(AbstractAPIKey):
    """A client application's API key (djangorestframework-api-key: only a hash of the key is stored).

    Each scope lets the key call one kind of endpoint (coupons/api/key_access.py);
    a key may hold several.
    """

    scope_create = models.BooleanField("create", default=False, help_text="POST /api/coupons")
    scope_claim = models.BooleanField("claim", default=False, help_text="POST /api/coupons/claim")
    scope_read = models.BooleanField("read", default=False, help_text="GET /api/coupons/{name}")
    scope_release = models.BooleanField("release", default=False, help_text="Releasing a claim")

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "API key"
        verbose_name_plural = "API keys"

    @property
    def scopes(self):
        return frozenset(scope for scope in API_KEY_SCOPES if getattr(self, f"scope_{scope}"))


class ClaimRelease(models.Model):
    """A claim an operator gave back to stock (release_claim): the audit trail, never edited."""

    coupon = models.ForeignKey(Coupon, on_delete=models.PROTECT, related_name="releases", db_index=False)
    user_id = models.CharField(max_length=255)
    claimed_at = models.DateTimeField()
    released_at = models.DateTimeField(auto_now_add=True)
    # Who released it: the staff user's username.
    released_by = models.CharField(max_length=255)
    reason = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-released_at", "-id"]
        indexes = [models.Index(fields=["coupon", "-released_at"], name="release_coupon_newest_first")]

    def __str__(self):
        return f"{self.user_id}, released"
