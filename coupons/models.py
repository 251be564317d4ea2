import uuid

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models.functions import Length
from django.db.models.lookups import GreaterThanOrEqual, LessThanOrEqual
from rest_framework_api_key.models import AbstractAPIKey

from coupons.claim_codes import MAX_CODE_LENGTH, MIN_CODE_LENGTH, new_claim_code
from coupons.sale_windows import SaleWindow
from coupons.validators import validate_coupon_name, validate_identifier_text

# Amounts live in a 32-bit signed integer column on every backend.
MAX_AMOUNT = 2**31 - 1

# What an API key may be allowed to do (ClientApiKey below).
API_KEY_SCOPES = ("create", "claim", "read", "release", "redeem", "webhooks")

# The longest a coupon may hold a claim for redemption: a year (and an
# interval PostgreSQL and SQLite add to a timestamp without overflow).
MAX_HOLD_SECONDS = 366 * 24 * 3600


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
    # A claim not redeemed within this many seconds of being granted expires
    # and its unit goes back to stock (coupons/holds.py); None: claims never
    # expire. It applies to claims granted after it is set.
    hold_seconds = models.IntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_HOLD_SECONDS)],
        help_text="Seconds a claim is held for redemption before its unit goes back to stock; empty: for ever.",
    )
    # Redemptions are refused from this instant on (the database's clock); None: no bound.
    redeem_until = models.DateTimeField(
        null=True, blank=True, help_text="Redemptions are refused from this instant on."
    )
    # The `sequence` of the coupon's latest event (coupons/outbox.py), moved
    # under the coupon row lock: its events are numbered 1, 2, 3... with no gap.
    last_event_sequence = models.PositiveIntegerField(default=0, editable=False)
    # Its claims get imported codes (ImportedCode), drawn in the claim's
    # transaction, rather than generated ones. Read with the coupon row lock
    # the claim group takes anyway: a coupon without imported codes pays nothing.
    imported_codes = models.BooleanField(default=False, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(hold_seconds__isnull=True)
                | models.Q(hold_seconds__gte=1, hold_seconds__lte=MAX_HOLD_SECONDS),
                name="coupon_hold_seconds_in_range",
            ),
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


class ClaimStatus(models.TextChoices):
    """Where a claim is in its life: granted (held), spent at a checkout (redeemed), or given back to stock."""

    HELD = "held", "Held"  # holds a unit, not redeemed yet
    REDEEMED = "redeemed", "Redeemed"  # holds a unit, spent by an order
    RELEASED = "released", "Released"  # given back to stock by an operator (ClaimRelease says who and why)
    EXPIRED = "expired", "Expired"  # not redeemed within its coupon's hold_seconds: its unit went back to stock


# The claims that hold a unit of stock: for each coupon, at every instant,
# remaining_amount + held + redeemed = amount. The others are kept for audit.
LIVE_STATUSES = (ClaimStatus.HELD, ClaimStatus.REDEEMED)
RETURNED_STATUSES = (ClaimStatus.RELEASED, ClaimStatus.EXPIRED)


class Claim(models.Model):
    user_id = models.CharField(max_length=255, validators=[validate_identifier_text])
    # The indexes below lead with `coupon`, so a separate foreign-key index
    # is redundant.
    coupon = models.ForeignKey(Coupon, on_delete=models.PROTECT, related_name="claims", db_index=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # Stored without its hyphens, upper case; shown grouped (XXXX-XXXX-XXXX-XXXX).
    # The claim path draws it itself (coupons/claim_groups.py): generated (16
    # characters), or one of the coupon's imported codes (4 to 64); the default
    # serves rows made through the ORM (scripts, the benchmarks' bulk inserts).
    code = models.CharField(max_length=MAX_CODE_LENGTH, default=new_claim_code, editable=False)
    status = models.CharField(max_length=8, choices=ClaimStatus.choices, default=ClaimStatus.HELD)
    # created_at + the coupon's hold_seconds at the time of the claim; None: held for ever.
    expires_at = models.DateTimeField(null=True, blank=True)
    redeemed_at = models.DateTimeField(null=True, blank=True)
    # The shop's order the claim was redeemed for ("": none given).
    order_id = models.CharField(max_length=255, blank=True, default="")
    # When the unit went back to stock (released or expired).
    returned_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            # A user holds at most one live claim of a coupon; once it is
            # released or expired, the user may claim again.
            models.UniqueConstraint(
                fields=["coupon", "user_id"],
                condition=models.Q(status__in=LIVE_STATUSES),
                name="claim_one_live_per_user_per_coupon",
            ),
            models.UniqueConstraint(fields=["code"], name="claim_code_unique"),
            models.CheckConstraint(
                condition=models.Q(GreaterThanOrEqual(Length("code"), MIN_CODE_LENGTH))
                & models.Q(LessThanOrEqual(Length("code"), MAX_CODE_LENGTH)),
                name="claim_code_has_a_code_length",
            ),
            models.CheckConstraint(condition=models.Q(status__in=ClaimStatus.values), name="claim_status_known"),
            # Redeemed: when (and maybe for which order). Held or expired: never
            # redeemed (an undone redemption is cleared). Released: either.
            models.CheckConstraint(
                condition=models.Q(status=ClaimStatus.REDEEMED, redeemed_at__isnull=False)
                | models.Q(status__in=[ClaimStatus.HELD, ClaimStatus.EXPIRED], redeemed_at__isnull=True, order_id="")
                | models.Q(status=ClaimStatus.RELEASED),
                name="claim_redeemed_exactly_when_redeemed",
            ),
            # A unit returned to stock says when; a live claim has not returned it.
            models.CheckConstraint(
                condition=models.Q(status__in=RETURNED_STATUSES, returned_at__isnull=False)
                | models.Q(status__in=LIVE_STATUSES, returned_at__isnull=True),
                name="claim_returned_exactly_when_ended",
            ),
            # The exactly-once rules of holds, in the database: a claim expires
            # only at or after its deadline, and is redeemed only before it.
            models.CheckConstraint(
                condition=~models.Q(status=ClaimStatus.EXPIRED)
                | models.Q(expires_at__isnull=False, returned_at__gte=models.F("expires_at")),
                name="claim_expires_at_its_deadline",
            ),
            models.CheckConstraint(
                condition=models.Q(redeemed_at__isnull=True)
                | models.Q(expires_at__isnull=True)
                | models.Q(redeemed_at__lt=models.F("expires_at")),
                name="claim_redeemed_before_its_deadline",
            ),
        ]
        indexes = [
            # Every claim of a coupon, by status: the admin's counts and pages, the export.
            models.Index(fields=["coupon", "status"], name="claim_coupon_status"),
            # A user's claims, newest first, a page at a time (get_user_claims_page).
            models.Index(fields=["user_id", "-created_at", "-id"], name="claim_user_newest_first"),
            # The holds still to expire, soonest first (coupons/holds.py).
            models.Index(
                fields=["expires_at", "coupon"],
                condition=models.Q(status=ClaimStatus.HELD, expires_at__isnull=False),
                name="claim_hold_deadlines",
            ),
        ]

    def __str__(self):
        return f"{self.user_id} → {self.coupon_id}"

    @property
    def is_live(self):
        return self.status in LIVE_STATUSES


class ImportedCode(models.Model):
    """A code the shop already holds (a point-of-sale run, a partner's), imported for a coupon's claims
    (coupons/imported_codes.py): handed out once, to one granted claim, in the claim's transaction."""

    # A foreign key in the database too, although its check (one trigger call per inserted row) is about a third
    # of a million-code import's time: no code can ever name a coupon that is not there.
    coupon = models.ForeignKey(Coupon, on_delete=models.CASCADE, related_name="imported_code_set", db_index=False)
    # Normalised as lookups normalise (coupons/claim_codes.py): upper case, no hyphens or spaces.
    code = models.CharField(max_length=MAX_CODE_LENGTH)
    # Given to a claim (whose `code` it now is): never handed out again, even once that claim is released.
    handed_out = models.BooleanField(default=False)

    class Meta:
        constraints = [
            # Unique across the service's imports; the claims' own unique index covers generated codes.
            models.UniqueConstraint(fields=["code"], name="imported_code_unique"),
            models.CheckConstraint(
                condition=models.Q(GreaterThanOrEqual(Length("code"), MIN_CODE_LENGTH))
                & models.Q(LessThanOrEqual(Length("code"), MAX_CODE_LENGTH)),
                name="imported_code_has_a_code_length",
            ),
        ]
        indexes = [
            # The next codes to hand out, in import order (coupons/claim_groups.py).
            models.Index(fields=["coupon", "id"], condition=models.Q(handed_out=False), name="imported_code_unused"),
        ]

    def __str__(self):
        return self.code


class ClientApiKey(AbstractAPIKey):
    """A client application's API key (djangorestframework-api-key: only a hash of the key is stored).

    Each scope lets the key call one kind of endpoint (coupons/api/key_access.py);
    a key may hold several.
    """

    scope_create = models.BooleanField("create", default=False, help_text="POST /api/coupons")
    scope_claim = models.BooleanField("claim", default=False, help_text="POST /api/coupons/claim")
    scope_read = models.BooleanField("read", default=False, help_text="GET /api/coupons/{name}")
    scope_release = models.BooleanField("release", default=False, help_text="Releasing a claim")
    scope_redeem = models.BooleanField("redeem", default=False, help_text="/api/redemptions: redeem, undo, read")
    scope_webhooks = models.BooleanField("webhooks", default=False, help_text="/api/webhooks: event subscriptions")

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "API key"
        verbose_name_plural = "API keys"

    @property
    def scopes(self):
        return frozenset(scope for scope in API_KEY_SCOPES if getattr(self, f"scope_{scope}"))


class ClaimRelease(models.Model):
    """A claim an operator gave back to stock (release_claim): the audit trail, never edited."""

    coupon = models.ForeignKey(Coupon, on_delete=models.PROTECT, related_name="releases", db_index=False)
    # The released claim, kept with status "released".
    claim = models.OneToOneField(Claim, on_delete=models.PROTECT, related_name="release")
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


class RedemptionUndo(models.Model):
    """A redemption undone (an order cancelled: undo_redemption): the audit trail, never edited.

    The claim is held again; this row keeps the redemption it had.
    """

    claim = models.ForeignKey(Claim, on_delete=models.PROTECT, related_name="undone_redemptions")
    order_id = models.CharField(max_length=255, blank=True)
    redeemed_at = models.DateTimeField()
    undone_at = models.DateTimeField(auto_now_add=True)
    # Who undid it: the staff user's username, or the API key's prefix.
    undone_by = models.CharField(max_length=255)
    reason = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-undone_at", "-id"]
        verbose_name = "undone redemption"

    def __str__(self):
        return f"{self.claim_id}, redemption undone"


class Event(models.Model):
    """A change a subscriber may care about, written in the transaction that made it (the transactional outbox).

    `position` orders the log; `uuid` is the event's public id (a webhook's
    `Webhook-Id`). `sequence` numbers a coupon's events without gaps.
    `transaction_id` is the writing transaction's id on PostgreSQL (0 on
    SQLite): readers list events by (transaction_id, position) and only
    those older than every transaction still running, so that a reader
    never steps past an event that commits later (coupons/outbox.py).
    """

    position = models.BigAutoField(primary_key=True)
    uuid = models.UUIDField(unique=True, editable=False)
    type = models.CharField(max_length=40)
    # No foreign key: a coupon nobody claimed may be deleted, its events stay.
    coupon_id = models.BigIntegerField()
    coupon_name = models.CharField(max_length=255)
    sequence = models.PositiveIntegerField()
    occurred_at = models.DateTimeField()
    data = models.JSONField()
    transaction_id = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["transaction_id", "position"]
        constraints = [
            models.UniqueConstraint(fields=["coupon_id", "sequence"], name="event_sequence_once_per_coupon"),
        ]
        indexes = [models.Index(fields=["transaction_id", "position"], name="event_log_order")]

    def __str__(self):
        return f"{self.type} {self.coupon_name} #{self.sequence}"


class IdempotencyKey(models.Model):
    """An `Idempotency-Key` a caller sent, and the answer it got (coupons/idempotency.py).

    While the request runs, `owner` names the attempt running it and
    `locked_until` bounds how long it may hold the key; once answered, the
    answer is here (written in the transaction of the request's effect) and
    `owner` is empty.
    """

    caller = models.CharField(max_length=64)  # "key:<API key prefix>", "user:<id>" or "anonymous"
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)  # SHA-256 of the method, path and body
    owner = models.CharField(max_length=32, blank=True)
    locked_until = models.DateTimeField(null=True)
    status_code = models.PositiveSmallIntegerField(null=True)  # None: still running
    content_type = models.CharField(max_length=100, blank=True)
    retry_after = models.CharField(max_length=20, blank=True)
    body = models.BinaryField(blank=True)  # the answer's bytes, replayed as they were
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["caller", "key"], name="idempotency_key_once_per_caller")]

    def __str__(self):
        return f"{self.caller}: {self.key}"


class WebhookSubscription(models.Model):
    """Where to POST events, which ones, with which secret; and how far delivery has got (coupons/webhooks.py)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    url = models.URLField(max_length=2000, help_text="http:// or https://; not a private or loopback address.")
    event_types = models.JSONField(default=list, blank=True, help_text="Event types to send; empty: all of them.")
    # The Standard Webhooks secret, "whsec_" + base64: needed in clear to sign. Never logged.
    secret = models.CharField(max_length=100, editable=False)
    description = models.CharField(max_length=255, blank=True)
    created_by = models.CharField(max_length=255, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    is_active = models.BooleanField(default=True)
    disabled_at = models.DateTimeField(null=True, blank=True, editable=False)
    disabled_reason = models.CharField(max_length=255, blank=True, editable=False)
    # Delivery state, the worker's: where in the log it started, where every earlier event is done with
    # (delivered or passed over: each coupon's last one is a WebhookCouponCursor)...
    start_transaction_id = models.BigIntegerField(default=0, editable=False)
    start_position = models.BigIntegerField(default=0, editable=False)
    cursor_transaction_id = models.BigIntegerField(default=0, editable=False)
    cursor_position = models.BigIntegerField(default=0, editable=False)
    # ...the failures of the event it is stuck on, and when to try it again...
    failing_since = models.DateTimeField(null=True, blank=True, editable=False)
    failed_attempts = models.PositiveIntegerField(default=0, editable=False)
    next_attempt_at = models.DateTimeField(null=True, blank=True, editable=False)
    # ...and which worker delivers it, until when (several workers share the subscriptions).
    lease_owner = models.CharField(max_length=32, blank=True, editable=False)
    leased_until = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "webhook subscription"

    def __str__(self):
        return self.url


class WebhookCouponCursor(models.Model):
    """The last event of one coupon a subscription has had (delivered, or passed over): its `sequence`.

    A coupon's events are sent in sequence order, whatever order their
    transactions reached the log in (coupons/webhook_delivery.py).
    """

    subscription = models.ForeignKey(WebhookSubscription, on_delete=models.CASCADE, related_name="coupon_cursors")
    coupon_id = models.BigIntegerField()
    last_sequence = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["subscription", "coupon_id"], name="coupon_cursor_once_per_subscription")
        ]

    def __str__(self):
        return f"coupon {self.coupon_id}: #{self.last_sequence}"


class WebhookDelivery(models.Model):
    """One attempt to deliver one event to one subscription: shown in the admin."""

    class Outcome(models.TextChoices):
        DELIVERED = "delivered"
        HTTP_ERROR = "http_error"  # the receiver answered, but not 2xx
        TIMEOUT = "timeout"
        CONNECTION_ERROR = "connection_error"
        FORBIDDEN_ADDRESS = "forbidden_address"  # the URL resolved to a private address

    subscription = models.ForeignKey(WebhookSubscription, on_delete=models.CASCADE, related_name="deliveries")
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="+")
    attempt = models.PositiveIntegerField()
    attempted_at = models.DateTimeField()
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    duration_ms = models.FloatField()
    error = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-attempted_at", "-id"]
        verbose_name_plural = "webhook deliveries"
        indexes = [models.Index(fields=["subscription", "-attempted_at"], name="delivery_subscription_newest")]

    def __str__(self):
        return f"{self.event_id} → {self.subscription_id}: {self.outcome}"


class EventStreamCursor(models.Model):
    """How far a publisher of the event log to a message stream (coupons/event_streams.py) has got, and which
    worker publishes it, until when (one at a time, however many deliver_events run)."""

    name = models.CharField(max_length=100, unique=True)
    cursor_transaction_id = models.BigIntegerField(default=0)
    cursor_position = models.BigIntegerField(default=0)
    lease_owner = models.CharField(max_length=32, blank=True)
    leased_until = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return self.name
