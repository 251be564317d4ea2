"""The shapes of the API's request and response bodies.

Input fields are strict about JSON types: a name must be a JSON string and an
amount a JSON integer (not true, 1.5, "5" or null), where DRF would coerce.
"""

from rest_framework import serializers

from coupons.api.error_codes import ErrorCode
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
    "Kept exactly as sent; not blank; no control, format, surrogate, private-use or unassigned characters"
    " and no line or paragraph separators."
)
COUPON_NAME = f"{PRINTABLE_TEXT} Not `.` or `..`."


class CouponCreateInputSerializer(serializers.Serializer):
    name = StrictCharField(validators=[validate_coupon_name], help_text=COUPON_NAME)
    amount = StrictIntegerField(min_value=1, max_value=MAX_AMOUNT)


class ClaimInputSerializer(serializers.Serializer):
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
    error = serializers.CharField(help_text="For people: what went wrong.")
    code = serializers.ChoiceField(
        # (value, name) pairs, as ENUM_NAME_OVERRIDES reads the enum: the schema names it ErrorCode.
        choices=[(code.value, code.name) for code in ErrorCode],
        help_text="For programs: what went wrong, one of a fixed set.",
    )
