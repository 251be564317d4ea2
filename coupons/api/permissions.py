"""Who may create coupons (anyone, or only authenticated staff when COUPON_CREATE_REQUIRES_STAFF is on), and who
may release claims, undo redemptions and manage webhook subscriptions (never anyone: staff, or an API key with the
scope)."""

from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from drf_spectacular.authentication import SessionScheme
from rest_framework import authentication
from rest_framework.authentication import TokenAuthentication
from rest_framework.permissions import IsAdminUser

from coupons.api.key_access import ApiKeyAuthentication, KeyWithScope


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


# A request that is never anonymous: a staff user, by DRF token or by admin
# session (with its CSRF token), or a client application's API key. The
# key's scheme first: it is the one a 401 names in WWW-Authenticate.
STAFF_OR_KEY_AUTHENTICATION_CLASSES = [ApiKeyAuthentication, TokenAuthentication, SessionAuthentication]


def staff_or_key_with(scope):
    """The permission of a request that is never anonymous: staff, or an API key holding `scope`."""
    return (IsAdminUser | KeyWithScope.of(scope))()


class StaffOrKeyWithScope:
    """An APIView mixin for endpoints that are never anonymous (webhook subscriptions), whether or not
    API_KEYS_REQUIRED is on: a staff user or an API key holding `required_scope`, for every method."""

    required_scope = None

    def get_authenticators(self):
        return [authentication() for authentication in STAFF_OR_KEY_AUTHENTICATION_CLASSES]

    def get_permissions(self):
        return [staff_or_key_with(self.required_scope)]


class StaffOrKeyToDelete:
    """An APIView mixin: a DELETE (releasing a claim, undoing a redemption) is never anonymous.

    A staff user or a client application's key with the scope
    `delete_scope`, whether or not API_KEYS_REQUIRED is on. Other methods
    keep the view's own rules.
    """

    delete_scope = None

    def initialize_request(self, request, *args, **kwargs):
        # Read here, from the request being wrapped: drf-spectacular builds
        # the schema's requests through this too, with no self.request set.
        self.deleting = request.method == "DELETE"
        return super().initialize_request(request, *args, **kwargs)

    def get_authenticators(self):
        if self.deleting:
            return [authentication() for authentication in STAFF_OR_KEY_AUTHENTICATION_CLASSES]
        return super().get_authenticators()

    def get_permissions(self):
        if self.deleting:
            return [staff_or_key_with(self.delete_scope)]
        return super().get_permissions()


def operator_name(request):
    """Who made a request that is never anonymous, for the record (who released a claim, undid a redemption,
    created a webhook subscription): the staff user's username, or the API key's prefix."""
    if request.user is not None:
        return request.user.get_username()
    return f"API key {request.auth.prefix}"
