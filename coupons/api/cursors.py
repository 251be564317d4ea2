"""The opaque `next` cursor of a user's claims: where the page ended, which clients hand back as they got it.

URL-safe base64 of "<created_at in ISO 8601>|<claim id>". Opaque to
clients (the format may change); anything that does not decode is a 400.
"""

import base64
import binascii

from django.utils.dateparse import parse_datetime
from rest_framework.exceptions import ValidationError

from coupons.selectors import ClaimPosition

INVALID_CURSOR = "Not a cursor this API gave out: pass `next` from the previous page as it was."


def encode_cursor(position: ClaimPosition | None) -> str | None:
    if position is None:
        return None
    created_at, claim_id = position
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{claim_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> ClaimPosition:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        created_at, claim_id = text.split("|")
        position = (parse_datetime(created_at), int(claim_id))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValidationError({"cursor": INVALID_CURSOR}) from None
    if position[0] is None or position[0].tzinfo is None:
        raise ValidationError({"cursor": INVALID_CURSOR})
    return position
