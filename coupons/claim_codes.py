"""Claim codes: what a shopper types at a checkout to spend a claim.

80 random bits from `secrets` (a guess at one of a billion live codes hits
with odds of about 1 in 10^15), written in Crockford's base32
(https://www.crockford.com/base32.html): digits and upper-case letters
without I, L, O and U, so nothing reads as something else. Shown in four
groups of four, `7K3M-Q9TD-X2HB-R4WN`; read back whatever the case, with or
without hyphens and spaces, and with I or L taken for 1 and O for 0, as
Crockford's spec says. Stored and looked up as the 16 bare characters.

Drawn as 10 bytes from `secrets`, encoded by the standard library's base32
(RFC 4648: 10 bytes are exactly 16 symbols, no padding) and mapped symbol
for symbol onto Crockford's alphabet: both are the 32 values of 5 bits, so
every code is equally likely. Reading them back (Crockford's aliases, the
hyphens) is a dozen lines of our own: no package reads Crockford's text
without also imposing its check symbols.
"""

import base64
import re
import secrets

from coupons.exceptions import MalformedCode

CLAIM_CODE_LENGTH = 16
# An imported code's length, without hyphens or spaces (every stored code's, ours included).
MIN_CODE_LENGTH = 4
MAX_CODE_LENGTH = 64
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_FROM_RFC4648 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", ALPHABET)
BITS = CLAIM_CODE_LENGTH * 5  # 80
GROUP = 4
# What a typed code may hold, in either case: the alphabet, the letters read
# as digits, and hyphens or spaces between groups. ASCII only, before any
# case mapping: "ß".upper() is "SS", and the Kelvin sign lower-cases to "k".
_TYPED = re.compile(r"[0-9A-HJKMNP-TV-Z IOL-]+", re.ASCII | re.IGNORECASE)
# The codes the OpenAPI schema describes: 4 to 64 ASCII letters and digits in either case (ours: the 16
# symbols of Crockford's alphabet or their aliases; an imported one: the shop's), with at most one hyphen or
# space between two of them. normalise_code reads a little more (separators at either end or doubled), but
# that is no regular expression a client generator or a fuzzer can use, so the schema states the forms
# people type and print. tests/test_schema.py checks that every code of the pattern is accepted.
CODE_PATTERN = r"^(?:[0-9A-Za-z][ -]?){3,63}[0-9A-Za-z]$"
_READ_AS = str.maketrans({"I": "1", "L": "1", "O": "0", "-": None, " ": None})
# What an imported code may hold: ASCII letters and digits, hyphens or spaces between them.
_IMPORTED_STORED = re.compile(rf"[0-9A-Z]{{{MIN_CODE_LENGTH},{MAX_CODE_LENGTH}}}", re.ASCII)


def new_claim_code() -> str:
    """A fresh code, its 16 bare characters (80 bits from the operating system's CSPRNG)."""
    # Two calls into C, where drawing each symbol with secrets.choice cost 16 (measured: 2.6 µs against 17 µs).
    return base64.b32encode(secrets.token_bytes(BITS // 8)).decode().translate(_FROM_RFC4648)


def format_code(code: str) -> str:
    """The stored code as people read it: XXXX-XXXX-XXXX-XXXX (an imported code of another length: as stored)."""
    if len(code) != CLAIM_CODE_LENGTH:
        return code
    return "-".join(code[i : i + GROUP] for i in range(0, len(code), GROUP))


def normalise_code(text: str) -> str:
    """The bare code a typed one stands for: one of ours (upper case, no hyphens or spaces, I/L as 1, O as 0), or
    an imported one (upper case, no hyphens or spaces).

    Raises MalformedCode for anything else: another alphabet, the wrong
    length, NUL or any other control character.
    """
    # The length check first: a 10 MB string is refused without a scan.
    if len(text) <= 2 * CLAIM_CODE_LENGTH and _TYPED.fullmatch(text):
        code = text.upper().translate(_READ_AS)
        if len(code) == CLAIM_CODE_LENGTH:
            return code
    if (imported := imported_form(text)) is not None:
        return imported
    raise MalformedCode(
        f"A code is {CLAIM_CODE_LENGTH} characters of Crockford's base32 (0-9 and A-Z without U), optionally grouped"
        f" with hyphens, such as 7K3M-Q9TD-X2HB-R4WN; or an imported code: {MIN_CODE_LENGTH} to {MAX_CODE_LENGTH}"
        " ASCII letters and digits, with hyphens or spaces between them if you like."
    )


def imported_form(text: str) -> str | None:
    """An imported code's stored form (upper case, without hyphens or spaces), or None if it cannot be one."""
    # ASCII first, then one regex on the stripped text: an import calls this once per row.
    if len(text) > 2 * MAX_CODE_LENGTH or not text.isascii():
        return None
    code = text.upper().replace("-", "").replace(" ", "")
    return code if _IMPORTED_STORED.fullmatch(code) else None


def reads_as_ours_otherwise(code: str) -> bool:
    """Whether this imported code (stored form) would be read as one of ours, changed (I, L or O in 16 characters)."""
    return len(code) == CLAIM_CODE_LENGTH and bool(_TYPED.fullmatch(code)) and code.translate(_READ_AS) != code
