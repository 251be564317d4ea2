from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware

from coupons.api.error_codes import ErrorCode, json_error


class RequestBodyLimitMiddleware:
    """Refuses oversized request bodies with a JSON 413 before anything reads them.

    Django's DATA_UPLOAD_MAX_MEMORY_SIZE only guards `request.body`; DRF's
    parsers read the stream directly, so the limit is enforced here, on the
    declared Content-Length (the WSGI server never hands over more than that).
    A chunked body declares no length, and Django would read it as empty:
    it is refused with a JSON 411 rather than mistaken for a missing body.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            content_length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return json_error("Invalid Content-Length header.", 400, ErrorCode.INVALID)
        if "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
            return json_error(
                "Send the body with a Content-Length: chunked bodies are refused.", 411, ErrorCode.LENGTH_REQUIRED
            )
        limit = settings.MAX_REQUEST_BODY_BYTES
        if request.method == "POST" and (
            (request.path.startswith("/api/coupons/") and request.path.endswith("/codes"))
            or (request.path.startswith(settings.ADMIN_PATH) and request.path.endswith("/import-codes/"))
        ):
            # A code import is streamed by its view (the admin's from Django's temporary upload file), never held
            # in memory (coupons/imported_codes.py).
            limit = settings.MAX_CODE_IMPORT_BODY_BYTES
        if content_length > limit:
            return json_error(f"Request body too large: the limit is {limit} bytes.", 413, ErrorCode.PAYLOAD_TOO_LARGE)
        return self.get_response(request)


class NulRefusalMiddleware:
    """Refuses NUL (U+0000) in the path, the query string, form fields and cookies, before any view.

    PostgreSQL text can neither hold nor be compared with NUL: a value with
    one that reaches a query fails the statement (a 500), where SQLite just
    finds nothing. Every value of the kind can come in this way (the API's
    JSON bodies are checked by their validators, which refuse NUL with every
    other control character). A path with NUL names nothing: 404; a query,
    form or cookie with one: 400.
    """

    FORM_CONTENT_TYPES = {"application/x-www-form-urlencoded", "multipart/form-data"}

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if "\x00" in request.path:
            return json_error("Not found.", 404, ErrorCode.NOT_FOUND)
        query_string = request.META.get("QUERY_STRING", "")
        if (
            "%00" in query_string
            or "\x00" in query_string
            or any("\x00" in value for value in request.COOKIES.values())
            or (request.content_type in self.FORM_CONTENT_TYPES and _holds_nul(request.body))
        ):
            return json_error("NUL characters are not allowed in a request.", 400, ErrorCode.INVALID)
        return self.get_response(request)


def _holds_nul(body):
    """Whether a form body holds a NUL, raw (multipart) or percent-encoded (URL-encoded).

    The raw bytes, not request.POST: parsing the form here would change how
    DRF then reads a (refused) form body sent to the API.
    """
    return b"\x00" in body or b"%00" in body


class AdminOnly:
    """A middleware mixin: the middleware runs for the admin's pages, and nothing else.

    Sessions, authentication and messages are the admin's. The API,
    /health and /metrics are answered without them: they read the session
    cookie, wrap a lazy user and a message store on every request only to
    throw them away (docs/performance.md). An API view that does
    accept an admin session loads it itself, when it is sent
    (coupons/api/permissions.py: SessionAuthentication), and DRF checks its
    CSRF token. The path decides, not the view: any view added outside the
    admin gets the lean stack without asking for it. Subclasses of Django's
    own classes, so that the admin's checks (admin.E408-E410) see them.
    (CSRF stays on every path: it costs an API request next to nothing,
    since DRF's views and the JSON 404 are exempt, and Django's deploy
    check wants its own class.)
    """

    def __call__(self, request):
        if is_admin_path(request):
            return super().__call__(request)
        return self.get_response(request)


def is_admin_path(request):
    return request.path_info.startswith(settings.ADMIN_PATH)


class AdminSessionMiddleware(AdminOnly, SessionMiddleware):
    pass


class AdminAuthenticationMiddleware(AdminOnly, AuthenticationMiddleware):
    pass


class AdminMessageMiddleware(AdminOnly, MessageMiddleware):
    pass
