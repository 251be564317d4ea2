"""Project-level endpoints: health check and JSON error pages."""

from django.db import DatabaseError, connection
from django.http import JsonResponse


def health(request):
    """200 after a database round trip; 503 when the database cannot answer."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError:
        return JsonResponse(
            {"status": "unhealthy", "error": "Database unavailable."},
            status=503,
            headers={"Retry-After": "1"},
        )
    return JsonResponse({"status": "healthy"})


def _json_error(message, status):
    return JsonResponse({"error": message}, status=status)


def bad_request(request, exception=None):
    return _json_error("Bad request.", 400)


def permission_denied(request, exception=None):
    return _json_error("Permission denied.", 403)


def page_not_found(request, exception=None):
    return _json_error("Not found.", 404)


def server_error(request):
    return _json_error("Internal server error.", 500)
