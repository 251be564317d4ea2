from django.urls import path

from coupons.api.views import ClaimApi, CouponCreateApi, CouponDetailApi

urlpatterns = [
    path("coupons", CouponCreateApi.as_view(), name="coupon-create"),
    # Before the catch-all name pattern: POST here claims, GET reads the
    # coupon that happens to be named "claim".
    path("coupons/claim", ClaimApi.as_view(), name="coupon-claim"),
    # `path` accepts "/" inside a name (sent percent-encoded as %2F).
    path("coupons/<path:name>", CouponDetailApi.as_view(), name="coupon-detail"),
]
