"""A straightforward Django + DRF claim: what a Django developer would write first, served the same way.

The benchmark (bench/flashsale.py) runs it beside the service, on the same
database and tables, so that the service's figures have a yardstick: a DRF
APIView with DRF's default parsers, renderers, authentication and Django's
default middleware; `transaction.atomic()`, `select_for_update()` on the
coupon, an `exists()` for the user's claim, a `create()`, an `F()`
decrement; a refusal takes the same lock. Served by
`DJANGO_SETTINGS_MODULE=bench.straightforward_settings python -m couponsite.serve`.
"""

from django.db import transaction
from django.db.models import F
from django.http import HttpResponse
from django.urls import path
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from coupons.models import LIVE_STATUSES, Claim, Coupon


class ClaimInput(serializers.Serializer):
    user_id = serializers.CharField(max_length=255)
    coupon_name = serializers.CharField(max_length=255)


class StraightforwardClaim(APIView):
    def post(self, request):
        claim = ClaimInput(data=request.data)
        claim.is_valid(raise_exception=True)
        user_id, name = claim.validated_data["user_id"], claim.validated_data["coupon_name"]
        with transaction.atomic():
            coupon = Coupon.objects.select_for_update().filter(name=name).first()
            if coupon is None:
                return Response({"code": "not_found"}, status=status.HTTP_404_NOT_FOUND)
            if Claim.objects.filter(coupon=coupon, user_id=user_id, status__in=LIVE_STATUSES).exists():
                return Response({"code": "already_claimed"}, status=status.HTTP_409_CONFLICT)
            if coupon.remaining_amount <= 0:
                return Response({"code": "out_of_stock"}, status=status.HTTP_400_BAD_REQUEST)
            Claim.objects.create(coupon=coupon, user_id=user_id)
            Coupon.objects.filter(pk=coupon.pk).update(remaining_amount=F("remaining_amount") - 1)
        return Response({"user_id": user_id, "coupon_name": name}, status=status.HTTP_201_CREATED)


def health(request):
    return HttpResponse("ok")


urlpatterns = [
    path("api/coupons/claim", StraightforwardClaim.as_view()),
    path("health", health),
]
