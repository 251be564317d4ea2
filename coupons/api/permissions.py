"""Who may create coupons (anyone, or only authenticated staff when COUPON_CREATE_REQUIRES_STAFF is on)
and who may release claims (never anyone: staff only)."""

from django.conf import settings
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.permissions import IsAdminUser

from coupons.api.key_access import ApiKeyAuthentication, KeyWithScope


class StaffOnlyWhenRestricted:
    """An APIView mixin: authenticated staff only, when COUPON_CREATE_REQUIRES_STAFF is on.

    Off, the view reads no credentials of this kind, so that a stale token or
    an admin session (and the CSRF check that comes with it) never changes
    the answer to an anonymous client. The setting is read per request.
    With API_KEYS_REQUIRED on as well (the view is then also ApiKeyRequired),
    either credential will do: a staff user or a key with the view's scope.
    """

    staff_authentication_classes = [TokenAuthentication, SessionAuthentication]

    def get_authenticators(self):
        authenticators = super().get_authenticators()
        if settings.COUPON_CREATE_REQUIRES_STAFF:
            return [*authenticators, *(authentication() for authentication in self.staff_authentication_classes)]
        return authenticators

    def get_permissions(self):
        if not settings.COUPON_CREATE_REQUIRES_STAFF:
            return super().get_permissions()
        if settings.API_KEYS_REQUIRED:
            return [(IsAdminUser | self.api_key_permission_class())()]
        return [IsAdminUser()]


# Release is never anonymous: a staff user, by DRF token or by admin session
# (with its CSRF token), or a client application's key with the `release`
# scope (the view adds the key's authentication).
RELEASE_AUTHENTICATION_CLASSES = [TokenAuthentication, SessionAuthentication]
RELEASE_PERMISSION_CLASSES = [IsAdminUser | KeyWithScope.of("release")]


class StaffOrKeyWithScope:
    """An APIView mixin for endpoints that are never anonymous, whether or not API_KEYS_REQUIRED is on: a staff
    user (DRF token, or admin session with CSRF) or an API key holding `required_scope`."""

    required_scope = None

    def get_authenticators(self):
        # The key's scheme first: it is the one a 401 names in WWW-Authenticate.
        return [ApiKeyAuthentication(), *(authentication() for authentication in RELEASE_AUTHENTICATION_CLASSES)]

    def get_permissions(self):
        return [(IsAdminUser | KeyWithScope.of(self.required_scope))()]
