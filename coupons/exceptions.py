"""Domain failures of the coupon service, raised by services and selectors.

They know nothing of HTTP: coupons/api/errors.py maps them to status codes.
"""


class CouponError(Exception):
    default_message = "Coupon operation failed."

    def __init__(self, message=None):
        super().__init__(message or self.default_message)


class CouponNotFound(CouponError):
    default_message = "Coupon not found."


class CouponAlreadyExists(CouponError):
    default_message = "A coupon with this name already exists."


class AlreadyClaimed(CouponError):
    default_message = "This user has already claimed this coupon."


class OutOfStock(CouponError):
    default_message = "This coupon has no stock left."


class AmountBelowClaimed(CouponError):
    default_message = "The amount cannot be lower than the number of units already claimed."
