"""Validation shared by the API and the admin, attached to the model fields."""

import unicodedata

from django.core.exceptions import ValidationError


def validate_identifier_text(value):
    """A printable, non-blank identifier: no control, format or surrogate characters.

    Such characters cannot travel safely in a URL path, a log line or a CSV
    cell, and PostgreSQL refuses NUL and lone surrogates outright.
    """
    if not value.strip():
        raise ValidationError("Must not be blank.", code="blank")
    for char in value:
        if unicodedata.category(char) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}:
            raise ValidationError(
                "Must not contain control or non-printable characters (found U+%(code)04X).",
                code="non_printable",
                params={"code": ord(char)},
            )


def validate_coupon_name(value):
    """A name that can always be read back through GET /api/coupons/{name}.

    Every other printable name survives percent-encoding in the path, but
    "." and ".." are dot segments that HTTP clients remove before sending.
    """
    validate_identifier_text(value)
    if value in {".", ".."}:
        raise ValidationError('"." and ".." cannot be used as coupon names.', code="dot_segment")
