"""WSGI entry point, served by granian (see couponsite/serve.py)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "couponsite.settings")

django_application = get_wsgi_application()


def application(environ, start_response):
    """Django's WSGI application, a whole answer handed to the server as a list.

    granian writes a list's bytes in one call; any other iterable (Django
    answers with its response object) it walks from Rust through its
    response iterator, holding the GIL: a sixth of a worker's GIL time in a
    refusal storm (docs/performance.md). Closing the response ends
    the request (Django's request_finished), as the server would. Streamed
    answers (CSV exports) still stream.
    """
    response = django_application(environ, start_response)
    if getattr(response, "streaming", True):
        return response
    try:
        return [response.content]
    finally:
        response.close()
