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
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_FROM_RFC4648 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", ALPHABET)
BITS = CLAIM_CODE_LENGTH * 5  # 80
GROUP = 4
# What a typed code may hold, in either case: the alphabet, the letters read
# as digits, and hyphens or spaces between groups. ASCII only, before any
# case mapping: "ß".upper() is "SS", and the Kelvin sign lower-cases to "k".
_TYPED = re.compile(r"[0-9A-HJKMNP-TV-Z IOL-]+", re.ASCII | re.IGNORECASE)
# The codes the OpenAPI schema describes: the 16 symbols (or their aliases, in either case), with at most one
# hyphen or space between two of them. normalise_code reads a little more (separators at either end or
# doubled, up to 32 characters in all), but that length cap is no regular expression a client generator or a
# fuzzer can use, so the schema states the forms people type and print. tests/test_schema.py checks that
# every code of the pattern is accepted.
CODE_PATTERN = r"^(?:[0-9A-TV-Za-tv-z][ -]?){15}[0-9A-TV-Za-tv-z]$"
_READ_AS = str.maketrans({"I": "1", "L": "1", "O": "0", "-": None, " ": None})


def new_claim_code() -> str:
    """A fresh code, its 16 bare characters (80 bits from the operating system's CSPRNG)."""
    # Two calls into C, where drawing each symbol with secrets.choice cost 16 (measured: 2.6 µs against 17 µs).
    return base64.b32encode(secrets.token_bytes(BITS // 8)).decode().translate(_FROM_RFC4648)


def format_code(code: str) -> str:
    """The stored code as people read it: XXXX-XXXX-XXXX-XXXX."""
    return "-".join(code[i : i + GROUP] for i in range(0, len(code), GROUP))


def normalise_code(text: str) -> str:
    """The bare code a typed one stands for (upper case, no hyphens or spaces, I/L as 1, O as 0).

    Raises MalformedCode for anything else: another alphabet, the wrong
    length, NUL or any other control character.
    """
    # The length check first: a 10 MB string is refused without a scan.
    if len(text) > 2 * CLAIM_CODE_LENGTH or not _TYPED.fullmatch(text):
        raise MalformedCode(
            f"A code is {CLAIM_CODE_LENGTH} characters of Crockford's base32 (0-9 and A-Z without U),"
            " optionally grouped with hyphens, such as 7K3M-Q9TD-X2HB-R4WN."
        )
    code = text.upper().translate(_READ_AS)
    if len(code) != CLAIM_CODE_LENGTH:
        raise MalformedCode(f"A code has {CLAIM_CODE_LENGTH} characters (hyphens and spaces aside), not {len(code)}.")
    return code
