"""API keys over HTTP: `Authorization: Api-Key <key>`, and the scope each endpoint needs.

With API_KEYS_REQUIRED off (the default) none of this reads a credential,
so the API answers exactly as its contract says. On: a request without a
usable key is a 401 (NotAuthenticated or AuthenticationFailed, with
`WWW-Authenticate: Api-Key`), one whose key lacks the endpoint's scope a 403
(PermissionDenied), both rendered by coupons/api/errors.py. Settings are
read per request.
"""

import functools

import structlog
from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import AllowAny, BasePermission
from rest_framework_api_key.permissions import KeyParser

from coupons.api.schema import add_error_responses
from coupons.api_keys import VerifiedKey, verify_api_key

KEYWORD = KeyParser.keyword  # "Api-Key"


class ApiKeyAuthentication(BaseAuthentication):
    """Authenticates a request by its API key: request.auth is then the VerifiedKey (request.user stays None).

    No `Authorization: Api-Key` header: not authenticated by this class (the
    permission then answers 401). A header with an unknown, revoked or
    expired key: 401 at once.
    """

    key_parser = KeyParser()

    def authenticate(self, request):
        key = self.key_parser.get(request)
        if key is None:
            return None
        verified = verify_api_key(key)
        if verified is None:
            raise AuthenticationFailed("Unknown or revoked API key.")
        if verified.has_expired():
            raise AuthenticationFailed("This API key has expired.")
        # Every later log line of the request (the `claim` line among them)
        # names the client application by its key's prefix, as the admin lists it.
        structlog.contextvars.bind_contextvars(api_key=verified.prefix)
        return (None, verified)

    def authenticate_header(self, request):
        return KEYWORD


class KeyWithScope(BasePermission):
    """The request's API key holds `scope`. Use a scope's own class, e.g. `KeyWithScope.of("release")`
    (the view needs ApiKeyAuthentication among its authenticators: see ApiKeyRequired)."""

    scope = None

    @classmethod
    @functools.cache  # one class per scope, not one per request
    def of(cls, scope):
        return type(f"{cls.__name__}_{scope}", (cls,), {"scope": scope})

    def has_permission(self, request, view):
        return isinstance(request.auth, VerifiedKey) and self.scope in request.auth.scopes


class HasApiKeyScope(KeyWithScope):
    """With API_KEYS_REQUIRED on, the request's API key must hold `scope`; off, everyone passes."""

    def has_permission(self, request, view):
        return not settings.API_KEYS_REQUIRED or super().has_permission(request, view)


class ApiKeyRequired:
    """An APIView mixin: with API_KEYS_REQUIRED on, a key with the scope `api_key_scopes[method]`."""

    api_key_scopes = {}  # HTTP method -> scope

    def get_authenticators(self):
        authenticators = super().get_authenticators()
        if settings.API_KEYS_REQUIRED:
            # First: its scheme is the one a 401 names in WWW-Authenticate.
            return [ApiKeyAuthentication(), *authenticators]
        return authenticators

    def get_permissions(self):
        permissions = super().get_permissions()
        if settings.API_KEYS_REQUIRED:
            # The key replaces the view's "anyone" (so the schema says a key is needed), not its other rules.
            kept = [permission for permission in permissions if not isinstance(permission, AllowAny)]
            return [*kept, self.api_key_permission_class()()]
        return permissions

    def api_key_permission_class(self):
        # HEAD reads as GET does; a method the view has no scope for (it would
        # answer 405) needs a key all the same, and no key can hold scope None.
        method = "GET" if self.request.method == "HEAD" else self.request.method
        return HasApiKeyScope.of(self.api_key_scopes.get(method))


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = ApiKeyAuthentication
    name = "apiKeyAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": f"`{KEYWORD} <key>`; see the client guide, API keys.",
        }


def document_key_errors(result, generator, request, public):
    """drf-spectacular hook: with API_KEYS_REQUIRED on, every API operation documents its 401 and 403."""
    if not settings.API_KEYS_REQUIRED:
        return result
    descriptions = {
        "401": "API_KEYS_REQUIRED is on and no valid key was sent (missing, unknown, revoked or expired).",
        "403": "API_KEYS_REQUIRED is on and the key lacks this endpoint's scope.",
    }
    for operations in result["paths"].values():
        for operation in operations.values():
            add_error_responses(operation, descriptions)
    return result
