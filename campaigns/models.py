"""Campaigns: several coupons sharing one budget of units and a per-customer limit (campaigns/extension.py)."""

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from coupons.models import MAX_AMOUNT, Coupon
from coupons.validators import validate_coupon_name


class Campaign(models.Model):
    name = models.CharField(max_length=255, unique=True, validators=[validate_coupon_name])
    # Units its coupons' live claims (held or redeemed) may hold in all; None: no cap.
    max_claims = models.IntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_AMOUNT)],
        help_text="Units all its coupons together may have claimed at once; empty: no cap.",
    )
    # How many of its coupons one user may hold at once; None: no limit.
    max_claims_per_user = models.IntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_AMOUNT)],
        help_text="How many of its coupons one user may hold at once (1: one per customer); empty: no limit.",
    )
    # The counter row: units held by its coupons' live claims. Moved only in
    # the transactions that change a claim's liveness, under this row's lock,
    # taken after the coupon row's (campaigns/extension.py).
    taken = models.IntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(max_claims__isnull=True) | models.Q(max_claims__gte=1),
                name="campaign_max_claims_positive",
            ),
            models.CheckConstraint(
                condition=models.Q(max_claims_per_user__isnull=True) | models.Q(max_claims_per_user__gte=1),
                name="campaign_max_claims_per_user_positive",
            ),
            # The cap, in the database: a bug that let one claim too many in
            # would fail its transaction rather than overrun the budget.
            models.CheckConstraint(
                condition=models.Q(taken__gte=0)
                & (models.Q(max_claims__isnull=True) | models.Q(taken__lte=models.F("max_claims"))),
                name="campaign_taken_within_max_claims",
            ),
        ]

    def __str__(self):
        return self.name

    @property
    def remaining_claims(self):
        return None if self.max_claims is None else self.max_claims - self.taken


class CampaignCoupon(models.Model):
    """A coupon's membership of a campaign: at most one campaign per coupon (the one-to-one is unique)."""

    coupon = models.OneToOneField(Coupon, on_delete=models.CASCADE, related_name="campaign_membership")
    campaign = models.ForeignKey(Campaign, on_delete=models.PROTECT, related_name="memberships")

    class Meta:
        verbose_name = "campaign coupon"

    def __str__(self):
        return f"{self.coupon_id} in {self.campaign_id}"
