"""Fair admission's paths, included before coupons' catch-all `coupons/<path:name>` (couponsite/urls.py).

Coupon names may hold "/". The split rules: for POST .../entries and GET
.../draw, the name is everything before the final "/entries" or "/draw";
for GET .../entries/{user_id}, the name is what precedes the first
"/entries/" and the user id is the rest (it may hold "/"). A name holding
"/claims/" is left to the release's path (coupons/api/urls.py).
"""

from django.urls import path, re_path

from admission.api.views import ChallengeApi, DrawApi, EntriesApi, StandingApi

NAME = r"(?P<name>(?:(?!/claims/).)+?)"

urlpatterns = [
    path("admission/challenge", ChallengeApi.as_view(), name="admission-challenge"),
    re_path(rf"^coupons/{NAME}/entries$", EntriesApi.as_view(), name="admission-entries"),
    re_path(rf"^coupons/{NAME}/entries/(?P<user_id>.+)$", StandingApi.as_view(), name="admission-standing"),
    re_path(rf"^coupons/{NAME}/draw$", DrawApi.as_view(), name="admission-draw"),
]
