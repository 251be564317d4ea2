from django.urls import path, re_path

from coupons.api.code_import_views import CodeImportApi
from coupons.api.redemption_views import RedemptionApi, RedemptionDetailApi
from coupons.api.views import ClaimReleaseApi, CouponCreateApi, CouponDetailApi, UserClaimsApi
from coupons.api.webhook_views import EventsApi, WebhookDetailApi, WebhooksApi

urlpatterns = [
    path("coupons", CouponCreateApi.as_view(), name="coupon-create"),
    # coupons/claim (ClaimApi) is couponsite/urls.py's first pattern, before this catch-all name pattern too.
    # Before the catch-all name pattern too: DELETE releases a claim, GET
    # reads the coupon whose name happens to contain "/claims/". The name is
    # what comes before the first "/claims/"; a user id may hold "/".
    re_path(r"^coupons/(?P<name>.+?)/claims/(?P<user_id>.+)$", ClaimReleaseApi.as_view(), name="claim-release"),
    # Before the catch-all too: POST imports codes (coupons/imported_codes.py), GET reads the coupon whose name
    # ends with "/codes".
    re_path(r"^coupons/(?P<name>.+)/codes$", CodeImportApi.as_view(), name="coupon-codes"),
    # `path` accepts "/" inside a name (sent percent-encoded as %2F).
    path("coupons/<path:name>", CouponDetailApi.as_view(), name="coupon-detail"),
    re_path(r"^users/(?P<user_id>.+)/claims$", UserClaimsApi.as_view(), name="user-claims"),
    path("redemptions", RedemptionApi.as_view(), name="redemptions"),
    # Any text after the slash reaches the view, which refuses a malformed
    # code with a 400 rather than the catch-all 404 of an unknown path.
    re_path(r"^redemptions/(?P<code>.+)$", RedemptionDetailApi.as_view(), name="redemption-detail"),
    path("webhooks", WebhooksApi.as_view(), name="webhooks"),
    path("webhooks/<uuid:subscription_id>", WebhookDetailApi.as_view(), name="webhook-detail"),
    path("events", EventsApi.as_view(), name="events"),
]
