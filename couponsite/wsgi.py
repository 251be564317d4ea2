"""WSGI entry point, served by granian (see couponsite/serve.py)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "couponsite.settings")

application = get_wsgi_application()
