"""The shapes of the API's request and response bodies.

Input fields are strict about JSON types: a name must be a JSON string and an
amount a JSON integer (not true, 1.5, "5" or null), where DRF would coerce.
"""

import copy
import re
from datetime import UTC, datetime

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from coupons import extensions
from coupons.api.error_codes import ErrorCode
from coupons.claim_codes import CODE_PATTERN, MAX_CODE_LENGTH, MIN_CODE_LENGTH, format_code, normalise_code
from coupons.exceptions import MalformedCode
from coupons.models import MAX_AMOUNT, MAX_HOLD_SECONDS, ClaimStatus
from coupons.outbox import EVENT_TYPES
from coupons.sale_windows import SaleStatus, format_utc
from coupons.validators import validate_coupon_name, validate_identifier_text

MAX_TEXT_LENGTH = 255


class StrictCharField(serializers.CharField):
    default_error_messages = {"invalid": "Must be a string."}

    def __init__(self, **kwargs):
        # Identifiers are kept exactly as sent: no silent trimming.
        super().__init__(min_length=1, max_length=MAX_TEXT_LENGTH, trim_whitespace=False, **kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    default_error_messages = {"invalid": "Must be an integer."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


# RFC 3339's date-time (section 5.6): the offset is required. fromisoformat
# alone would also take a date, a naive time, week dates or a comma.
RFC3339_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII)


@extend_schema_field(OpenApiTypes.DATETIME)
class Rfc3339DateTimeField(serializers.Field):
    """In: an RFC 3339 timestamp with an offset. Out: UTC, `YYYY-MM-DDTHH:MM:SS[.ffffff]Z`, or null."""

    default_error_messages = {
        "invalid": "Must be an RFC 3339 timestamp with an offset, such as 2026-12-01T12:00:00Z "
        "or 2026-12-01T13:00:00+01:00.",
    }

    def to_internal_value(self, data):
        if not isinstance(data, str) or not RFC3339_DATE_TIME.fullmatch(data):
            self.fail("invalid")
        try:
            # Python 3.11 reads "Z" and cuts fractions past microseconds.
            return datetime.fromisoformat(data.upper()).astimezone(UTC)
        except (ValueError, OverflowError):  # month 13, second 60, year 0 or 10000 once in UTC...
            self.fail("invalid")

    def to_representation(self, value):
        return format_utc(value)


# The validators' Unicode rules cannot be written as a portable JSON Schema
# pattern, so the schema states them in words.
PRINTABLE_TEXT = (
    "Kept exactly as sent; not blank. Any script, combining marks, emoji, variation selectors, and the zero width"
    " joiner (U+200D) and non-joiner (U+200C) are accepted; no control, format (such as the bidirectional"
    " overrides and isolates U+202A-U+202E and U+2066-U+2069, or U+200B), surrogate, private-use, unassigned or"
    " noncharacter code points, and no line or paragraph separators."
)
COUPON_NAME = f"{PRINTABLE_TEXT} Not `.` or `..`."


class SharedFieldsSerializer(serializers.Serializer):
    """A serializer whose fields are built and bound once per class, then shared by its instances.

    DRF deep-copies every declared field for each serializer instance, which
    runs each field's __init__ again and builds its validators anew: on the
    claim endpoint that was a fifth of a refusal's CPU (docs/performance.md).
    For fields that keep no per-request state (they read no context, and
    `partial` is never used), the fields of one prototype instance, bound
    once, serve every instance in every thread.
    """

    @property
    def fields(self):
        cls = type(self)
        shared = cls.__dict__.get("_shared_fields")
        if shared is None:
            shared = cls._shared_fields = serializers.Serializer.fields.func(cls())
        return shared


class InputSerializer(SharedFieldsSerializer):
    """An input serializer: its fields validate what was sent and keep nothing of it."""


class ExtensibleInputSerializer(InputSerializer):
    """An input serializer: its fields validate what was sent and keep nothing of it."""

    # It also takes the extensions' optional fields of its kind (coupons/extensions.py);
    # extension_options(validated_data) splits them off from the coupon's own. (The docstring above is
    # InputSerializer's: the schema shows it as the body's description.)
    extension_kind = ""  # "create" or "claim"

    def get_fields(self):
        fields = super().get_fields()
        for name, field in extensions.extra_fields(self.extension_kind).items():
            fields[name] = copy.deepcopy(field)
        return fields

    @classmethod
    def extension_options(cls, validated_data):
        """(the coupon's own fields, the extensions' fields) of what was validated."""
        own = {name: value for name, value in validated_data.items() if name in cls._declared_fields}
        return own, {name: value for name, value in validated_data.items() if name not in own}


class CouponCreateInputSerializer(ExtensibleInputSerializer):
    extension_kind = "create"
    name = StrictCharField(validators=[validate_coupon_name], help_text=COUPON_NAME)
    amount = StrictIntegerField(min_value=1, max_value=MAX_AMOUNT)
    starts_at = Rfc3339DateTimeField(
        required=False, allow_null=True, help_text="Claims are refused before this instant. Absent or null: no bound."
    )
    ends_at = Rfc3339DateTimeField(
        required=False,
        allow_null=True,
        help_text="Claims are refused from this instant on; after starts_at. Absent or null: no bound.",
    )
    hold_seconds = StrictIntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=MAX_HOLD_SECONDS,
        help_text="A claim not redeemed within this many seconds of being granted expires, and its unit goes back"
        " to stock. Absent or null: claims are held until redeemed or released.",
    )
    redeem_until = Rfc3339DateTimeField(
        required=False, allow_null=True, help_text="Redemptions are refused from this instant on. Absent or null: none."
    )

    def validate(self, attrs):
        starts_at, ends_at = attrs.get("starts_at"), attrs.get("ends_at")
        if starts_at is not None and ends_at is not None and ends_at <= starts_at:
            raise serializers.ValidationError({"ends_at": "Must be after starts_at."})
        return attrs


class ClaimInputSerializer(ExtensibleInputSerializer):
    extension_kind = "claim"
    user_id = StrictCharField(validators=[validate_identifier_text], help_text=PRINTABLE_TEXT)
    coupon_name = StrictCharField(validators=[validate_coupon_name], help_text=COUPON_NAME)


def is_plain_claim_input(data) -> bool:
    """Whether ClaimInputSerializer accepts `data` as it is, judged without running it: 0.6 µs against the
    serializer's 22, a tenth of a refusal answered from memory (coupons/api/memory_refusals.py). A JSON object of
    exactly `coupon_name` and `user_id`, each printable ASCII, not blank, at most MAX_TEXT_LENGTH long; not `.` or
    `..` as a name. A sufficient condition only (tests/test_memory_refusals.py holds the serializer to accepting
    what it passes): anything else, valid or not, is for the serializer to judge."""
    return (
        type(data) is dict
        and data.keys() == CLAIM_INPUT_FIELDS
        and all(
            type(value) is str and value.isascii() and value.isprintable() and 0 < len(value) <= MAX_TEXT_LENGTH
            and not value.isspace()
            for value in data.values()
        )
        and data["coupon_name"] not in {".", ".."}
    )  # fmt: skip


CLAIM_INPUT_FIELDS = frozenset(ClaimInputSerializer._declared_fields)


class CouponSerializer(serializers.Serializer):
    name = serializers.CharField()
    amount = serializers.IntegerField()
    remaining_amount = serializers.IntegerField()
    starts_at = Rfc3339DateTimeField(allow_null=True, help_text="UTC; null: no bound.")
    ends_at = Rfc3339DateTimeField(allow_null=True, help_text="UTC; null: no bound.")
    hold_seconds = serializers.IntegerField(allow_null=True, help_text="null: claims are held until redeemed.")
    redeem_until = Rfc3339DateTimeField(allow_null=True, help_text="UTC; null: no bound.")


class UserIdListField(serializers.ListField):
    """A list of user ids, passed through as-is: a coupon may have 100,000 claimers."""

    child = serializers.CharField()

    def to_representation(self, data):
        return data


class CouponDetailSerializer(CouponSerializer):
    status = serializers.ChoiceField(
        choices=[(status.value, status.name) for status in SaleStatus],
        help_text="By the database's clock: scheduled (before starts_at), live, sold_out (no stock left inside "
        "the window), ended (at or after ends_at).",
    )
    claimed_by = UserIdListField(
        help_text="The users whose claim holds a unit (held or redeemed), in claim order: amount - remaining_amount"
        " of them."
    )
    held_amount = serializers.IntegerField(help_text="Units taken by claims not redeemed yet.")
    redeemed_amount = serializers.IntegerField(
        help_text="Units taken by redeemed claims. remaining_amount + held_amount + redeemed_amount = amount."
    )


class ReleaseInputSerializer(serializers.Serializer):
    reason = StrictCharField(required=False, help_text="Why the claim is released (kept in the audit trail).")


class UndoRedemptionInputSerializer(serializers.Serializer):
    reason = StrictCharField(
        required=False, help_text="Why the redemption is undone, e.g. order cancelled (kept in the audit trail)."
    )


CLAIM_CODE = (
    "16 characters of Crockford's base32, shown as XXXX-XXXX-XXXX-XXXX. Read in either case, with or without"
    " hyphens or spaces, I and L as 1, O as 0. Or an imported code (the shop's own): 4 to 64 ASCII letters and"
    " digits, read in either case, hyphens and spaces ignored; shown as imported, upper case."
)


# A code as the API reads it, in a body or a path (coupons/claim_codes.py): anything else is a 400.
CLAIM_CODE_SCHEMA = {
    "type": "string",
    "minLength": MIN_CODE_LENGTH,
    "maxLength": 2 * MAX_CODE_LENGTH - 1,
    "pattern": CODE_PATTERN,
    "example": "7K3M-Q9TD-X2HB-R4WN",
}


@extend_schema_field(CLAIM_CODE_SCHEMA)
class ClaimCodeField(serializers.Field):
    """In: a code as a person may type it (normalised). Out: grouped, XXXX-XXXX-XXXX-XXXX."""

    default_error_messages = {"invalid": "Must be a string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        try:
            return normalise_code(data)
        except MalformedCode as exc:
            raise serializers.ValidationError(str(exc)) from None

    def to_representation(self, value):
        return format_code(value)


STATUS_HELP = (
    "held: holds a unit, not redeemed yet; redeemed: spent by an order; released: given back to stock by an"
    " operator; expired: not redeemed within the coupon's hold_seconds, its unit went back to stock."
)


EXPIRES_AT_HELP = "UTC: when the hold ends if the claim is not redeemed by then; null: never."


def claim_status_field(help_text=STATUS_HELP):
    return serializers.ChoiceField(choices=ClaimStatus.choices, help_text=help_text)


USER_CLAIMS_PAGE_SIZE = 50
USER_CLAIMS_MAX_PAGE_SIZE = 100


class QuerySerializer(serializers.Serializer):
    """A query string's parameters, none of which may be sent empty.

    DRF reads `?after=` as if `after` were absent, where the schema says a
    uuid, an integer or a string of at least one character: the API refuses it
    (400 invalid), as the schema says, rather than answer as if it were not sent.
    """

    def to_internal_value(self, data):
        sent_empty = {
            name: "Must not be empty: leave the parameter out instead."
            for name in self.fields
            if "" in data.getlist(name)
        }
        if sent_empty:
            raise serializers.ValidationError(sent_empty)
        return super().to_internal_value(data)


class UserClaimsQuerySerializer(QuerySerializer):
    limit = serializers.IntegerField(
        min_value=1, max_value=USER_CLAIMS_MAX_PAGE_SIZE, default=USER_CLAIMS_PAGE_SIZE, help_text="Claims per page."
    )
    cursor = serializers.CharField(
        required=False, max_length=200, help_text="`next` from the previous page, as it was; absent: the first page."
    )
    status = serializers.MultipleChoiceField(
        choices=ClaimStatus.choices,
        required=False,
        help_text="The statuses to list, repeated for several (`?status=held&status=expired`). Absent: the claims"
        " that hold a unit, held and redeemed.",
    )


class UserClaimSerializer(serializers.Serializer):
    coupon_name = serializers.CharField()
    claimed_at = Rfc3339DateTimeField(help_text="UTC.")
    code = ClaimCodeField(help_text="What the user gives at the checkout to redeem the claim.")
    status = claim_status_field()
    expires_at = Rfc3339DateTimeField(allow_null=True, help_text=EXPIRES_AT_HELP)
    redeemed_at = Rfc3339DateTimeField(allow_null=True, help_text="UTC; null: not redeemed.")


class UserClaimsPageSerializer(serializers.Serializer):
    user_id = serializers.CharField()
    claims = UserClaimSerializer(many=True, help_text="Newest first.")
    next = serializers.CharField(allow_null=True, help_text="The cursor of the next page; null on the last page.")


class ClaimSerializer(SharedFieldsSerializer):
    """The claim's 201: its fields render values and keep nothing (shared: three more fields cost a granted claim
    CPU when copied per request)."""

    user_id = serializers.CharField()
    coupon_name = serializers.CharField()
    code = ClaimCodeField(help_text=f"What the user gives at the checkout to redeem the claim: {CLAIM_CODE}")
    status = claim_status_field(help_text="held: a new claim is always held.")
    expires_at = Rfc3339DateTimeField(allow_null=True, help_text=EXPIRES_AT_HELP)


class RedemptionInputSerializer(InputSerializer):
    code = ClaimCodeField(help_text=CLAIM_CODE)
    order_id = StrictCharField(
        required=False,
        allow_null=True,
        validators=[validate_identifier_text],
        help_text=f"The shop's order the claim is spent on (kept, and told to a second redemption). {PRINTABLE_TEXT}",
    )
    coupon_name = StrictCharField(
        required=False,
        validators=[validate_coupon_name],
        help_text="The coupon the checkout expects: a code of another coupon is then refused (404 code_not_found).",
    )

    def validate(self, attrs):
        attrs["order_id"] = attrs.get("order_id") or ""  # "" in storage: no order given
        return attrs


class RedemptionSerializer(serializers.Serializer):
    coupon_name = serializers.CharField()
    user_id = serializers.CharField()
    code = ClaimCodeField()
    status = claim_status_field()
    order_id = serializers.CharField(allow_null=True, help_text="null: redeemed for no order given, or not redeemed.")
    redeemed_at = Rfc3339DateTimeField(allow_null=True, help_text="UTC; null: not redeemed.")
    claimed_at = Rfc3339DateTimeField(help_text="UTC.")
    expires_at = Rfc3339DateTimeField(allow_null=True, help_text=EXPIRES_AT_HELP)

    def to_representation(self, instance):
        data = super().to_representation(instance)
        data["order_id"] = data["order_id"] or None
        return data


class ErrorSerializer(serializers.Serializer):
    error = serializers.CharField(help_text="For people: what went wrong.")
    code = serializers.ChoiceField(
        # (value, name) pairs, as ENUM_NAME_OVERRIDES reads the enum: the schema names it ErrorCode.
        choices=[(code.value, code.name) for code in ErrorCode],
        help_text="For programs: what went wrong, one of a fixed set.",
    )


class AlreadyRedeemedErrorSerializer(ErrorSerializer):
    redeemed_at = Rfc3339DateTimeField(help_text="UTC: when the code was redeemed.")
    order_id = serializers.CharField(allow_null=True, help_text="The order it was redeemed for; null: none given.")


class WebhookCreateInputSerializer(InputSerializer):
    url = serializers.CharField(
        min_length=1,
        max_length=2000,
        help_text="http:// or https:// URL of a public host (no loopback or private address unless"
        " WEBHOOK_ALLOW_PRIVATE is on), without credentials.",
    )
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=EVENT_TYPES),
        required=False,
        default=list,
        max_length=len(EVENT_TYPES),
        help_text="The event types to send; absent or empty: all of them.",
    )
    description = serializers.CharField(required=False, default="", max_length=255, allow_blank=True)

    def validate_url(self, value):
        if not isinstance(self.initial_data.get("url"), str):
            raise serializers.ValidationError("Must be a string.")
        return value


class WebhookSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    url = serializers.CharField()
    event_types = serializers.ListField(child=serializers.CharField(), help_text="Empty: all event types.")
    description = serializers.CharField()
    is_active = serializers.BooleanField(
        help_text="False once disabled after failing deliveries (see disabled_reason)."
    )
    disabled_reason = serializers.CharField()
    created_at = Rfc3339DateTimeField(help_text="UTC.")


class WebhookCreatedSerializer(WebhookSerializer):
    secret = serializers.CharField(
        help_text="The signing secret (Standard Webhooks, whsec_...): shown this once, store it now."
    )


class EventsQuerySerializer(QuerySerializer):
    after = serializers.UUIDField(
        required=False, help_text="The id of the last event you have; absent: from the oldest event kept."
    )
    limit = serializers.IntegerField(min_value=1, max_value=1000, default=100, help_text="Events per page.")


class EventSerializer(serializers.Serializer):
    id = serializers.UUIDField(help_text="Unique; a webhook's Webhook-Id.")
    type = serializers.ChoiceField(choices=EVENT_TYPES)
    occurred_at = Rfc3339DateTimeField(help_text="UTC, the database's clock.")
    coupon = serializers.CharField(help_text="The coupon's name.")
    sequence = serializers.IntegerField(help_text="The coupon's events are numbered 1, 2, 3... with no gap.")
    data = serializers.DictField(help_text="What the event says: depends on its type.")


class EventsPageSerializer(serializers.Serializer):
    events = EventSerializer(many=True, help_text="In commit order; a coupon's events by sequence.")
    next = serializers.UUIDField(
        allow_null=True, help_text="Pass it as `after` for the events that follow (null: no event yet)."
    )
