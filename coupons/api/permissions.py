"""Who may create coupons (anyone, or only authenticated staff when COUPON_CREATE_REQUIRES_STAFF is on)
and who may release claims (never anyone: staff only)."""

from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from drf_spectacular.authentication import SessionScheme
from rest_framework import authentication
from rest_framework.authentication import TokenAuthentication
from rest_framework.permissions import IsAdminUser

from coupons.api.key_access import KeyWithScope


class SessionAuthentication(authentication.SessionAuthentication):
    """DRF's session authentication (the admin's session, with its CSRF token checked by DRF), for the API.

    The API is served without the session and authentication middlewares
    (couponsite/middleware.py: AdminOnly), so the session and the user are
    loaded here, as those middlewares would load them, and only for the
    views that accept a session.
    """

    def authenticate(self, request):
        django_request = request._request
        if not hasattr(django_request, "session"):
            _load_session.process_request(django_request)
            _load_user.process_request(django_request)
        return super().authenticate(request)


# Only their process_request is called: a session read never needs the response's cookie.
_load_session = SessionMiddleware(lambda request: None)
_load_user = AuthenticationMiddleware(lambda request: None)


class SessionAuthenticationScheme(SessionScheme):
    """The schema documents it as drf-spectacular documents DRF's (cookieAuth)."""

    target_class = SessionAuthentication
    priority = 0


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
