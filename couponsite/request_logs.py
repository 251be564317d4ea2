"""A request's log context and its one `request_finished` line (docs/operator-guide.md, Logs).

Our own rather than django-structlog's RequestMiddleware, which this
replaces line for line (same event names, fields and levels): the library,
beyond the line itself, logs a `request_started` event even when its level
drops it, formats the request's path twice, sends four signals, reads its
settings through Django's lazy settings on every request and merges the log
context once more to hand it to streamed responses; that was 7% of a
sold-out refusal's instructions (docs/performance.md), for features this
service does not use (upstream request ids, user ids, client IPs, Celery).
No client IP: behind a proxy it is the proxy's, or whatever X-Forwarded-For
claims; the proxy's access log has the real one.
"""

import logging
import uuid

import structlog
from django.core.signals import got_request_exception

logger = structlog.get_logger(__name__)

# 4xx answers (sold out, already claimed) are the normal course of a flash sale: info, as 2xx.
LEVELS_BY_STATUS_CLASS = {5: logging.ERROR}


class RequestLogMiddleware:
    """Binds a `request_id` to every line of the request; logs `request_finished`, or `request_failed` for a bug."""

    def __init__(self, get_response):
        self.get_response = get_response
        # A bug's traceback: Django sends this inside its `except` (sys.exc_info() is the bug), then answers 500.
        got_request_exception.connect(self.log_failure)

    def __call__(self, request):
        structlog.contextvars.bind_contextvars(request_id=str(uuid.uuid4()))
        try:
            response = self.get_response(request)
            if not getattr(request, "failure_logged", False):
                level = LEVELS_BY_STATUS_CLASS.get(response.status_code // 100, logging.INFO)
                logger.log(level, "request_finished", code=response.status_code, request=_described(request))
            return response
        finally:
            structlog.contextvars.clear_contextvars()

    def log_failure(self, sender, request=None, **kwargs):
        # Every live instance hears the signal (tests make several handlers): the request is logged once.
        if request is None or getattr(request, "failure_logged", False):
            return
        request.failure_logged = True
        logger.exception("request_failed", code=500, request=_described(request))


def _described(request):
    return f"{request.method} {request.get_full_path()}"
