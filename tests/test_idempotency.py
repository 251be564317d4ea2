"""Idempotency-Key on the write endpoints (coupons/idempotency.py, coupons/api/idempotency.py), through Django's
test client and through the served app (tests/faults/service.py)."""

import hashlib
import io
import json
from datetime import timedelta
from urllib.parse import quote

import rest_framework.views  # noqa: F401 - first: coupons.api.errors is loaded through DRF's settings
from django.test import TestCase, TransactionTestCase
from django.utils import timezone
from prometheus_client import REGISTRY

from coupons.api.idempotency import SPOOL_MEMORY_BYTES, spooled
from coupons.claim_codes import format_code, normalise_code
from coupons.claim_groups import grant_claims
from coupons.exceptions import IdempotencyKeyInUse
from coupons.idempotency import Attempt, StoredAnswer, acquire_key, purge_expired_keys
from coupons.models import Claim, ClaimRelease, ClaimStatus, Coupon, IdempotencyKey, ImportedCode, RedemptionUndo
from coupons.services import claim_coupon, create_coupon, redeem_claim, release_claim, undo_redemption
from tests.helpers import JsonApiAssertions, subprocess_database_url
from tests.stress.base import run_simultaneously
from tests.test_access import make_user, token_header
from tests.test_api_keys import api_key_header, new_key

CLAIM = "/api/coupons/claim"
REDEMPTIONS = "/api/redemptions"


def keyed(key):
    return {"HTTP_IDEMPOTENCY_KEY": key}


class IdempotencyApiTests(JsonApiAssertions, TestCase):
    def setUp(self):
        create_coupon(name="PROMO", amount=5)

    def claim(self, user_id, key, coupon_name="PROMO", **extra):
        return self.post_json(CLAIM, {"user_id": user_id, "coupon_name": coupon_name}, **keyed(key), **extra)

    def assert_replay_of(self, first, again):
        self.assertEqual(again.status_code, first.status_code)
        self.assertEqual(again.content, first.content)  # byte for byte
        self.assertEqual(again.get("Content-Type"), first.get("Content-Type"))
        self.assertEqual(again.get("Retry-After"), first.get("Retry-After"))
        self.assertEqual(again["Idempotent-Replayed"], "true")
        self.assertNotIn("Idempotent-Replayed", first)

    def test_a_retried_claim_gets_its_201_again_and_claims_once(self):
        first = self.claim("ann", "k-1")
        again = self.claim("ann", "k-1")

        self.assertEqual(first.status_code, 201)
        claim = Claim.objects.get()
        self.assertEqual(
            first.json(),
            {
                "user_id": "ann",
                "coupon_name": "PROMO",
                "code": format_code(claim.code),
                "status": "held",
                "expires_at": None,
            },
        )
        self.assert_replay_of(first, again)
        self.assertEqual(Claim.objects.count(), 1)
        self.assertEqual(Coupon.objects.get().remaining_amount, 4)
        # Without the key, the same request is a repeat: 409 as ever.
        self.assert_error(self.post_json(CLAIM, {"user_id": "ann", "coupon_name": "PROMO"}), 409, "already_claimed")

    def test_what_became_of_keyed_requests_is_counted(self):
        def counted():
            return {
                outcome: REGISTRY.get_sample_value("idempotent_requests_total", {"outcome": outcome}) or 0
                for outcome in ("executed", "replayed", "reused", "invalid")
            }

        before = counted()
        self.claim("ann", "k-1")
        self.claim("ann", "k-1")
        self.claim("bob", "k-1")
        self.claim("bob", "not a key")

        after = counted()
        self.assertEqual({outcome: after[outcome] - before[outcome] for outcome in after}, dict.fromkeys(after, 1))

    def test_the_same_request_is_the_same_json_whatever_its_spacing_and_key_order(self):
        first = self.claim("ann", "k-1")
        body = b'{ "coupon_name" : "PROMO",\n "user_id": "ann" }'
        again = self.post_raw(CLAIM, body, **keyed("k-1"))

        self.assert_replay_of(first, again)

    def test_a_key_reused_for_another_request_is_422_and_changes_nothing(self):
        self.claim("ann", "k-1")

        for label, response in [
            ("another body", self.claim("bob", "k-1")),
            ("another path", self.post_json("/api/coupons", {"name": "X", "amount": 1}, **keyed("k-1"))),
        ]:
            with self.subTest(label):
                self.assert_error(response, 422, "idempotency_key_reused")
        self.assertEqual(list(Claim.objects.values_list("user_id", flat=True)), ["ann"])
        self.assertFalse(Coupon.objects.filter(name="X").exists())

    def test_refusals_are_stored_and_replayed_even_once_they_no_longer_hold(self):
        refused = self.claim("ann", "k-404", coupon_name="LATER")
        self.assert_error(refused, 404, "not_found")
        create_coupon(name="LATER", amount=1)

        self.assert_replay_of(refused, self.claim("ann", "k-404", coupon_name="LATER"))
        self.assertFalse(Claim.objects.exists())
        # A new key is a new attempt.
        self.assertEqual(self.claim("ann", "k-new", coupon_name="LATER").status_code, 201)

    def test_a_refusal_decided_in_the_claim_group_is_stored_with_it(self):
        Coupon.objects.filter(name="PROMO").update(starts_at=timezone.now() + timedelta(hours=1))
        early = self.claim("ann", "k-early")

        self.assert_error(early, 403, "sale_not_started")
        self.assertTrue(early["Retry-After"])
        self.assert_replay_of(early, self.claim("ann", "k-early"))

    def test_invalid_input_is_stored_too(self):
        invalid = self.post_json(CLAIM, {"user_id": "", "coupon_name": "PROMO"}, **keyed("k-bad"))

        self.assert_error(invalid, 400, "invalid")
        self.assert_replay_of(invalid, self.post_json(CLAIM, {"user_id": "", "coupon_name": "PROMO"}, **keyed("k-bad")))

    def test_creating_a_coupon_is_idempotent(self):
        body = {"name": "NEW", "amount": 3}
        first = self.post_json("/api/coupons", body, **keyed("create-1"))
        again = self.post_json("/api/coupons", body, **keyed("create-1"))

        self.assertEqual(first.status_code, 201)
        self.assert_replay_of(first, again)
        self.assertEqual(Coupon.objects.filter(name="NEW").count(), 1)
        # A name taken is a refusal: stored like any other.
        taken_body = {"name": "PROMO", "amount": 1}
        taken = self.post_json("/api/coupons", taken_body, **keyed("create-2"))
        self.assert_error(taken, 409, "coupon_exists")
        self.assert_replay_of(taken, self.post_json("/api/coupons", taken_body, **keyed("create-2")))

    def test_importing_codes_is_idempotent_by_the_streamed_bodys_digest(self):
        def upload(body, key, query=""):
            return self.client.generic(
                "POST", f"/api/coupons/PROMO/codes{query}", body, content_type="text/csv", **keyed(key)
            )

        body = "".join(f"SHOP-{i:04d}\n" for i in range(3000))
        first = upload(body, "import-1")
        again = upload(body, "import-1")

        self.assertEqual(first.status_code, 201, first.content)
        self.assert_replay_of(first, again)  # imported once: not refused as "in use" by its own codes
        self.assertEqual(ImportedCode.objects.count(), 3000)
        # Another body, or another query, with the key: 422, and nothing imported.
        self.assert_error(upload(body + "SHOP-9999\n", "import-1"), 422, "idempotency_key_reused")
        self.assert_error(upload(body, "import-1", query="?amount=2"), 422, "idempotency_key_reused")
        # A refused import is stored and replayed like any refusal.
        refused = upload("SHOP-0001\nab\n", "import-2")
        self.assertEqual((refused.status_code, refused.json()["code"]), (400, "import_rejected"))
        self.assert_replay_of(refused, upload("SHOP-0001\nab\n", "import-2"))
        self.assertEqual(ImportedCode.objects.count(), 3000)

    def test_a_streamed_body_is_spooled_to_disk_past_its_memory_size(self):
        stream, digest = spooled(io.BytesIO(b"x" * (SPOOL_MEMORY_BYTES + 1)))

        self.assertTrue(stream._rolled)  # on disk
        self.assertEqual(len(stream.read()), SPOOL_MEMORY_BYTES + 1)
        self.assertEqual(digest, hashlib.sha256(b"x" * (SPOOL_MEMORY_BYTES + 1)).digest())

    def test_releasing_a_claim_is_idempotent(self):
        claim_coupon(user_id="ann", coupon_name="PROMO")
        staff = token_header(make_user("operator", is_staff=True))
        path = f"/api/coupons/PROMO/claims/{quote('ann')}"

        def release():
            return self.client.delete(path, data=b"", content_type="application/json", **staff, **keyed("rel-1"))

        first, again = release(), release()

        self.assertEqual(first.status_code, 204)
        self.assert_replay_of(first, again)
        self.assertEqual(ClaimRelease.objects.count(), 1)
        self.assertEqual(Coupon.objects.get().remaining_amount, 5)

    def test_redeeming_a_code_is_idempotent_and_its_refusals_are_stored(self):
        code = format_code(claim_coupon(user_id="ann", coupon_name="PROMO").code)
        body = {"code": code, "order_id": "order-1"}
        first = self.post_json(REDEMPTIONS, body, **keyed("redeem-1"))
        again = self.post_json(REDEMPTIONS, body, **keyed("redeem-1"))

        self.assertEqual(first.status_code, 201)
        self.assertEqual(first.json()["status"], "redeemed")
        self.assert_replay_of(first, again)  # the 201, not the 409 a repeat without the key hears
        self.assertEqual(Claim.objects.get().status, ClaimStatus.REDEEMED)
        self.assertEqual(self.post_json(REDEMPTIONS, body).json()["code"], "already_redeemed")
        # A refusal is stored too: another key's 409 is replayed as it was, even once the redemption is undone.
        refused = self.post_json(REDEMPTIONS, {"code": code, "order_id": "order-2"}, **keyed("redeem-2"))
        self.assertEqual((refused.status_code, refused.json()["order_id"]), (409, "order-1"))
        undo_redemption(code=normalise_code(code), undone_by="operator")
        self.assert_replay_of(
            refused, self.post_json(REDEMPTIONS, {"code": code, "order_id": "order-2"}, **keyed("redeem-2"))
        )
        self.assertEqual(Claim.objects.get().status, ClaimStatus.HELD)

    def test_a_gone_claims_410_is_stored(self):
        code = format_code(claim_coupon(user_id="ann", coupon_name="PROMO").code)
        release_claim(coupon_name="PROMO", user_id="ann", released_by="operator")

        gone = self.post_json(REDEMPTIONS, {"code": code}, **keyed("redeem-gone"))

        self.assert_error(gone, 410, "claim_expired")
        self.assert_replay_of(gone, self.post_json(REDEMPTIONS, {"code": code}, **keyed("redeem-gone")))

    def test_undoing_a_redemption_is_idempotent(self):
        code = claim_coupon(user_id="ann", coupon_name="PROMO").code
        redeem_claim(code=code, order_id="order-1")
        staff = token_header(make_user("operator", is_staff=True))

        def undo():
            return self.client.delete(
                f"{REDEMPTIONS}/{format_code(code)}", data=b"", content_type="application/json", **staff, **keyed("u-1")
            )

        first, again = undo(), undo()

        self.assertEqual(first.status_code, 204)
        self.assert_replay_of(first, again)  # 204 again, not 409 not_redeemed
        self.assertEqual(RedemptionUndo.objects.count(), 1)
        self.assertEqual(Claim.objects.get().status, ClaimStatus.HELD)

    def test_keys_belong_to_their_caller(self):
        first, second = new_key("claim"), new_key("claim")

        with self.settings(API_KEYS_REQUIRED=True):
            self.assertEqual(self.claim("ann", "shared", **api_key_header(first)).status_code, 201)
            # Another caller, the same key, another request: not a reuse, a request of its own.
            self.assertEqual(self.claim("bob", "shared", **api_key_header(second)).status_code, 201)
        # Nor does an anonymous caller see the first caller's answer.
        self.assertEqual(self.claim("cat", "shared").status_code, 201)
        self.assertEqual(IdempotencyKey.objects.filter(key="shared").count(), 3)

    def test_malformed_keys_are_refused_before_anything_changes(self):
        for label, key in [
            ("empty", ""),
            ("too long", "k" * 256),
            ("a space", "my key"),
            ("a tab", "my\tkey"),
            ("not ASCII", "clé"),
            ("empty quotes", '""'),
        ]:
            with self.subTest(label):
                response = self.claim("ann", key)
                self.assert_error(response, 400, "invalid_idempotency_key")
        self.assertFalse(Claim.objects.exists())
        self.assertFalse(IdempotencyKey.objects.exists())

    def test_the_longest_key_and_a_quoted_key_are_accepted(self):
        self.assertEqual(self.claim("ann", "k" * 255).status_code, 201)
        first = self.claim("bob", "abc")
        self.assert_replay_of(first, self.claim("bob", '"abc"'))  # the structured-field string form

    def hold_as_if_running(self, user_id, key, *, lease_left):
        """The key as a request that sent it and is still running (or died) left it: held, unanswered, no effect."""
        self.assertEqual(self.claim(user_id, key).status_code, 201)
        Claim.objects.all().delete()
        Coupon.objects.update(remaining_amount=5)
        IdempotencyKey.objects.filter(key=key).update(
            status_code=None, body=b"", owner="another", locked_until=timezone.now() + lease_left
        )

    def test_a_key_held_by_a_running_request_is_in_use(self):
        self.hold_as_if_running("ann", "busy", lease_left=timedelta(seconds=30))

        response = self.claim("ann", "busy")

        self.assert_error(response, 409, "idempotency_key_in_use")
        self.assertEqual(response["Retry-After"], "1")
        self.assertFalse(Claim.objects.exists())
        self.assertEqual(IdempotencyKey.objects.get().owner, "another")  # still the running request's

    def test_a_key_whose_holder_died_is_taken_over_once_its_lease_is_over(self):
        self.hold_as_if_running("ann", "orphan", lease_left=timedelta(seconds=-1))

        self.assertEqual(self.claim("ann", "orphan").status_code, 201)
        self.assertEqual(list(Claim.objects.values_list("user_id", flat=True)), ["ann"])
        self.assertEqual(self.claim("ann", "orphan")["Idempotent-Replayed"], "true")

    def test_an_expired_key_is_as_good_as_new(self):
        self.claim("ann", "old")
        IdempotencyKey.objects.update(expires_at=timezone.now())

        response = self.claim("bob", "old")  # another request: no 422, the old answer is gone

        self.assertEqual(response.status_code, 201)
        self.assertNotIn("Idempotent-Replayed", response)
        self.assertEqual(IdempotencyKey.objects.get().status_code, 201)

    def test_a_server_error_is_not_stored(self):
        # A 429 (rate limited) is refused before the key is even looked at; a 5xx lets go of it.
        with self.settings(CLAIM_RATE_LIMIT="1/h"):
            from django.core.cache import cache

            cache.clear()
            self.addCleanup(cache.clear)
            self.assertEqual(self.claim("ann", "k-1").status_code, 201)
            self.assert_error(self.claim("bob", "k-2"), 429, "rate_limited")
        self.assertFalse(IdempotencyKey.objects.filter(key="k-2").exists())
        self.assertEqual(self.claim("bob", "k-2").status_code, 201)


class PurgeTests(TestCase):
    def test_expired_keys_are_purged_in_batches_and_the_others_kept(self):
        now = timezone.now()
        rows = [
            IdempotencyKey(
                caller="anonymous",
                key=f"k{i}",
                fingerprint="f",
                status_code=201,
                created_at=now,
                expires_at=now - timedelta(seconds=1) if i < 25 else now + timedelta(hours=1),
            )
            for i in range(30)
        ]
        IdempotencyKey.objects.bulk_create(rows)

        self.assertEqual(purge_expired_keys(batch_size=10), 25)
        self.assertEqual(IdempotencyKey.objects.count(), 5)
        self.assertEqual(purge_expired_keys(batch_size=10), 0)


class ClaimGroupFenceTests(TestCase):
    """A member whose key a retry took over (its lease ran out) cannot commit: its group runs again without it."""

    def test_a_member_that_lost_its_key_is_left_out_and_the_others_granted(self):
        coupon = create_coupon(name="PROMO", amount=1)
        held = [acquire_key(caller="anonymous", key=name, fingerprint="f") for name in ("k-ann", "k-bob")]
        for attempt in held:
            attempt.answer_for = lambda outcome: StoredAnswer(201 if isinstance(outcome, Claim) else 400, "", "", b"")
        IdempotencyKey.objects.filter(key="k-ann").update(owner="the retry")  # taken over

        outcomes = grant_claims(coupon_id=coupon.pk, user_ids=["ann", "bob"], attempts=held)

        self.assertIsInstance(outcomes[0], IdempotencyKeyInUse)
        self.assertIsInstance(outcomes[1], Claim)  # bob gets the unit ann's attempt could not take
        self.assertEqual(list(Claim.objects.values_list("user_id", flat=True)), ["bob"])
        self.assertEqual(IdempotencyKey.objects.get(key="k-bob").status_code, 201)
        self.assertIsNone(IdempotencyKey.objects.get(key="k-ann").status_code)
        self.assertIsNone(held[0].stored)

    def test_an_attempt_holding_its_key_stores_its_answer_in_the_group(self):
        coupon = create_coupon(name="PROMO", amount=1)
        attempt = acquire_key(caller="anonymous", key="k", fingerprint="f")
        self.assertIsInstance(attempt, Attempt)
        attempt.answer_for = lambda outcome: StoredAnswer(201, "application/json", "", b'{"ok":1}')

        grant_claims(coupon_id=coupon.pk, user_ids=["ann"], attempts=[attempt])

        self.assertEqual(attempt.stored.body, b'{"ok":1}')
        self.assertEqual(bytes(IdempotencyKey.objects.get().body), b'{"ok":1}')


CONCURRENT = 20


class ConcurrentRetriesTests(JsonApiAssertions, TransactionTestCase):
    """20 requests with one key at once, on real threads and connections: one effect, one 201, the rest replays
    of it or 409 idempotency_key_in_use."""

    def assert_one_effect(self, replies):
        statuses = [(status, replayed, code) for status, replayed, code, _ in replies]
        originals = [reply for reply in replies if reply[0] == 201 and not reply[1]]
        self.assertEqual(len(originals), 1, statuses)
        for status, _, code, body in replies:
            if status == 201:
                self.assertEqual(body, originals[0][3])
            else:
                self.assertEqual((status, code), (409, "idempotency_key_in_use"), statuses)
        self.assertEqual(list(Claim.objects.values_list("user_id", flat=True)), ["ann"])
        self.assertEqual(Coupon.objects.get().remaining_amount, 9)

    def test_through_the_test_client(self):
        create_coupon(name="PROMO", amount=10)

        def send():
            response = self.post_json(CLAIM, {"user_id": "ann", "coupon_name": "PROMO"}, **keyed("same"))
            code = response.json().get("code") if response.status_code != 201 else None
            return response.status_code, response.has_header("Idempotent-Replayed"), code, response.content

        self.assert_one_effect(run_simultaneously([send] * CONCURRENT))

    def test_through_the_served_app(self):
        from tests.faults.service import Service

        create_coupon(name="PROMO", amount=10)
        with Service(subprocess_database_url(), WEB_CONCURRENCY="2") as service:

            def send():
                reply = service.claim("ann", "PROMO", idempotency_key="same")
                code = reply.body.get("code") if reply.status != 201 else None
                return reply.status, "idempotent-replayed" in reply.headers, code, json.dumps(reply.body)

            replies = run_simultaneously([send] * CONCURRENT, connect=False)
            self.assert_one_effect(replies)
            # A replay through the served app carries the header, and the first answer's bytes.
            again = service.claim("ann", "PROMO", idempotency_key="same")
            self.assertEqual((again.status, again.headers["idempotent-replayed"]), (201, "true"))
            bad = service.claim("bob", "PROMO", idempotency_key="x" * 256)
            self.assertEqual((bad.status, bad.body["code"]), (400, "invalid_idempotency_key"))
