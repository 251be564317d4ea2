"""Admission's domain failures (coupons/api/errors.py maps them through the extension's http_errors)."""

from coupons.exceptions import CouponError


class NoAdmission(CouponError):
    default_message = "This coupon is first come, first served: claim it directly, there is nothing to enter."


class AlreadyEntered(CouponError):
    default_message = "This user has already entered for this coupon."


class EntriesNotOpen(CouponError):
    default_message = "Entries for this coupon are not open yet."


class EntriesClosed(CouponError):
    default_message = "Entries for this coupon are closed: the draw has been made or is due."


class EntryNotFound(CouponError):
    default_message = "This user has not entered for this coupon."


class NotADraw(CouponError):
    default_message = "This coupon's admission is not a draw."


class AdmissionRequired(CouponError):
    default_message = "This coupon is claimed with an admission token (admission_token): enter and wait for admission."


class AdmissionInvalid(CouponError):
    default_message = "This admission token is not valid for this user and this coupon."


class AdmissionExpired(CouponError):
    default_message = "This admission token has expired: the admission lapsed."


class ProofOfWorkRequired(CouponError):
    default_message = "Entries need a solved proof of work (altcha): GET /api/admission/challenge and solve it."


class ProofOfWorkInvalid(CouponError):
    default_message = "This proof of work does not solve a challenge of this service."
