"""What other apps add to coupons, without `coupons` importing them (admission/, campaigns/).

An app with rules of its own for some coupons' claims (a waiting room, a
budget shared by several coupons) subclasses CouponExtension and registers
one instance from its AppConfig.ready():

    from coupons import extensions
    extensions.register(MyExtension())

Coupons calls every registered extension at fixed points: when a coupon is
created (extra input fields, its own rows in the same transaction), when
its detail is read (extra fields), and in the claim path:

1. `applies_to` says which coupons' claims the extension judges. It is read
   when a process loads a coupon's state (coupons/coupon_states.py), not
   per claim: a coupon no extension applies to pays nothing. An extension
   that changes its answer for a coupon calls
   `coupons.coupon_states.coupon_changed(coupon_id=..., name=...)` in the same
   transaction.
2. `prepare_claim` runs before any query, once per claim request (CPU only:
   checking a token's signature, say) and returns what the extension needs
   in the transaction: anything, a refusal (a CouponError) included, which
   is given back to `refusal` below so that the answers keep their order.
3. `start_group` runs in the claim group's transaction, after the coupon
   row lock and the holders read, with every member of the group, and may
   lock and read rows of its own in a number of statements that does not
   grow with the group. Its `refusal` is asked, in arrival order, about each
   member that would otherwise be granted (not a holder, the sale window
   open, stock left): so the order of the answers is 404, 409
   (already_claimed), 403 (window), 400 (out_of_stock), then the
   extension's own. `written` gets the granted claims once they have ids.
4. `units_returned` runs in the transaction that gives claims' units back
   (a release, a hold's expiry).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from coupons.exceptions import CouponError


@dataclass(frozen=True)
class ClaimMember:
    """One claim of a group, as an extension sees it."""

    position: int  # in the group, in arrival order
    user_id: str
    prepared: Any  # what the extension's prepare_claim returned for it


class ClaimGroupRule:
    """An extension's judgement of one claim group, inside the group's transaction."""

    def refusal(self, member: ClaimMember) -> CouponError | None:
        """The member's refusal, or None to let it be granted (it then counts as granted for the next members)."""
        return None

    def written(self, granted: Sequence[tuple[ClaimMember, Any]]) -> list:
        """After the granted claims (member, Claim with its id) are inserted: write the extension's rows; return
        the extra events (coupons.outbox.NewEvent) to record with the group's."""
        return []


class CouponExtension:
    """Base class: every hook does nothing."""

    #: Fields POST /api/coupons accepts for this extension: name -> DRF field (optional fields only).
    create_fields: dict = {}
    #: Fields of the admin's add-coupon form for this extension: name -> Django form field (optional fields only);
    #: their cleaned values (empty ones left out) reach coupon_created as create_fields' do.
    admin_create_fields: dict = {}
    #: Fields POST /api/coupons/claim accepts for this extension (optional): given to prepare_claim.
    claim_fields: dict = {}
    #: Its own CouponError subclasses -> (HTTP status, error `code` string), for coupons/api/errors.py.
    http_errors: dict = {}

    def coupon_created(self, *, coupon, options: dict) -> list:
        """In create_coupon's transaction: `options` holds the create_fields (or admin_create_fields) sent. Returns
        extra events."""
        return []

    def coupon_details(self, *, coupon_name: str) -> dict:
        """Extra fields of the coupon's detail (GET /api/coupons/{name}, and the create's answer)."""
        return {}

    def applies_to(self, *, coupon_ids: Sequence[int]) -> set[int]:
        """Which of these coupons' claims this extension judges (read when a coupon's state is loaded)."""
        return set()

    def prepare_claim(self, *, coupon_id: int, user_id: str, claim_input: dict) -> Any:
        """Before any query: what start_group will need of this claim (or a CouponError to answer in order).
        `claim_input` holds the claim request's optional fields (admission_token...)."""
        return None

    def start_group(self, *, coupon_id: int, members: Sequence[ClaimMember], now: datetime) -> ClaimGroupRule:
        """In the claim group's transaction, after the coupon row lock: the group's judge."""
        return ClaimGroupRule()

    def units_returned(self, *, coupon_id: int, claims: Sequence[tuple[int, str]]) -> None:
        """In the transaction that gives these claims' units back ((claim id, user id) pairs)."""


_registered: list[CouponExtension] = []


def register(extension: CouponExtension) -> None:
    if extension not in _registered:
        _registered.append(extension)


def registered() -> tuple[CouponExtension, ...]:
    return tuple(_registered)


def extra_fields(kind: str) -> dict:
    """Every extension's `create_fields`, `claim_fields` or `admin_create_fields` (kind: "create", "claim" or
    "admin_create"), by name."""
    return {name: field for extension in _registered for name, field in getattr(extension, f"{kind}_fields").items()}


def http_error(exc: CouponError) -> tuple[int, str] | None:
    """(status, code) of an extension's own domain error, or None."""
    for extension in _registered:
        if (mapped := extension.http_errors.get(type(exc))) is not None:
            return mapped
    return None


def details_of(coupon_name: str) -> dict:
    """Every extension's extra detail fields of this coupon."""
    details = {}
    for extension in _registered:
        details.update(extension.coupon_details(coupon_name=coupon_name))
    return details


def applying_to(coupon_id: int) -> tuple[CouponExtension, ...]:
    """The extensions that judge this coupon's claims (a query per extension that has any coupons)."""
    return tuple(extension for extension in _registered if coupon_id in extension.applies_to(coupon_ids=[coupon_id]))
