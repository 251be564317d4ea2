"""The project's URLs plus a view that fails, to see what a client gets from a bug."""

from django.urls import path
from rest_framework.decorators import api_view

from couponsite.urls import handler500
from couponsite.urls import urlpatterns as project_urlpatterns


def broken_view(request):
    raise RuntimeError("secret internals")


@api_view(["GET"])
def broken_api_view(request):
    raise RuntimeError("secret internals")


urlpatterns = [
    path("broken", broken_view),
    path("api/broken", broken_api_view),
    *project_urlpatterns,
]

__all__ = ["handler500", "urlpatterns"]
