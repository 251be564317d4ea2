"""Fair admission's rows: a coupon's admission policy, and the users who entered.

A coupon without a policy row is first come, first served (today's
behaviour): admission costs it nothing.
"""

from django.db import models

from coupons.models import Claim, Coupon

MAX_ADMISSION_SECONDS = 24 * 3600
MAX_ADMIT_PER_SECOND = 100_000


class Mode(models.TextChoices):
    FIRST_COME = "first_come", "First come, first served"
    QUEUE = "queue", "Waiting room (queue)"
    DRAW = "draw", "Draw"


class AdmissionPolicy(models.Model):
    """How a `queue` or `draw` coupon admits its claimers, and the queue's or draw's state."""

    coupon = models.OneToOneField(Coupon, on_delete=models.CASCADE, primary_key=True, related_name="admission")
    mode = models.CharField(max_length=10, choices=Mode.choices)
    # None: as many admitted at once as the stock left can serve (topped up as admissions are used or lapse).
    admit_per_second = models.IntegerField(null=True, blank=True)
    admission_seconds = models.IntegerField(default=120)
    # None: entries open when the coupon is created.
    entries_open_at = models.DateTimeField(null=True, blank=True)
    # The draw's instant: entries close, the list is frozen and the winners drawn (draw only).
    draw_at = models.DateTimeField(null=True, blank=True)
    # 256 random bits (hex), secret until the draw (or the queue's opening), and its SHA-256, published at creation.
    seed = models.CharField(max_length=64, editable=False)
    commitment = models.CharField(max_length=64, editable=False)
    # Counters moved under this row's lock (entries of the coupon pass one at a time): 1, 2, 3... without a gap.
    entries_count = models.IntegerField(default=0, editable=False)
    last_position = models.IntegerField(default=0, editable=False)
    # When the queue's pre-queue was shuffled and its seed revealed (queue), or the draw made (draw).
    opened_at = models.DateTimeField(null=True, blank=True, editable=False)
    # SHA-256 of the frozen entry list (draw), set with opened_at.
    entries_hash = models.CharField(max_length=64, blank=True, default="", editable=False)
    # The number of winners the draw picked (the coupon's amount then: a later restock does not redraw).
    drawn_amount = models.IntegerField(null=True, blank=True, editable=False)
    # The last admission pass that admitted anyone (admit_per_second's budget runs from it).
    last_admission_at = models.DateTimeField(null=True, blank=True, editable=False)
    # When the stock ran out and the waiting were told so.
    sold_out_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "admission policy"
        verbose_name_plural = "admission policies"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(mode__in=[Mode.QUEUE, Mode.DRAW]), name="admission_policy_mode_known"
            ),
            models.CheckConstraint(
                condition=models.Q(admission_seconds__gte=1, admission_seconds__lte=MAX_ADMISSION_SECONDS),
                name="admission_seconds_in_range",
            ),
            models.CheckConstraint(
                condition=models.Q(admit_per_second__isnull=True)
                | models.Q(admit_per_second__gte=1, admit_per_second__lte=MAX_ADMIT_PER_SECOND),
                name="admission_rate_in_range",
            ),
            # A draw has its instant; a queue has none.
            models.CheckConstraint(
                condition=models.Q(mode=Mode.DRAW, draw_at__isnull=False)
                | models.Q(mode=Mode.QUEUE, draw_at__isnull=True),
                name="admission_draw_at_exactly_for_draws",
            ),
            models.CheckConstraint(
                condition=models.Q(entries_open_at__isnull=True)
                | models.Q(draw_at__isnull=True)
                | models.Q(draw_at__gt=models.F("entries_open_at")),
                name="admission_draw_after_entries_open",
            ),
        ]

    def __str__(self):
        return f"{self.coupon_id}: {self.mode}"


class EntryStatus(models.TextChoices):
    WAITING = "waiting", "Waiting"
    ADMITTED = "admitted", "Admitted"
    CLAIMED = "claimed", "Claimed"
    EXPIRED = "expired", "Admission lapsed"
    SOLD_OUT = "sold_out", "Sold out"
    NOT_SELECTED = "not_selected", "Not selected"


class Entry(models.Model):
    """A user's place in a coupon's queue or draw: at most one per user and coupon, spent by at most one claim."""

    coupon = models.ForeignKey(Coupon, on_delete=models.CASCADE, related_name="entries", db_index=False)
    user_id = models.CharField(max_length=255)
    created_at = models.DateTimeField()
    # 1, 2, 3... in the order entries were committed (under the policy row lock): no gap, no duplicate.
    arrival = models.IntegerField()
    # The order of admission: arrival order after the queue opened; the seeded shuffle for the pre-queue; the
    # draw's order for a draw. None until known (the pre-queue before the opening, a draw before draw_at).
    position = models.IntegerField(null=True, blank=True)
    status = models.CharField(max_length=12, choices=EntryStatus.choices, default=EntryStatus.WAITING)
    admitted_at = models.DateTimeField(null=True, blank=True)
    admitted_until = models.DateTimeField(null=True, blank=True)
    # The claim that spent the admission: unique, so an admission (a token's jti) is spent once.
    claim = models.OneToOneField(Claim, on_delete=models.PROTECT, null=True, blank=True, related_name="entry")

    class Meta:
        ordering = ["coupon", "arrival"]
        verbose_name_plural = "entries"
        constraints = [
            models.UniqueConstraint(fields=["coupon", "user_id"], name="entry_one_per_user_per_coupon"),
            models.UniqueConstraint(fields=["coupon", "arrival"], name="entry_arrival_unique"),
            models.UniqueConstraint(fields=["coupon", "position"], name="entry_position_unique"),
            models.CheckConstraint(condition=models.Q(status__in=EntryStatus.values), name="entry_status_known"),
            # Admitted (and what follows an admission) exactly when it says until when.
            models.CheckConstraint(
                condition=models.Q(
                    status__in=[EntryStatus.ADMITTED, EntryStatus.CLAIMED, EntryStatus.EXPIRED],
                    admitted_at__isnull=False,
                    admitted_until__gt=models.F("admitted_at"),
                    position__isnull=False,
                )
                | models.Q(
                    status__in=[EntryStatus.WAITING, EntryStatus.SOLD_OUT, EntryStatus.NOT_SELECTED],
                    admitted_at__isnull=True,
                    admitted_until__isnull=True,
                ),
                name="entry_admitted_exactly_when_admitted",
            ),
            models.CheckConstraint(
                condition=models.Q(status=EntryStatus.CLAIMED, claim__isnull=False)
                | (~models.Q(status=EntryStatus.CLAIMED) & models.Q(claim__isnull=True)),
                name="entry_claimed_exactly_with_its_claim",
            ),
        ]
        indexes = [
            # The admission pass: the next waiting by position; the poll cache's batches by admission.
            models.Index(fields=["coupon", "status", "position"], name="entry_coupon_status_position"),
        ]

    def __str__(self):
        return f"{self.user_id} → {self.coupon_id} ({self.status})"


class SpentChallenge(models.Model):
    """A proof-of-work challenge an entry was made with (admission/proof_of_work.py): a solution enters once."""

    # The challenge's HMAC signature (hex): unique per challenge, made only by this service.
    signature = models.CharField(max_length=64, primary_key=True)
    # When the challenge stops being accepted anyway: the worker forgets the row after.
    expires_at = models.DateTimeField()

    def __str__(self):
        return self.signature
