"""python manage.py create_api_key NAME --scopes claim,read: a key for a client application.

The key is printed once, alone on the last line (`| tail -n 1` takes it);
only its hash is stored.
"""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from coupons.api_keys import create_api_key
from coupons.models import API_KEY_SCOPES


class Command(BaseCommand):
    help = "Create an API key for a client application and print it (once) on the last line."

    def add_arguments(self, parser):
        parser.add_argument("name", help="Who the key is for, e.g. 'web-shop' (at most 50 characters).")
        parser.add_argument(
            "--scopes",
            required=True,
            help=f"Comma-separated, from: {', '.join(API_KEY_SCOPES)}.",
        )
        parser.add_argument("--expires", help="ISO 8601 date and time after which the key stops working.")

    def handle(self, *args, name, scopes, expires, **options):
        scope_set = {scope.strip() for scope in scopes.split(",") if scope.strip()}
        if not scope_set:
            raise CommandError("Give at least one scope.")
        expiry_date = None
        if expires:
            expiry_date = parse_datetime(expires)
            if expiry_date is None or expiry_date.tzinfo is None:
                raise CommandError(f"--expires must be an ISO 8601 date and time with its offset, got {expires!r}.")
        try:
            api_key, key = create_api_key(name=name, scopes=scope_set, expiry_date=expiry_date)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        self.stdout.write(
            f"Created API key {api_key.prefix} for {name!r} with scopes: {', '.join(sorted(api_key.scopes))}."
            " Store it now: it cannot be shown again."
        )
        self.stdout.write(key)
