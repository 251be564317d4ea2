from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from admission.api.views import JwksApi
from coupons import stock_metrics
from coupons.api.memory_refusals import refusing_from_memory
from coupons.api.views import ClaimApi
from couponsite import views

urlpatterns = [
    # The hottest path first: every pattern tried before it cost a sold-out refusal about 5% of its CPU
    # (docs/performance.md). POST claims; GET reads the coupon that happens to be named "claim". The claims this
    # process can refuse without the database are answered before DRF's request cycle (memory_refusals.py).
    path("api/coupons/claim", refusing_from_memory(ClaimApi.as_view()), name="coupon-claim"),
    path(settings.ADMIN_PATH.removeprefix("/"), admin.site.urls),
    re_path(r"^health/?$", views.health, name="health"),
    re_path(r"^api/schema/?$", SpectacularAPIView.as_view(), name="schema"),
    re_path(r"^api/docs/?$", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    # Before coupons' paths, whose catch-all `coupons/<path:name>` would take them (admission/api/urls.py).
    path("api/", include("admission.api.urls")),
    path("api/", include("coupons.api.urls")),
    path("api/", include("campaigns.api.urls")),
    re_path(r"^\.well-known/jwks\.json$", JwksApi.as_view(), name="admission-jwks"),
    # GET /metrics: Prometheus text format, every server worker added up,
    # and the stock of live coupons (read at scrape time).
    path("metrics", stock_metrics.metrics, name="prometheus-django-metrics"),
    # Every other path: a JSON 404, with DEBUG on as well as off.
    re_path(r"", views.page_not_found),
]

handler400 = views.bad_request
handler403 = views.permission_denied
handler404 = views.page_not_found
handler500 = views.server_error
