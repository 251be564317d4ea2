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


class ClaimNotFound(CouponError):
    default_message = "This user holds no claim of this coupon."


class SaleNotStarted(CouponError):
    default_message = "The sale has not started yet."

    def __init__(self, message=None, *, retry_after_seconds: int):
        super().__init__(message)
        # Whole seconds until the sale opens, rounded up (at least 1).
        self.retry_after_seconds = retry_after_seconds


class SaleEnded(CouponError):
    default_message = "The sale has ended."


class MalformedCode(CouponError):
    """Text that no claim code can be (coupons/claim_codes.py): it is never looked up."""

    default_message = "This is not a claim code."


class CodeNotFound(CouponError):
    default_message = "No claim has this code."


class AlreadyRedeemed(CouponError):
    default_message = "This code has already been redeemed."

    def __init__(self, message=None, *, redeemed_at, order_id):
        super().__init__(message)
        # When, and for which order ("": none given), for the caller to tell its customer.
        self.redeemed_at = redeemed_at
        self.order_id = order_id


class ClaimExpired(CouponError):
    """The claim no longer holds a unit: its hold expired, or an operator released it."""

    default_message = "This claim has expired or been released: its unit went back to stock."


class RedemptionClosed(CouponError):
    default_message = "Redemptions of this coupon have closed."


class NotRedeemed(CouponError):
    default_message = "This code has not been redeemed: there is no redemption to undo."


class InvalidIdempotencyKey(CouponError):
    default_message = "The Idempotency-Key header must be 1 to 255 visible ASCII characters (no spaces)."


class IdempotencyKeyReused(CouponError):
    default_message = "This Idempotency-Key was used for a different request: use a new key for a new request."


class IdempotencyKeyInUse(CouponError):
    default_message = "A request with this Idempotency-Key is still running: retry after the Retry-After delay."

    def __init__(self, message=None, *, retry_after_seconds: int = 1):
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class UnsafeWebhookUrl(CouponError):
    default_message = "Webhook URLs must be http(s) URLs of a public host."


class WebhookNotFound(CouponError):
    default_message = "No webhook subscription has this id."


class ImportRejected(CouponError):
    """An import of codes refused as a whole (coupons/imported_codes.py): nothing of it was kept."""

    default_message = "The import was refused: nothing of it was kept."

    def __init__(self, message=None, *, errors=(), error_count=0):
        super().__init__(message)
        # The first rows refused, by line: {"line", "reason", "code"}; and how many were refused in all.
        self.errors = list(errors)
        self.error_count = error_count
