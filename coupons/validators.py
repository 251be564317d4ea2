"""Validation shared by the API and the admin, attached to the model fields."""

import unicodedata

from django.core.exceptions import ValidationError

# Control, surrogate, private-use and unassigned (noncharacters included)
# code points, line and paragraph separators, and format characters (Cf):
# none can travel safely in a URL path, a log line or a CSV cell, and
# PostgreSQL refuses NUL and lone surrogates outright. Format characters
# include the bidirectional overrides and isolates (U+202A-U+202E,
# U+2066-U+2069) that make one string display as another.
REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
# ...except the two format characters real text needs: the zero width joiner
# builds emoji sequences (👨‍👩‍👧) and the non-joiner is spelling in Persian,
# Urdu, Hindi and other scripts (نوروز‌خوش). Variation selectors and
# combining marks are marks (Mn, Mc, Me), never refused.
ZERO_WIDTH_JOINERS = {"\u200c", "\u200d"}
# Invisible on their own: a value made only of these (and spaces) is blank.
VARIATION_SELECTORS = {chr(code) for code in [*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)]}
INVISIBLE = ZERO_WIDTH_JOINERS | VARIATION_SELECTORS


def validate_identifier_text(value):
    """A printable, non-blank identifier: the characters people write, none that hide or disguise text."""
    # Most ids and names are printable ASCII (U+0020-U+007E), in no refused category: one C call instead of a
    # category lookup per character (a claim checks two such values).
    if not (value.isascii() and value.isprintable()):
        for char in value:
            if unicodedata.category(char) in REFUSED_CATEGORIES and char not in ZERO_WIDTH_JOINERS:
                raise ValidationError(
                    "Must not contain control or non-printable characters (found U+%(code)04X).",
                    code="non_printable",
                    params={"code": ord(char)},
                )
    if all(char.isspace() or char in INVISIBLE for char in value):
        raise ValidationError("Must not be blank.", code="blank")


def validate_coupon_name(value):
    """A name that can always be read back through GET /api/coupons/{name}.

    Every other printable name survives percent-encoding in the path, but
    "." and ".." are dot segments that HTTP clients remove before sending.
    """
    validate_identifier_text(value)
    if value in {".", ".."}:
        raise ValidationError('"." and ".." cannot be used as coupon names.', code="dot_segment")


def is_possible_coupon_name(value):
    """Whether a coupon could have this name (its characters; any length is safe to look up)."""
    try:
        validate_coupon_name(value)
    except ValidationError:
        return False
    return True
