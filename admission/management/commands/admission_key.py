"""python manage.py admission_key [KID]: print a new `kid:key` item for ADMISSION_SIGNING_KEYS."""

import datetime

from django.core.management.base import BaseCommand

from admission.tokens import new_key_text


class Command(BaseCommand):
    help = "Print a new Ed25519 signing key as a kid:key item for ADMISSION_SIGNING_KEYS."

    def add_arguments(self, parser):
        parser.add_argument("kid", nargs="?", help="The key's id (default: today's date).")

    def handle(self, *args, kid, **options):
        self.stdout.write(new_key_text(kid or datetime.date.today().isoformat()))
