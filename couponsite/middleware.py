from django.conf import settings

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
        if content_length > limit:
            return json_error(f"Request body too large: the limit is {limit} bytes.", 413, ErrorCode.PAYLOAD_TOO_LARGE)
        return self.get_response(request)
