"""Project-level endpoints: health check and JSON error pages."""

from django.db import DatabaseError, connection
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from coupons.api.error_codes import ErrorCode, json_error


def health(request):
    """200 after a database round trip; 503 when the database cannot answer."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError:
        return JsonResponse(
            {"status": "unhealthy", "error": "Database unavailable.", "code": ErrorCode.UNAVAILABLE},
            status=503,
            headers={"Retry-After": "1"},
        )
    return JsonResponse({"status": "healthy"})


def bad_request(request, exception=None):
    return json_error("Bad request.", 400, ErrorCode.INVALID)


def permission_denied(request, exception=None):
    return json_error("Permission denied.", 403, ErrorCode.FORBIDDEN)


# Exempt: a path that names nothing answers 404 whatever the method, never
# a CSRF failure page (POST /api/anything-unknown included).
@csrf_exempt
def page_not_found(request, exception=None):
    return json_error("Not found.", 404, ErrorCode.NOT_FOUND)


def server_error(request):
    return json_error("Internal server error.", 500, ErrorCode.INTERNAL_ERROR)
