"""Admission tokens: JWS signed with Ed25519 (EdDSA) through PyJWT, bound to one user, one coupon, one entry.

Claims: `iss` (ADMISSION_TOKEN_ISSUER), `aud` (the coupon's name), `sub`
(the user id), `jti` (the entry's id: the claim spends it, once), `nbf` and
`exp` (the admission's window, whole seconds), header `kid`. The public
keys are served at /.well-known/jwks.json, so an edge can check tokens too.

A token is derived from the entry's admission (entry, user, coupon,
admitted_at, admitted_until) and the signing key: any host mints the same
one without writing anything, so the poll that hands it out needs no query.
"""

import base64
import functools
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from admission.exceptions import AdmissionExpired, AdmissionInvalid

ALGORITHM = "EdDSA"
# Seconds of clock difference between app hosts tolerated on nbf and exp here: a token minted from the database's
# clock is not refused as premature by a host whose clock lags. The deadline itself is the database's: the claim
# transaction refuses an admission past its admitted_until whatever this host's clock says.
CLOCK_LEEWAY_SECONDS = 5


@dataclass(frozen=True)
class SigningKeys:
    signing_kid: str
    signing_key: Ed25519PrivateKey
    verifying: dict  # kid -> Ed25519PublicKey
    private: dict  # kid -> Ed25519PrivateKey: every key that verifies is ours (verify_token signs again)
    derived: bool  # from SECRET_KEY (ADMISSION_SIGNING_KEYS unset)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_key_text(kid: str) -> str:
    """A fresh `kid:key` item for ADMISSION_SIGNING_KEYS."""
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    raw = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return f"{kid}:{b64url(raw)}"


@functools.lru_cache(maxsize=4)  # keyed by the settings' text: a test's override_settings gets its own keys
def _parse(configured: str, secret_key: str) -> SigningKeys:
    if not configured.strip():
        # Derived: the same on every host that shares SECRET_KEY, and as secret as SECRET_KEY itself.
        seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"admission-token", info=b"ed25519").derive(
            secret_key.encode()
        )
        kid = "derived-" + hashlib.sha256(seed).hexdigest()[:8]
        key = Ed25519PrivateKey.from_private_bytes(seed)
        return SigningKeys(kid, key, {kid: key.public_key()}, {kid: key}, derived=True)
    keys = []
    for item in configured.split(","):
        kid, sep, text = item.strip().partition(":")
        try:
            if not sep or not kid:
                raise ValueError
            keys.append((kid, Ed25519PrivateKey.from_private_bytes(_unb64url(text))))
        except ValueError:
            raise ImproperlyConfigured(
                "ADMISSION_SIGNING_KEYS must be kid:key items separated by commas, each key 32 bytes in base64url"
                " (python manage.py admission_key prints one)."
            ) from None
    return SigningKeys(keys[0][0], keys[0][1], {kid: key.public_key() for kid, key in keys}, dict(keys), derived=False)


def signing_keys() -> SigningKeys:
    return _parse(settings.ADMISSION_SIGNING_KEYS, settings.SECRET_KEY)


def jwks() -> dict:
    """The verifying keys as a JSON Web Key Set (RFC 8037: OKP, Ed25519)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return {
        "keys": [
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": ALGORITHM,
                "use": "sig",
                "kid": kid,
                "x": b64url(key.public_bytes(Encoding.Raw, PublicFormat.Raw)),
            }
            for kid, key in signing_keys().verifying.items()
        ]
    }


# One per admission (and keys): a poll every second re-signs nothing. Keyed by the keys' settings too, so that
# another key never answers with a token it did not sign.
@functools.lru_cache(maxsize=65536)
def _mint(configured, secret_key, issuer, coupon_name, user_id, entry_id, not_before, expires):
    keys = _parse(configured, secret_key)
    kid = keys.signing_kid
    claims = {"iss": issuer, "aud": coupon_name, "sub": user_id, "jti": str(entry_id), "nbf": not_before}
    claims["exp"] = expires
    return jwt.encode(claims, keys.signing_key, algorithm=ALGORITHM, headers={"kid": kid})


def issue_token(*, coupon_name: str, user_id: str, entry_id: int, admitted_at, admitted_until) -> str:
    return _mint(
        settings.ADMISSION_SIGNING_KEYS,
        settings.SECRET_KEY,
        settings.ADMISSION_TOKEN_ISSUER,
        coupon_name,
        user_id,
        entry_id,
        int(admitted_at.timestamp()),
        int(admitted_until.timestamp()),
    )


@dataclass(frozen=True)
class VerifiedToken:
    entry_id: int
    audience: str
    expires: int


def verify_token(token: str, *, user_id: str, coupon_name: str | None) -> VerifiedToken:
    """The token's claims if it is ours, for this user (and this coupon, when its name is known), and within its
    window by this host's clock; AdmissionInvalid or AdmissionExpired otherwise. CPU only.

    The signature is checked by signing the token's header and payload again with the private key its `kid`
    names and comparing, in constant time: Ed25519 is deterministic (RFC 8032), so the one signature this
    service makes for a message is the only one accepted, and signing costs a third of a verification (the
    claim path's budget: docs/fair-admission.md, Numbers). Edges, without the private keys, verify the usual
    way against the JWKS. The claims are read only once the signature matched: they are then ours, so their
    shape needs no checking; they are judged in PyJWT's order (nbf, exp, aud, iss), then the subject.
    """
    keys = signing_keys()
    try:
        header_text, payload_text, signature_text = token.split(".")
        header = json.loads(_unb64url(header_text))
        key = keys.private.get(header.get("kid")) if isinstance(header, dict) else None
        if key is None:
            raise AdmissionInvalid("This admission token was not signed by a key of this service.")
        signed = key.sign(f"{header_text}.{payload_text}".encode())
        if not hmac.compare_digest(signed, _unb64url(signature_text)):
            raise AdmissionInvalid()
        claims = json.loads(_unb64url(payload_text))
    except (ValueError, TypeError):  # not three parts, base64url, JSON (binascii and Unicode errors are ValueErrors)
        raise AdmissionInvalid() from None
    now = time.time()
    if claims["nbf"] > now + CLOCK_LEEWAY_SECONDS:
        raise AdmissionInvalid("This admission token is not valid yet.")
    if claims["exp"] <= now - CLOCK_LEEWAY_SECONDS:
        raise AdmissionExpired()
    if coupon_name is not None and claims["aud"] != coupon_name:
        raise AdmissionInvalid("This admission token is for another coupon.")
    if claims["iss"] != settings.ADMISSION_TOKEN_ISSUER:
        raise AdmissionInvalid()
    if claims["sub"] != user_id:
        raise AdmissionInvalid("This admission token is another user's.")
    return VerifiedToken(entry_id=int(claims["jti"]), audience=claims["aud"], expires=claims["exp"])


@checks.register(checks.Tags.security, deploy=True)
def check_signing_keys(app_configs, **kwargs):
    """`manage.py check --deploy`: tokens signed with a key derived from SECRET_KEY (as secret as it, no rotation)."""
    if settings.ADMISSION_SIGNING_KEYS.strip():
        return []
    return [
        checks.Warning(
            "ADMISSION_SIGNING_KEYS is not set: admission tokens are signed with a key derived from SECRET_KEY,"
            " which cannot be rotated on its own.",
            hint="Set ADMISSION_SIGNING_KEYS (python manage.py admission_key prints a key).",
            id="admission.W001",
        )
    ]
