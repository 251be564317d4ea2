"""Extensions (coupons/extensions.py): another app's rules in the claim path, create and detail, through the API."""

import contextlib

from django.test import TestCase
from rest_framework import serializers
from rest_framework.test import APIClient

from coupons import extensions
from coupons.api.serializers import ClaimInputSerializer, CouponCreateInputSerializer
from coupons.claim_groups import grant_claims
from coupons.exceptions import CouponError
from coupons.extensions import ClaimGroupRule, CouponExtension
from coupons.holds import expire_holds
from coupons.models import Claim, Coupon
from coupons.outbox import NewEvent
from coupons.services import create_coupon, release_claim


class Refused(CouponError):
    default_message = "Refused by the test extension."


class OddOnesOut(CouponExtension):
    """Judges the coupons named ODD*: refuses every member whose prepared token is "bad", and a second winner of a
    group; records what it was told."""

    create_fields = {"flavour": serializers.CharField(required=False)}
    claim_fields = {"token": serializers.CharField(required=False)}
    http_errors = {Refused: (400, "refused")}

    def __init__(self):
        self.created, self.written, self.returned = [], [], []

    def coupon_created(self, *, coupon, options):
        self.created.append((coupon.name, options))
        return [NewEvent("test.created", {"flavour": options.get("flavour")})]

    def coupon_details(self, *, coupon_name):
        return {"odd": coupon_name.startswith("ODD")}

    def applies_to(self, *, coupon_ids):
        return set(Coupon.objects.filter(pk__in=coupon_ids, name__startswith="ODD").values_list("pk", flat=True))

    def prepare_claim(self, *, coupon_id, user_id, claim_input):
        return Refused() if claim_input.get("token") == "bad" else claim_input.get("token")

    def start_group(self, *, coupon_id, members, now):
        extension = self

        class Rule(ClaimGroupRule):
            granted = 0

            def refusal(self, member):
                if isinstance(member.prepared, CouponError):
                    return member.prepared
                if self.granted == 1:
                    return Refused("one winner per group")
                self.granted += 1
                return None

            def written(self, granted):
                extension.written.extend((member.user_id, claim.pk) for member, claim in granted)
                return [NewEvent("test.granted", {"users": [member.user_id for member, _ in granted]})]

        return Rule()

    def units_returned(self, *, coupon_id, claims):
        self.returned.extend(user_id for _, user_id in claims)


def forget_shared_fields():
    """The input serializers build their fields once per process (SharedFieldsSerializer), with the extensions
    registered then: a test that registers one afterwards has them built again, with and then without it."""
    for serializer in (CouponCreateInputSerializer, ClaimInputSerializer):
        if "_shared_fields" in serializer.__dict__:
            del serializer._shared_fields


@contextlib.contextmanager
def registered(extension):
    """The extension registered for the test's length (an app registers from ready(), before the serializers
    first build their fields: here they are built again, with and then without its fields)."""
    saved = list(extensions._registered)
    extensions.register(extension)
    fields_built_again()
    try:
        yield extension
    finally:
        extensions._registered[:] = saved
        fields_built_again()


def fields_built_again():
    for serializer in (ClaimInputSerializer, CouponCreateInputSerializer):
        serializer.__dict__.get("_shared_fields") and delattr(serializer, "_shared_fields")


class ExtensionClaimPathTests(TestCase):
    def setUp(self):
        self.extension = self.enterContext(registered(OddOnesOut()))
        self.client = APIClient()

    def claim(self, user_id, name, **extra):
        return self.client.post("/api/coupons/claim", {"user_id": user_id, "coupon_name": name, **extra}, format="json")

    def test_create_gives_the_extension_its_fields_and_the_detail_shows_its_own(self):
        answer = self.client.post("/api/coupons", {"name": "ODD1", "amount": 5, "flavour": "lime"}, format="json")

        self.assertEqual(answer.status_code, 201, answer.content)
        self.assertEqual(answer.json()["odd"], True)
        self.assertEqual(self.extension.created, [("ODD1", {"flavour": "lime"})])
        self.assertEqual(self.client.get("/api/coupons/ODD1").json()["odd"], True)

    def test_a_refusal_prepared_before_the_transaction_is_answered_after_the_coupons_own(self):
        create_coupon(name="ODD2", amount=5)
        self.assertEqual(self.claim("ann", "ODD2", token="good").status_code, 201)

        # ann holds it: 409 comes first, whatever the extension thinks of her token.
        self.assertEqual(self.claim("ann", "ODD2", token="bad").json()["code"], "already_claimed")
        answer = self.claim("bob", "ODD2", token="bad")
        self.assertEqual(answer.status_code, 400)
        self.assertEqual(answer.json(), {"error": "Refused by the test extension.", "code": "refused"})
        self.assertEqual(Claim.objects.filter(coupon__name="ODD2").count(), 1)

    def test_the_group_rule_judges_members_in_order_and_writes_after_the_insert(self):
        coupon = create_coupon(name="ODD3", amount=5)
        judges = extensions.applying_to(coupon.pk)
        self.assertEqual(judges, (self.extension,))

        outcomes = grant_claims(
            coupon_id=coupon.pk, user_ids=["ann", "bob", "cat"], extensions=judges, prepared=[("t",), ("t",), ("t",)]
        )

        self.assertEqual([type(outcome).__name__ for outcome in outcomes], ["Claim", "Refused", "Refused"])
        self.assertEqual(self.extension.written, [("ann", outcomes[0].pk)])
        coupon.refresh_from_db()
        self.assertEqual(coupon.remaining_amount, 4)
        # coupon.created and test.created, then claim.granted and test.granted.
        self.assertEqual(coupon.last_event_sequence, 4)

    def test_coupons_it_does_not_judge_never_see_it(self):
        create_coupon(name="EVEN", amount=5)

        for user_id in ("ann", "bob"):
            self.assertEqual(self.claim(user_id, "EVEN", token="bad").status_code, 201)
        self.assertEqual(self.extension.written, [])

    def test_releases_and_expiries_tell_it_the_units_returned(self):
        coupon = create_coupon(name="ODD4", amount=5, hold_seconds=1)
        self.claim("ann", "ODD4")
        release_claim(coupon_name="ODD4", user_id="ann", released_by="op")
        self.claim("bob", "ODD4")
        bob = Claim.objects.filter(coupon=coupon, user_id="bob")
        bob.update(expires_at=bob.get().created_at)

        expire_holds()

        self.assertEqual(self.extension.returned, ["ann", "bob"])
