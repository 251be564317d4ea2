"""WSGI entry point, served by granian (see couponsite/serve.py)."""

import gc
import os
import sys

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "couponsite.settings")

# How long a thread may hold the GIL while others wait for it (Python's default: 5 ms). A claim group's leader
# that waits for the GIL holds its coupon's row lock meanwhile, and every claim of that coupon waits with it;
# set in every worker, from WEB_SWITCH_INTERVAL_MS (couponsite/serve.py checks it; docs/performance.md).
if os.environ.get("WEB_SWITCH_INTERVAL_MS"):
    sys.setswitchinterval(float(os.environ["WEB_SWITCH_INTERVAL_MS"]) / 1000)

django_application = get_wsgi_application()

# The URL conf (every view, DRF, the API's modules) imported now, not by the first request, then every object made
# so far (~110,000 that live as long as the worker) moved out of the garbage collector's reach. Left in, each of
# its full collections walked them all: up to 66 ms with the worker's threads stopped, a claim group's row lock held
# meanwhile, and every worker's claims of that coupon waiting (docs/performance.md: the hot claim's p99).
get_resolver().url_patterns  # noqa: B018 - imported for its effect
gc.freeze()


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
