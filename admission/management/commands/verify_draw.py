"""python manage.py verify_draw NAME: recompute a draw from its published proof and say whether it matches."""

import json

from django.core.management.base import BaseCommand, CommandError

from admission import draws
from admission.selectors import get_draw_proof


class Command(BaseCommand):
    help = "Recompute the coupon's draw from what GET /api/coupons/{name}/draw publishes (or from --proof FILE)."

    def add_arguments(self, parser):
        parser.add_argument("name", help="The coupon's name.")
        parser.add_argument("--proof", help="A saved proof (JSON) to check instead of the database's.")

    def handle(self, *args, name, proof, **options):
        if proof:
            with open(proof) as file:
                published = json.load(file)
        else:
            published = get_draw_proof(coupon_name=name)
        problems = draws.verify(published)
        if problems:
            raise CommandError("Draw does NOT verify: " + "; ".join(problems) + ".")
        self.stdout.write(
            f"Draw verified: seed matches the commitment, {len(published['entries'])} entries match their hash,"
            f" {len(published['winners'])} winners and {len(published['waiting_list'])} on the waiting list"
            " recomputed."
        )
