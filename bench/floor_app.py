"""The least a WSGI application can do (bench/cpu_per_request.py): what a server costs a request on its own."""

BODY = b'{"status": "healthy"}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


def application(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
