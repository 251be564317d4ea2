"""Request metrics for Prometheus: the series docs/operator-guide.md (Metrics) and the Grafana dashboard read.

django-prometheus's two middlewares update some fifteen series per request
(by method, by transport, by charset, body sizes...), each update taking
prometheus_client's one lock per process (in multiprocess mode, an mmap
write under it): about a seventh of a refusal's CPU, and a lock every
thread of a process queues for (docs/performance.md). This one
middleware keeps the three request series the operator guide documents, under
django-prometheus's names, labels, help texts and buckets, so that queries
and dashboards read them as before, plus its exception counters; five
updates per request, the labelled children looked up in a dict.
django-prometheus still serves /metrics (coupons/stock_metrics.py).
"""

import time

from django.conf import settings
from prometheus_client import Counter, Histogram

UNNAMED_VIEW = "<unnamed view>"
METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "TRACE", "OPTIONS", "CONNECT", "PATCH"}

latency_including_middlewares = Histogram(
    "django_http_requests_latency_including_middlewares_seconds",
    "Histogram of requests processing time (including middleware processing time).",
    buckets=settings.PROMETHEUS_LATENCY_BUCKETS,
)
latency_by_view_method = Histogram(
    "django_http_requests_latency_seconds_by_view_method",
    "Histogram of request processing time labelled by view.",
    ["view", "method"],
    buckets=settings.PROMETHEUS_LATENCY_BUCKETS,
)
responses_by_status_view_method = Counter(
    "django_http_responses_total_by_status_view_method",
    "Count of responses by status, view, method.",
    ["status", "view", "method"],
)
exceptions_by_type = Counter("django_http_exceptions_total_by_type", "Count of exceptions by object type.", ["type"])
exceptions_by_view = Counter("django_http_exceptions_total_by_view", "Count of exceptions by view.", ["view"])


class LabelledChildren(dict):
    """A metric's children by label values, made once (`labels()` sorts and locks on every call)."""

    def __init__(self, metric):
        super().__init__()
        self.metric = metric

    def __missing__(self, label_values):
        child = self[label_values] = self.metric.labels(*label_values)
        return child


_latency_by_view_method = LabelledChildren(latency_by_view_method)
_responses_by_status_view_method = LabelledChildren(responses_by_status_view_method)


class RequestMetricsMiddleware:
    """First in MIDDLEWARE: times the whole request, and the view from the moment it is called."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        finished = time.perf_counter()
        view = _view_name(request)
        method = request.method
        latency_including_middlewares.observe(finished - started)
        view_started = getattr(request, "metrics_view_started", None)
        if view_started is not None:
            _latency_by_view_method[view, method].observe(finished - view_started)
        status_method = method if method in METHODS else "<invalid method>"
        _responses_by_status_view_method[str(response.status_code), view, status_method].inc()
        return response

    def process_view(self, request, view_func, view_args, view_kwargs):
        request.metrics_view_started = time.perf_counter()

    def process_exception(self, request, exception):
        exceptions_by_type.labels(type(exception).__name__).inc()
        exceptions_by_view.labels(_view_name(request)).inc()


def _view_name(request):
    match = getattr(request, "resolver_match", None)
    return (match.view_name if match is not None else None) or UNNAMED_VIEW
