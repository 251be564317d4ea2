"""The straightforward claim's settings (bench/straightforward.py): the service's database and apps, Django's
default middleware and DRF's defaults."""

from couponsite.settings import *  # noqa: F403

ROOT_URLCONF = "bench.straightforward"
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
REST_FRAMEWORK = {}
