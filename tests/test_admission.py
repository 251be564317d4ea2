"""Fair admission (admission/): entering, polling, the admission pass, tokens spent by claims, the draw's proof."""

import json
from datetime import UTC, datetime, timedelta
from io import StringIO

import altcha
import jwt
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import TestCase, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from admission import draws, selectors
from admission.exceptions import AdmissionInvalid
from admission.models import AdmissionPolicy, Entry, SpentChallenge
from admission.proof_of_work import check_solution
from admission.services import admission_pass, admission_passes, enter_group
from admission.tokens import issue_token, jwks, new_key_text, signing_keys, verify_token
from coupons.models import Claim, Coupon, Event
from coupons.services import release_claim
from tests.helpers import JsonApiAssertions


def future(seconds=3600):
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


class AdmissionTestCase(JsonApiAssertions, TestCase):
    def setUp(self):
        selectors.clear_caches()

    def create(self, name, amount, **fields):
        answer = self.post_json("/api/coupons", {"name": name, "amount": amount, **fields})
        self.assertEqual(answer.status_code, 201, answer.content)
        return answer.json()

    def enter(self, name, user_id, **extra):
        return self.post_json(f"/api/coupons/{name}/entries", {"user_id": user_id}, **extra)

    def standing(self, name, user_id):
        selectors.clear_caches()  # each read sees the database's latest (the cache is tested on its own below)
        answer = self.client.get(f"/api/coupons/{name}/entries/{user_id}")
        self.assertEqual(answer.status_code, 200, answer.content)
        return answer.json()

    def claim(self, name, user_id, token=None):
        body = {"coupon_name": name, "user_id": user_id}
        if token is not None:
            body["admission_token"] = token
        return self.post_json("/api/coupons/claim", body)

    def admit(self, name):
        return admission_pass(coupon_id=Coupon.objects.get(name=name).pk)

    def token_of(self, name, user_id):
        standing = self.standing(name, user_id)
        self.assertEqual(standing["status"], "admitted", standing)
        return standing["admission_token"]


class EnteringTests(AdmissionTestCase):
    def test_a_queue_coupon_publishes_its_admission_and_commitment(self):
        body = self.create("Q", 2, admission="queue", admission_seconds=30)

        self.assertEqual(body["admission"], "queue")
        self.assertEqual(body["admission_seconds"], 30)
        self.assertRegex(body["draw_commitment"], r"^[0-9a-f]{64}$")
        policy = AdmissionPolicy.objects.get()
        self.assertEqual(draws.commitment_of(policy.seed), body["draw_commitment"])
        self.assertNotIn(policy.seed, json.dumps(body))

    def test_a_first_come_coupon_shows_nothing_new_and_has_nothing_to_enter(self):
        body = self.create("F", 2)

        self.assertNotIn("admission", body)
        self.assert_error(self.enter("F", "ann"), 409, "no_admission")
        self.assertEqual(self.claim("F", "ann").status_code, 201)

    def test_entering_twice_is_refused_and_positions_follow_arrivals(self):
        self.create("Q", 2, admission="queue")

        first = self.enter("Q", "ann")
        self.assertEqual(first.status_code, 201, first.content)
        self.assertEqual(first.json(), {"coupon_name": "Q", "user_id": "ann", "status": "waiting", "position": 1})
        self.assertEqual(self.enter("Q", "bob").json()["position"], 2)
        self.assert_error(self.enter("Q", "ann"), 409, "already_entered")
        self.assertEqual(Entry.objects.count(), 2)

    def test_an_idempotency_key_replays_the_entry(self):
        self.create("Q", 2, admission="queue")

        first = self.enter("Q", "ann", HTTP_IDEMPOTENCY_KEY="k1")
        again = self.enter("Q", "ann", HTTP_IDEMPOTENCY_KEY="k1")

        self.assertEqual(again.status_code, 201)
        self.assertEqual(again.content, first.content)
        self.assertEqual(again["Idempotent-Replayed"], "true")
        self.assertEqual(Entry.objects.count(), 1)

    def test_bad_input_is_a_400_and_changes_nothing(self):
        for fields in (
            {"admission": "lottery"},
            {"admission": "draw"},  # no draw_at
            {"admission": "queue", "draw_at": future()},
            {"admission_seconds": 30},  # first_come with queue fields
            {"admission": "queue", "admission_seconds": 0},
            {"admission": "queue", "admit_per_second": "5"},
        ):
            with self.subTest(fields):
                answer = self.post_json("/api/coupons", {"name": "X", "amount": 1, **fields})
                self.assert_error(answer, 400, "invalid")
        self.assertFalse(Coupon.objects.exists())
        self.create("Q", 1, admission="queue")
        self.assert_error(self.post_json("/api/coupons/Q/entries", {"user_id": 5}), 400, "invalid")
        self.assert_error(self.enter("nope", "ann"), 404, "not_found")
        self.assertFalse(Entry.objects.exists())

    def test_entries_open_at_and_a_draws_close(self):
        self.create("D", 1, admission="draw", entries_open_at=future(60), draw_at=future(120))
        self.assert_error(self.enter("D", "ann"), 403, "entries_not_open")
        AdmissionPolicy.objects.update(entries_open_at=timezone.now() - timedelta(seconds=10))
        self.assertEqual(self.enter("D", "ann").status_code, 201)
        AdmissionPolicy.objects.update(draw_at=timezone.now() - timedelta(seconds=1))
        self.assert_error(self.enter("D", "bob"), 403, "entries_closed")


class QueueTests(AdmissionTestCase):
    def test_admission_serves_the_stock_left_and_tokens_are_spent_once(self):
        self.create("Q", 2, admission="queue")
        for user_id in ("ann", "bob", "cat"):
            self.enter("Q", user_id)

        self.assertEqual(self.admit("Q")["admitted"], 2)

        self.assertEqual(self.standing("Q", "cat"), self.standing("Q", "cat") | {"status": "waiting", "ahead": 0})
        self.assert_error(self.claim("Q", "ann"), 403, "admission_required")
        ann = self.token_of("Q", "ann")
        self.assert_error(self.claim("Q", "bob", ann), 403, "admission_invalid")  # another user's
        self.assert_error(self.claim("Q", "cat", ann), 403, "admission_invalid")
        self.assertEqual(self.claim("Q", "ann", ann).status_code, 201)
        self.assert_error(self.claim("Q", "ann", ann), 409, "already_claimed")
        self.assertEqual(self.standing("Q", "ann")["status"], "claimed")
        entry = Entry.objects.get(user_id="ann")
        self.assertEqual((entry.status, entry.claim), ("claimed", Claim.objects.get(user_id="ann")))

        # Released: ann may claim again, but her admission is spent.
        release_claim(coupon_name="Q", user_id="ann", released_by="op")
        self.assert_error(self.claim("Q", "ann", ann), 403, "admission_invalid")
        self.assertEqual(Claim.objects.filter(user_id="ann", status="held").count(), 0)

    def test_lapsed_admissions_expire_and_the_next_are_admitted(self):
        self.create("Q", 1, admission="queue")
        for user_id in ("ann", "bob"):
            self.enter("Q", user_id)
        self.admit("Q")
        ann = self.token_of("Q", "ann")
        Entry.objects.filter(user_id="ann").update(
            admitted_at=timezone.now() - timedelta(seconds=200), admitted_until=timezone.now() - timedelta(seconds=1)
        )

        self.assertEqual(self.admit("Q"), {"opened": False, "lapsed": 1, "sold_out": 0, "admitted": 1})

        self.assertEqual(self.standing("Q", "ann")["status"], "expired")
        self.assert_error(self.claim("Q", "ann", ann), 403, "admission_expired")
        self.assertEqual(self.claim("Q", "bob", self.token_of("Q", "bob")).status_code, 201)
        self.assertEqual(
            list(Event.objects.filter(type__startswith="a").values_list("type", "data__user_id")),
            [("admission.lapsed", "ann")],
        )

    def test_everyone_waiting_hears_sold_out_when_the_stock_is_gone(self):
        self.create("Q", 1, admission="queue")
        for user_id in ("ann", "bob", "cat"):
            self.enter("Q", user_id)
        self.admit("Q")
        self.claim("Q", "ann", self.token_of("Q", "ann"))

        # Before the worker's pass: the poll reads the stock itself.
        self.assertEqual(self.standing("Q", "cat")["status"], "sold_out")
        self.assertEqual(self.admit("Q")["sold_out"], 2)
        self.assertEqual(
            sorted(Entry.objects.values_list("user_id", "status")),
            [("ann", "claimed"), ("bob", "sold_out"), ("cat", "sold_out")],
        )

    def test_admit_per_second_limits_each_pass(self):
        self.create("Q", 10, admission="queue", admit_per_second=2)
        for n in range(6):
            self.enter("Q", f"u{n}")
        AdmissionPolicy.objects.update(opened_at=timezone.now() - timedelta(seconds=5))

        self.assertEqual(self.admit("Q")["admitted"], 2)  # a second's worth at most, however long since
        self.assertEqual(self.admit("Q")["admitted"], 0)  # no time has passed
        self.assertEqual(self.standing("Q", "u5")["estimated_wait_seconds"], 2)  # 3 ahead + itself at 2/s

    def test_the_pre_queue_is_ordered_by_the_seed_at_the_opening(self):
        self.create("Q", 5, admission="queue", starts_at=future(60))
        users = [f"user-{n}" for n in range(20)]
        for user_id in users:
            self.assertIsNone(self.enter("Q", user_id).json()["position"])
        self.assertEqual(self.standing("Q", "user-0")["position"], None)

        Coupon.objects.update(starts_at=timezone.now() - timedelta(seconds=1))
        self.assertTrue(self.admit("Q")["opened"])

        policy = AdmissionPolicy.objects.get()
        expected = draws.draw_order(policy.seed, users)
        self.assertEqual(list(Entry.objects.order_by("position").values_list("user_id", flat=True)), expected)
        self.assertEqual(self.enter("Q", "late").json()["position"], 21)


class TokenTests(AdmissionTestCase):
    def setUp(self):
        super().setUp()
        self.create("Q", 5, admission="queue")
        self.create("R", 5, admission="queue")
        for name in ("Q", "R"):
            for user_id in ("ann", "bob"):
                self.enter(name, user_id)
            self.admit(name)
        self.ann = self.token_of("Q", "ann")

    def test_the_token_carries_what_binds_it(self):
        header = jwt.get_unverified_header(self.ann)
        claims = jwt.decode(self.ann, options={"verify_signature": False})
        entry = Entry.objects.get(coupon__name="Q", user_id="ann")

        self.assertEqual(header["alg"], "EdDSA")
        self.assertEqual(header["kid"], signing_keys().signing_kid)
        self.assertEqual(
            claims,
            {
                "iss": "couponsite",
                "aud": "Q",
                "sub": "ann",
                "jti": str(entry.pk),
                "nbf": int(entry.admitted_at.timestamp()),
                "exp": int(entry.admitted_until.timestamp()),
            },
        )

    def test_the_hosts_check_accepts_what_an_edge_verifies_with_the_jwks_and_no_byte_changed(self):
        # The service checks a signature by signing again (admission/tokens.py); an edge verifies with the public
        # key. Both must agree: on our token, and on every one-character change of its signature.
        edge_key = jwt.PyJWK(jwks()["keys"][0]).key
        self.assertEqual(jwt.decode(self.ann, edge_key, algorithms=["EdDSA"], audience="Q")["sub"], "ann")
        self.assertEqual(verify_token(self.ann, user_id="ann", coupon_name="Q").audience, "Q")
        signing_input, signature = self.ann.rsplit(".", 1)
        for index in range(len(signature)):
            # "w" and "A" differ in the top bits: the last character's low four bits are padding, ignored.
            changed = signature[:index] + ("w" if signature[index] != "w" else "A") + signature[index + 1 :]
            token = f"{signing_input}.{changed}"
            with self.subTest(index=index):
                with self.assertRaises(jwt.PyJWTError):
                    jwt.decode(token, edge_key, algorithms=["EdDSA"], audience="Q")
                with self.assertRaises(AdmissionInvalid):
                    verify_token(token, user_id="ann", coupon_name="Q")

    def test_forged_altered_other_coupons_and_premature_tokens_are_refused(self):
        header, payload, signature = self.ann.split(".")
        altered_payload = jwt.utils.base64url_encode(
            json.dumps({**jwt.decode(self.ann, options={"verify_signature": False}), "sub": "bob"}).encode()
        ).decode()
        forged_key = new_key_text("x").split(":")[1]
        entry = Entry.objects.get(coupon__name="Q", user_id="ann")
        with override_settings(ADMISSION_SIGNING_KEYS=f"{signing_keys().signing_kid}:{forged_key}"):
            forged = issue_token(
                coupon_name="Q",
                user_id="ann",
                entry_id=entry.pk,
                admitted_at=entry.admitted_at,
                admitted_until=entry.admitted_until,
            )
        premature = issue_token(
            coupon_name="Q",
            user_id="ann",
            entry_id=entry.pk,
            admitted_at=timezone.now() + timedelta(seconds=60),
            admitted_until=timezone.now() + timedelta(seconds=120),
        )
        for label, user_id, token in (
            ("garbage", "ann", "not-a-token"),
            ("not base64url", "ann", "é.é.é"),
            ("a header that is not an object", "ann", f"W10.{payload}.{signature}"),
            ("a kid that is not a name", "ann", f"eyJraWQiOlsxXX0.{payload}.{signature}"),
            ("no signature", "ann", f"{header}.{payload}."),
            ("signature flipped", "ann", f"{header}.{payload}.{signature[::-1]}"),
            ("payload altered", "bob", f"{header}.{altered_payload}.{signature}"),
            ("forged with another key under our kid", "ann", forged),
            ("another coupon's", "ann", self.token_of("R", "ann")),
            ("not valid yet", "ann", premature),
        ):
            with self.subTest(label):
                self.assert_error(self.claim("Q", user_id, token), 403, "admission_invalid")
        self.assertFalse(Claim.objects.exists())

    def test_an_expired_token_is_refused_as_expired(self):
        entry = Entry.objects.get(coupon__name="Q", user_id="ann")
        expired = issue_token(
            coupon_name="Q",
            user_id="ann",
            entry_id=entry.pk,
            admitted_at=timezone.now() - timedelta(seconds=200),
            admitted_until=timezone.now() - timedelta(seconds=80),
        )
        self.assert_error(self.claim("Q", "ann", expired), 403, "admission_expired")

    def test_keys_rotate_with_two_valid_at_once_and_the_jwks_lists_them(self):
        old, new = new_key_text("old"), new_key_text("new")
        with override_settings(ADMISSION_SIGNING_KEYS=old):
            selectors.clear_caches()
            old_token = self.token_of("Q", "ann")
        with override_settings(ADMISSION_SIGNING_KEYS=f"{new},{old}"):
            selectors.clear_caches()
            self.assertEqual(jwt.get_unverified_header(self.token_of("Q", "bob"))["kid"], "new")
            self.assertEqual(self.claim("Q", "ann", old_token).status_code, 201)
            served = self.client.get("/.well-known/jwks.json").json()
            self.assertEqual([key["kid"] for key in served["keys"]], ["new", "old"])
            self.assertEqual(served, jwks())
            self.assertEqual({key["crv"] for key in served["keys"]}, {"Ed25519"})
        with override_settings(ADMISSION_SIGNING_KEYS=new):
            selectors.clear_caches()
            self.assert_error(self.claim("Q", "bob", self.token_of("Q", "bob")[:-4] + "AAAA"), 403)


class PollCacheTests(AdmissionTestCase):
    def test_polls_cost_no_statement_once_warm(self):
        self.create("Q", 10, admission="queue")
        users = [f"u{n}" for n in range(50)]
        for user_id in users:
            self.enter("Q", user_id)
        self.admit("Q")
        selectors.clear_caches()
        for user_id in users:  # warm: each user's entry read once, the snapshot once
            self.client.get(f"/api/coupons/Q/entries/{user_id}")

        # 200 polls within one refresh interval (made long, so that a slow machine stays within it): none
        # reaches the database. Past it, the first poll reads the snapshot again (3 statements) for everyone.
        with self.settings(ADMISSION_POLL_REFRESH_MS=60_000), CaptureQueriesContext(connection) as queries:
            for _ in range(4):
                for user_id in users:
                    answer = self.client.get(f"/api/coupons/Q/entries/{user_id}")
                    self.assertEqual(answer.status_code, 200)

        self.assertEqual(len(queries), 0, [query["sql"] for query in queries])

    def test_the_snapshot_is_read_again_after_its_refresh_interval(self):
        self.create("Q", 1, admission="queue")
        self.enter("Q", "ann")
        self.enter("Q", "bob")
        with override_settings(ADMISSION_POLL_REFRESH_MS=60_000):
            self.assertEqual(self.client.get("/api/coupons/Q/entries/bob").json()["ahead"], 1)
            self.admit("Q")
            self.assertEqual(self.client.get("/api/coupons/Q/entries/bob").json()["ahead"], 1)  # cached
            selectors._snapshots["Q"].loaded -= 61  # a minute later
            with CaptureQueriesContext(connection) as queries:
                self.assertEqual(self.client.get("/api/coupons/Q/entries/bob").json()["ahead"], 0)
            self.assertEqual(len(queries), 3)  # the policy and stock, the admission batches, the spent entries

    def test_a_user_who_has_not_entered_is_a_404(self):
        self.create("Q", 1, admission="queue")
        self.assert_error(self.client.get("/api/coupons/Q/entries/nobody"), 404, "entry_not_found")


class DrawTests(AdmissionTestCase):
    def make_draw(self, amount=3, entrants=10):
        self.create("D", amount, admission="draw", draw_at=future(60))
        users = [f"entrant-{n}" for n in range(entrants)]
        for user_id in users:
            answer = self.enter("D", user_id)
            self.assertEqual(answer.json()["status"], "waiting")
            self.assertIsNone(answer.json()["position"])
        before = self.client.get("/api/coupons/D/draw").json()
        self.assertIsNone(before["seed"])
        self.assertEqual(before["entries"], sorted(users))
        AdmissionPolicy.objects.update(draw_at=timezone.now() - timedelta(seconds=1))
        done = self.admit("D")
        self.assertEqual((done["opened"], done["admitted"]), (True, amount))
        return users, self.client.get("/api/coupons/D/draw").json()

    def test_the_draw_is_published_and_verifies(self):
        users, proof = self.make_draw()

        self.assertEqual(draws.commitment_of(proof["seed"]), proof["commitment"])
        self.assertEqual(proof["winners"], draws.draw_order(proof["seed"], users)[:3])
        self.assertEqual(draws.verify(proof), [])
        for winner in proof["winners"]:
            self.assertEqual(self.standing("D", winner)["status"], "admitted")
        self.assertEqual(self.standing("D", proof["waiting_list"][0])["ahead"], 0)
        out = StringIO()
        call_command("verify_draw", "D", stdout=out)
        self.assertIn("Draw verified", out.getvalue())
        event = Event.objects.get(type="draw.completed")
        self.assertEqual(event.data["winners"], proof["winners"])

    def test_tampering_is_detected(self):
        users, proof = self.make_draw()
        other_seed = draws.new_seed()
        tampered = {
            "seed": {**proof, "seed": other_seed},
            "seed and commitment": {**proof, "seed": other_seed, "commitment": draws.commitment_of(other_seed)},
            "entries": {**proof, "entries": sorted([*users[1:], "intruder"])},
            "winners": {**proof, "winners": [proof["waiting_list"][0], *proof["winners"][1:]]},
            "waiting list": {**proof, "waiting_list": proof["waiting_list"][::-1]},
        }
        for label, published in tampered.items():
            with self.subTest(label):
                self.assertNotEqual(draws.verify(published), [])
        AdmissionPolicy.objects.update(seed=other_seed)
        with self.assertRaisesMessage(CommandError, "does NOT verify"):
            call_command("verify_draw", "D", stdout=StringIO())

    def test_the_waiting_list_is_admitted_as_winners_lapse_and_the_rest_are_not_selected(self):
        _, proof = self.make_draw(amount=2, entrants=5)
        first = proof["winners"][0]
        self.claim("D", first, self.token_of("D", first))
        Entry.objects.filter(user_id=proof["winners"][1]).update(
            admitted_at=timezone.now() - timedelta(seconds=300), admitted_until=timezone.now() - timedelta(seconds=1)
        )
        self.assertEqual(self.admit("D")["admitted"], 1)
        runner_up = proof["waiting_list"][0]
        self.assertEqual(self.claim("D", runner_up, self.token_of("D", runner_up)).status_code, 201)
        self.admit("D")
        self.assertEqual(self.standing("D", proof["waiting_list"][1])["status"], "not_selected")

    def test_a_queue_has_no_draw(self):
        self.create("Q", 1, admission="queue")
        self.assert_error(self.client.get("/api/coupons/Q/draw"), 404, "not_a_draw")


# The shipped cost would make each test solve for a second: the same algorithm, easier.
@override_settings(ADMISSION_PROOF_OF_WORK=True, ADMISSION_PROOF_OF_WORK_COST=10, ADMISSION_PROOF_OF_WORK_MAX_NUMBER=50)
class ProofOfWorkTests(AdmissionTestCase):
    def setUp(self):
        super().setUp()
        self.create("Q", 5, admission="queue")
        self.create("R", 5, admission="queue")

    def solved(self, challenge=None):
        challenge = altcha.Challenge.from_dict(challenge or self.challenge())
        return altcha.Payload(challenge, altcha.solve_challenge(challenge)).to_base64()

    def challenge(self):
        answer = self.client.get("/api/admission/challenge")
        self.assertEqual(answer.status_code, 200)
        self.assertEqual(answer["Cache-Control"], "no-store")
        return answer.json()

    def test_a_challenge_is_altchas_and_its_solution_enters(self):
        challenge = self.challenge()
        self.assertEqual(challenge["parameters"]["algorithm"], "PBKDF2/SHA-256")
        self.assertEqual(challenge["parameters"]["cost"], 10)
        self.assertAlmostEqual(challenge["parameters"]["expiresAt"], timezone.now().timestamp() + 300, delta=5)

        answer = self.post_json("/api/coupons/Q/entries", {"user_id": "ann", "altcha": self.solved(challenge)})

        self.assertEqual(answer.status_code, 201, answer.content)
        self.assertEqual(SpentChallenge.objects.get().signature, challenge["signature"])

    def test_an_entry_without_a_solved_challenge_is_refused_and_changes_nothing(self):
        challenge = self.challenge()
        solution = altcha.solve_challenge(altcha.Challenge.from_dict(challenge))
        wrong_key = altcha.Solution(solution.counter, "00" * 32)
        with override_settings(SECRET_KEY="another service's"):
            others = self.solved()
        unsigned = altcha.create_challenge("PBKDF2/SHA-256", 10, counter=1)
        with override_settings(ADMISSION_PROOF_OF_WORK_SECONDS=-1):
            expired = self.solved()
        for label, payload, code in (
            ("missing", None, "proof_of_work_required"),
            ("garbage", "bm90IGpzb24=", "proof_of_work_invalid"),
            ("a wrong key", altcha.Payload(altcha.Challenge.from_dict(challenge), wrong_key).to_base64(), None),
            ("another service's challenge", others, None),
            ("an unsigned challenge", self.solved(unsigned.to_dict()), None),
            ("expired", expired, None),
        ):
            body = {"user_id": "ann"} if payload is None else {"user_id": "ann", "altcha": payload}
            with self.subTest(label):
                self.assert_error(self.post_json("/api/coupons/Q/entries", body), 403, code or "proof_of_work_invalid")
        self.assertFalse(Entry.objects.exists())
        self.assertFalse(SpentChallenge.objects.exists())

    def test_a_solution_enters_once_on_any_coupon_and_a_refused_entry_does_not_spend_it(self):
        payload = self.solved()
        self.assertEqual(
            self.post_json("/api/coupons/Q/entries", {"user_id": "ann", "altcha": payload}).status_code, 201
        )
        for coupon, user_id in (("Q", "bob"), ("R", "ann")):
            with self.subTest(coupon=coupon, user_id=user_id):
                replayed = self.post_json(f"/api/coupons/{coupon}/entries", {"user_id": user_id, "altcha": payload})
                self.assert_error(replayed, 403, "proof_of_work_invalid")
                self.assertIn("used for an entry already", replayed.json()["error"])
        self.assertEqual(Entry.objects.count(), 1)

        again = self.solved()
        self.assert_error(
            self.post_json("/api/coupons/Q/entries", {"user_id": "ann", "altcha": again}), 409, "already_entered"
        )
        self.assertEqual(self.post_json("/api/coupons/Q/entries", {"user_id": "bob", "altcha": again}).status_code, 201)

    def test_a_group_of_entries_answers_each_as_if_they_had_entered_one_by_one(self):
        payloads = [self.solved() for _ in range(4)]
        spent, a, b, c = (check_solution(payload) for payload in payloads)
        self.assertEqual(
            self.post_json("/api/coupons/Q/entries", {"user_id": "zed", "altcha": self.solved()}).status_code, 201
        )
        enter_group(coupon_name="Q", members=[("zed-2", spent)])

        outcomes = enter_group(
            coupon_name="Q",
            members=[
                ("ann", a),
                ("bob", a),  # ann's solution: spent by her entry, just before
                ("cat", spent),  # spent by an earlier transaction
                ("cat", b),  # the same user again, with a fresh one: enters
                ("ann", c),  # entered already: refused, and c is not spent
                ("zed", c),  # entered in an earlier transaction
            ],
        )

        kinds = [type(outcome).__name__ for outcome in outcomes]
        self.assertEqual(
            kinds,
            ["Entry", "ProofOfWorkInvalid", "ProofOfWorkInvalid", "Entry", "AlreadyEntered", "AlreadyEntered"],
        )
        self.assertEqual(
            [(outcomes[0].user_id, outcomes[0].position), (outcomes[3].user_id, outcomes[3].position)],
            [("ann", 3), ("cat", 4)],
        )
        self.assertEqual(set(SpentChallenge.objects.values_list("signature", flat=True)) & {c.signature}, set())
        self.assertEqual(
            self.post_json("/api/coupons/R/entries", {"user_id": "ann", "altcha": payloads[3]}).status_code, 201
        )

    def test_the_worker_forgets_spent_challenges_once_expired(self):
        SpentChallenge.objects.create(signature="a" * 64, expires_at=timezone.now() - timedelta(seconds=1))
        SpentChallenge.objects.create(signature="b" * 64, expires_at=timezone.now() + timedelta(seconds=60))

        self.assertEqual(admission_passes()["challenges_forgotten"], 1)
        self.assertEqual(list(SpentChallenge.objects.values_list("signature", flat=True)), ["b" * 64])


class AdmissionAdminTests(AdmissionTestCase):
    def test_operators_see_policies_with_counts_and_entries_and_the_seed_only_once_public(self):
        from django.contrib.auth.models import User

        self.client.force_login(User.objects.create_superuser("op", password="pw"))
        self.create("D", 1, admission="draw", draw_at=future(60))
        self.enter("D", "ann")
        policy = AdmissionPolicy.objects.get()

        page = self.client.get(f"/admin/admission/admissionpolicy/{policy.pk}/change/")
        self.assertEqual(page.status_code, 200)
        self.assertContains(page, policy.commitment)
        self.assertNotContains(page, policy.seed)
        self.assertContains(page, "waiting: 1")
        self.assertContains(self.client.get("/admin/admission/admissionpolicy/"), "1 / 0 / 0 / 0")
        self.assertContains(self.client.get("/admin/admission/entry/"), "ann")

        AdmissionPolicy.objects.update(draw_at=timezone.now() - timedelta(seconds=1))
        self.admit("D")
        self.assertContains(self.client.get(f"/admin/admission/admissionpolicy/{policy.pk}/change/"), policy.seed)

    def test_metrics_show_the_queues_length_and_the_admission_rate(self):
        self.create("Q", 1, admission="queue")
        for user_id in ("ann", "bob", "cat"):
            self.enter("Q", user_id)
        self.admit("Q")

        metrics = self.client.get("/metrics").content.decode()

        self.assertIn('admission_entries_by_status{status="waiting"} 2.0', metrics)
        self.assertIn('admission_entries_by_status{status="admitted"} 1.0', metrics)
        self.assertIn(f"admission_admitted_per_second {1 / 60}", metrics)
