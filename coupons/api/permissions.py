"""Who may create coupons (anyone, or only authenticated staff when COUPON_CREATE_REQUIRES_STAFF is on)
and who may release claims (never anyone: staff only)."""

from django.conf import settings
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.permissions import AllowAny, IsAdminUser


class StaffOnlyWhenRestricted:
    """An APIView mixin: authenticated staff only, when COUPON_CREATE_REQUIRES_STAFF is on.

    Off, the view reads no credentials at all, so that a stale token or an
    admin session (and the CSRF check that comes with it) never changes the
    answer to an anonymous client. The setting is read per request.
    """

    authentication_classes = [TokenAuthentication, SessionAuthentication]

    def get_authenticators(self):
        if not settings.COUPON_CREATE_REQUIRES_STAFF:
            return []
        return super().get_authenticators()

    def get_permissions(self):
        return [IsAdminUser() if settings.COUPON_CREATE_REQUIRES_STAFF else AllowAny()]


# Release is never anonymous: a staff user, by DRF token or by admin
# session (with its CSRF token). The one place to widen it, e.g. OR-ing in
# an API key scope: [IsAdminUser | HasReleaseScope].
RELEASE_AUTHENTICATION_CLASSES = [TokenAuthentication, SessionAuthentication]
RELEASE_PERMISSION_CLASSES = [IsAdminUser]
