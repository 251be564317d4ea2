"""The shapes of the API's request and response bodies.

Input fields are strict about JSON types: a name must be a JSON string and an
amount a JSON integer (not true, 1.5, "5" or null), where DRF would coerce.
"""

from rest_framework import serializers

from coupons.models import MAX_AMOUNT
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


# The validators' Unicode rules cannot be written as a portable JSON Schema
# pattern, so the schema states them in words.
PRINTABLE_TEXT = (
    "Kept exactly as sent; not blank. Any script, combining marks, emoji, variation selectors, and the zero width"
    " joiner (U+200D) and non-joiner (U+200C) are accepted; no control, format (such as the bidirectional"
    " overrides and isolates U+202A-U+202E and U+2066-U+2069, or U+200B), surrogate, private-use, unassigned or"
    " noncharacter code points, and no line or paragraph separators."
)
COUPON_NAME = f"{PRINTABLE_TEXT} Not `.` or `..`."


class InputSerializer(serializers.Serializer):
    """An input serializer whose fields are built and bound once per class, then shared by its instances.

    DRF deep-copies every declared field for each serializer instance, which
    runs each field's __init__ again and builds its validators anew: on the
    claim endpoint that was a fifth of a refusal's CPU (README, Performance).
    Input fields here keep no per-request state (they read no context, and
    `partial` is never used), so the fields of one prototype instance, bound
    once, serve every instance in every thread.
    """

    @property
    def fields(self):
        cls = type(self)
        shared = cls.__dict__.get("_shared_fields")
        if shared is None:
            shared = cls._shared_fields = serializers.Serializer.fields.func(cls())
        return shared


class CouponCreateInputSerializer(InputSerializer):
    name = StrictCharField(validators=[validate_coupon_name], help_text=COUPON_NAME)
    amount = StrictIntegerField(min_value=1, max_value=MAX_AMOUNT)


class ClaimInputSerializer(InputSerializer):
    user_id = StrictCharField(validators=[validate_identifier_text], help_text=PRINTABLE_TEXT)
    coupon_name = StrictCharField(validators=[validate_coupon_name], help_text=COUPON_NAME)


class CouponSerializer(serializers.Serializer):
    name = serializers.CharField()
    amount = serializers.IntegerField()
    remaining_amount = serializers.IntegerField()


class UserIdListField(serializers.ListField):
    """A list of user ids, passed through as-is: a coupon may have 100,000 claimers."""

    child = serializers.CharField()

    def to_representation(self, data):
        return data


class CouponDetailSerializer(CouponSerializer):
    claimed_by = UserIdListField(help_text="User ids, in claim order.")


class ClaimSerializer(serializers.Serializer):
    user_id = serializers.CharField()
    coupon_name = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    error = serializers.CharField()
