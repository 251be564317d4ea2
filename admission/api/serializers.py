"""The shapes of fair admission's request and response bodies."""

from rest_framework import serializers

from admission.models import EntryStatus
from coupons.api.serializers import PRINTABLE_TEXT, InputSerializer, Rfc3339DateTimeField, StrictCharField
from coupons.validators import validate_identifier_text


class EntryInputSerializer(InputSerializer):
    user_id = StrictCharField(validators=[validate_identifier_text], help_text=PRINTABLE_TEXT)
    altcha = serializers.CharField(
        required=False,
        trim_whitespace=False,
        help_text="With ADMISSION_PROOF_OF_WORK on: the solved challenge of GET /api/admission/challenge, as ALTCHA's"
        " widget sends it (base64 JSON). Ignored otherwise.",
    )


class EntrySerializer(serializers.Serializer):
    coupon_name = serializers.CharField()
    user_id = serializers.CharField()
    status = serializers.ChoiceField(choices=EntryStatus.choices)
    position = serializers.IntegerField(
        allow_null=True, help_text="queue: the place in line; null in the pre-queue (drawn at the opening) and draws."
    )


class StandingSerializer(EntrySerializer):
    ahead = serializers.IntegerField(allow_null=True, help_text="Waiting users before this one; null: not known yet.")
    estimated_wait_seconds = serializers.IntegerField(
        allow_null=True, help_text="At the admission rate (set, or measured over the last minute); null: unknown."
    )
    admission_token = serializers.CharField(
        required=False, help_text="While admitted: the JWS to send as the claim's admission_token."
    )
    admitted_until = Rfc3339DateTimeField(required=False, help_text="While admitted: the token's exp (UTC).")


class DrawProofSerializer(serializers.Serializer):
    coupon_name = serializers.CharField()
    algorithm = serializers.CharField()
    commitment = serializers.CharField(help_text="SHA-256 (hex) of the seed, published when the coupon was created.")
    draw_at = Rfc3339DateTimeField()
    drawn_at = Rfc3339DateTimeField(allow_null=True)
    seed = serializers.CharField(allow_null=True, help_text="256 bits, hex; null until the draw.")
    amount = serializers.IntegerField(allow_null=True, help_text="How many winners the draw picked.")
    entries_hash = serializers.CharField(allow_null=True)
    entries = serializers.ListField(child=serializers.CharField(), help_text="The entered user ids, sorted.")
    winners = serializers.ListField(child=serializers.CharField(), allow_null=True)
    waiting_list = serializers.ListField(child=serializers.CharField(), allow_null=True)


class ChallengeParametersSerializer(serializers.Serializer):
    # ALTCHA's names (camelCase): its widget and libraries read them.
    algorithm = serializers.CharField()
    cost = serializers.IntegerField()
    keyLength = serializers.IntegerField()
    keyPrefix = serializers.CharField()
    keySignature = serializers.CharField()
    nonce = serializers.CharField()
    salt = serializers.CharField()
    expiresAt = serializers.IntegerField(help_text="Unix time after which a solution is refused.")


class ChallengeSerializer(serializers.Serializer):
    parameters = ChallengeParametersSerializer()
    signature = serializers.CharField()


class JwkSerializer(serializers.Serializer):
    kty = serializers.CharField()
    crv = serializers.CharField()
    alg = serializers.CharField()
    use = serializers.CharField()
    kid = serializers.CharField()
    x = serializers.CharField()


class JwksSerializer(serializers.Serializer):
    keys = JwkSerializer(many=True)
