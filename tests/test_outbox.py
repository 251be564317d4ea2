"""The transactional outbox (coupons/outbox.py): one event per change, in the change's transaction, numbered
without gaps per coupon; read back in order by GET /api/events."""

import functools
import json
import threading
import time
from datetime import timedelta

from django.db import DatabaseError, connection
from django.test import TransactionTestCase

from coupons.claim_codes import format_code, normalise_code
from coupons.claim_groups import claim_groups
from coupons.exceptions import AlreadyClaimed, AlreadyRedeemed, ClaimExpired, NotRedeemed, OutOfStock
from coupons.holds import expire_holds
from coupons.models import Claim, ClaimStatus, Coupon, Event
from coupons.outbox import (
    CLAIM_EXPIRED,
    CLAIM_GRANTED,
    CLAIM_RELEASED,
    COUPON_CREATED,
    COUPON_RESTOCKED,
    COUPON_SOLD_OUT,
    REDEMPTION_REDEEMED,
    REDEMPTION_UNDONE,
)
from coupons.sale_windows import format_utc
from coupons.selectors import database_now
from coupons.services import (
    claim_coupon,
    create_coupon,
    redeem_claim,
    release_claim,
    restock_coupon,
    undo_redemption,
)
from tests.helpers import JsonApiAssertions
from tests.stress.base import run_simultaneously
from tests.test_access import make_user, token_header
from tests.test_api_keys import api_key_header, new_key
from tests.test_claim_groups import PoisonTrigger, coupon_locked_elsewhere, wait_until
from tests.test_redemptions import overdue

STOCK = 1000
CLAIMERS = 1200
THREADS = 24


def events_of(name):
    return list(Event.objects.filter(coupon_name=name).order_by("sequence"))


class FlashSaleEventsTests(JsonApiAssertions, TransactionTestCase):
    def setUp(self):
        self.reader = api_key_header(new_key("read"))  # GET /api/events is never anonymous

    def test_a_flash_sale_of_1000_claims_writes_1000_claim_events_and_one_sold_out_gap_free(self):
        create_coupon(name="SALE", amount=STOCK)
        users = iter(range(CLAIMERS))

        def claimer():
            # Each thread claims for new users until none are left: many claims in flight, so groups form.
            granted = []
            while (user := next(users, None)) is not None:
                try:
                    granted.append(claim_coupon(user_id=f"user_{user}", coupon_name="SALE").user_id)
                except OutOfStock:
                    pass
            return granted

        granted = {user for result in run_simultaneously([claimer] * THREADS) for user in result}

        self.assertEqual(len(granted), STOCK)
        events = events_of("SALE")
        self.assertEqual([event.sequence for event in events], list(range(1, STOCK + 3)))  # no gap, no repeat
        self.assertEqual(events[0].type, COUPON_CREATED)
        claims = [event for event in events if event.type == CLAIM_GRANTED]
        self.assertEqual(len(claims), STOCK)
        self.assertEqual({event.data["user_id"] for event in claims}, granted)
        self.assertEqual(set(Claim.objects.values_list("user_id", flat=True)), granted)
        self.assertEqual([event.type for event in events].count(COUPON_SOLD_OUT), 1)
        self.assertEqual(events[-1].type, COUPON_SOLD_OUT)  # after the last unit's claim
        self.assertEqual(len({event.uuid for event in events}), len(events))

        # A pull consumer paging through GET /api/events gets every event once, each coupon's in sequence order.
        pulled, after = [], None
        deadline = time.monotonic() + 60  # a transaction anywhere on the server may hold the horizon back a while
        while len(pulled) < len(events) and time.monotonic() < deadline:
            query = {"limit": 97, **({"after": after} if after else {})}
            page = self.client.get("/api/events", query, **self.reader).json()
            pulled += page["events"]
            after = page["next"]
            if not page["events"]:
                time.sleep(0.1)
        self.assertEqual([event["id"] for event in pulled], [str(event.uuid) for event in events])
        first = Claim.objects.get(user_id=claims[0].data["user_id"])
        granted = {"user_id": first.user_id, "code": format_code(first.code), "expires_at": None}
        self.assertEqual(pulled[1]["data"], granted)
        self.assertEqual(list(pulled[1]["data"]), ["code", "expires_at", "user_id"])  # key order, on either database
        self.assertEqual(set(pulled[1]), {"id", "type", "occurred_at", "coupon", "sequence", "data"})

    def test_a_rolled_back_group_writes_no_event(self):
        coupon = create_coupon(name="PROMO", amount=5)
        trigger = PoisonTrigger()  # the database refuses a claim for "poison": its whole group fails
        trigger.install()
        answers, threads = {}, []

        def claim(user_id):
            try:
                answers[user_id] = claim_coupon(user_id=user_id, coupon_name="PROMO").user_id
            except Exception as exc:
                answers[user_id] = type(exc)
            finally:
                connection.close()

        try:
            with coupon_locked_elsewhere(coupon):
                for position, user_id in enumerate(["lead", "ann", "poison", "bob"]):
                    threads.append(threading.Thread(target=claim, args=[user_id]))
                    threads[-1].start()
                    # "lead" leads a group of its own; the others queue behind it and form the next.
                    wait_until(
                        lambda n=position: claim_groups.in_flight(coupon.pk) and claim_groups.queued(coupon.pk) == n,
                        f"{user_id} waiting",
                    )
            for thread in threads:
                thread.join(30)
        finally:
            trigger.remove()

        self.assertEqual(answers["lead"], "lead")
        for user_id in ["ann", "poison", "bob"]:
            self.assertTrue(issubclass(answers[user_id], DatabaseError), answers)
        self.assertEqual([(e.sequence, e.type) for e in events_of("PROMO")], [(1, COUPON_CREATED), (2, CLAIM_GRANTED)])
        # The next group numbers on from the last committed event: no gap where the rolled-back one was.
        claim_coupon(user_id="ann", coupon_name="PROMO")
        self.assertEqual([e.sequence for e in events_of("PROMO")], [1, 2, 3])
        self.assertEqual(Coupon.objects.get().last_event_sequence, 3)

    def test_every_kind_of_change_writes_its_event(self):
        create_coupon(name="PROMO", amount=2)
        claim_coupon(user_id="ann", coupon_name="PROMO")
        claim_coupon(user_id="bob", coupon_name="PROMO")
        with self.assertRaises(AlreadyClaimed):
            claim_coupon(user_id="bob", coupon_name="PROMO")  # a refusal changes nothing: no event
        release_claim(coupon_name="PROMO", user_id="ann", released_by="operator", reason="order cancelled")
        restock_coupon(coupon_name="PROMO", amount=5)
        restock_coupon(coupon_name="PROMO", amount=1)  # down to what is claimed: sold out again

        code = {user_id: format_code(code) for user_id, code in Claim.objects.values_list("user_id", "code")}
        created = {"amount": 2, "starts_at": None, "ends_at": None, "hold_seconds": None, "redeem_until": None}
        self.assertEqual(
            [(event.sequence, event.type, event.data) for event in events_of("PROMO")],
            [
                (1, COUPON_CREATED, created),
                (2, CLAIM_GRANTED, {"user_id": "ann", "code": code["ann"], "expires_at": None}),
                (3, CLAIM_GRANTED, {"user_id": "bob", "code": code["bob"], "expires_at": None}),
                (4, COUPON_SOLD_OUT, {"amount": 2}),
                (5, CLAIM_RELEASED, {"user_id": "ann", "code": code["ann"], "reason": "order cancelled"}),
                (6, COUPON_RESTOCKED, {"amount_before": 2, "amount": 5, "remaining_amount": 4}),
                (7, COUPON_RESTOCKED, {"amount_before": 5, "amount": 1, "remaining_amount": 0}),
                (8, COUPON_SOLD_OUT, {"amount": 1}),
            ],
        )

    def test_an_event_still_being_committed_holds_back_the_ones_after_it(self):
        """A reader never steps past an event whose transaction has not ended (PostgreSQL's horizon)."""
        if connection.vendor != "postgresql":
            self.skipTest("SQLite has one writer at a time: nothing commits out of order")
        create_coupon(name="EARLY", amount=1)
        create_coupon(name="LATE", amount=1)
        deadline = time.monotonic() + 60  # another transaction on the server may hold the horizon back a while
        while len(before := self.pull()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        with coupon_locked_elsewhere(Coupon.objects.get(name="EARLY")) as locked:
            # An event written, not yet committed, in an older transaction...
            locked.execute(
                "INSERT INTO coupons_event (uuid, type, coupon_id, coupon_name, sequence, occurred_at, data,"
                " transaction_id) SELECT gen_random_uuid(), 'coupon.restocked', id, name, 99, now(), '{}',"
                " pg_current_xact_id()::text::bigint FROM coupons_coupon WHERE name = 'EARLY'"
            )
            locked.commit = True
            # ...then one committed by a younger transaction.
            claim_coupon(user_id="ann", coupon_name="LATE")
            self.assertEqual(self.pull(after=before[-1]["id"]), [])  # held back, not skipped
        deadline = time.monotonic() + 60
        while not (pulled := self.pull(after=before[-1]["id"])) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual([(e["coupon"], e["sequence"]) for e in pulled], [("EARLY", 99), ("LATE", 2), ("LATE", 3)])

    def pull(self, after=None):
        response = self.client.get("/api/events", {"after": after} if after else {}, **self.reader)
        self.assertEqual(response.status_code, 200, response.content)
        return response.json()["events"]

    def test_bad_queries_are_400(self):
        # Sent empty (`?after=`): the schema says a uuid and an integer, so a 400 too, not the defaults.
        for query in [
            {"limit": 0},
            {"limit": 1001},
            {"limit": "x"},
            {"after": "not-a-uuid"},
            {"after": ""},
            {"limit": ""},
        ]:
            with self.subTest(query=query):
                self.assert_error(self.client.get("/api/events", query, **self.reader), 400, "invalid")
        unknown = self.client.get("/api/events", {"after": "00000000-0000-0000-0000-000000000000"}, **self.reader)
        self.assertIn("No event has this id", self.assert_error(unknown, 400, "invalid"))

    def test_events_are_never_anonymous_staff_or_the_read_scope(self):
        """They carry every claim's code, a bearer secret: whether or not keys are required."""
        staff = token_header(make_user("operator", is_staff=True))
        for required in (False, True):
            with self.subTest(API_KEYS_REQUIRED=required), self.settings(API_KEYS_REQUIRED=required):
                self.assert_error(self.client.get("/api/events"), 401, "unauthorized")
                claim_key = api_key_header(new_key("claim", "webhooks"))
                self.assert_error(self.client.get("/api/events", **claim_key), 403, "forbidden")
                self.assertEqual(
                    json.loads(self.client.get("/api/events", **self.reader).content), {"events": [], "next": None}
                )
                self.assertEqual(self.client.get("/api/events", **staff).status_code, 200)


class RedemptionAndExpiryEventsTests(TransactionTestCase):
    """Redemption, undo and hold expiry write their events in their own transactions, once, numbered on with the
    coupon's other events."""

    def test_redeemed_undone_and_expired_claims_write_their_events(self):
        create_coupon(name="PROMO", amount=3, hold_seconds=600)
        ann, bob = (claim_coupon(user_id=user, coupon_name="PROMO").code for user in ["ann", "bob"])
        redeem_claim(code=ann, order_id="order-1")
        with self.assertRaises(AlreadyRedeemed):
            redeem_claim(code=ann, order_id="order-2")  # a refusal changes nothing: no event
        undo_redemption(code=ann, undone_by="operator", reason="cancelled")
        redeem_claim(code=ann)
        with self.assertRaises(NotRedeemed):
            undo_redemption(code=bob, undone_by="operator")
        overdue(bob)
        self.assertEqual(expire_holds(), 1)
        with self.assertRaises(ClaimExpired):
            redeem_claim(code=bob)

        deadline = format_utc(Claim.objects.get(code=bob).expires_at)
        ann, bob = format_code(ann), format_code(bob)  # as events (and the API) show codes
        self.assertEqual(
            [(event.sequence, event.type, event.data) for event in events_of("PROMO")][3:],
            [
                (4, REDEMPTION_REDEEMED, {"user_id": "ann", "code": ann, "order_id": "order-1"}),
                (
                    5,
                    REDEMPTION_UNDONE,
                    {"user_id": "ann", "code": ann, "order_id": "order-1", "reason": "cancelled"},
                ),
                (6, REDEMPTION_REDEEMED, {"user_id": "ann", "code": ann, "order_id": None}),
                (7, CLAIM_EXPIRED, {"user_id": "bob", "code": bob, "expires_at": deadline}),
            ],
        )
        self.assertEqual(Coupon.objects.get().last_event_sequence, 7)

    def test_an_expiry_writes_each_claims_event_once_even_with_two_workers(self):
        coupons = {name: create_coupon(name=name, amount=100, hold_seconds=600) for name in ["EARLY", "LATE"]}
        codes = {
            name: {format_code(claim_coupon(user_id=f"user_{number}", coupon_name=name).code) for number in range(100)}
            for name in coupons
        }
        Claim.objects.update(expires_at=database_now() - timedelta(seconds=1))

        def worker():
            # Small batches: many transactions per coupon, so the two workers' passes interleave.
            return sum(iter(lambda: expire_holds(batch=7), 0))

        expired_by_each = run_simultaneously([worker, worker])

        self.assertEqual(sum(expired_by_each), 200)  # each claim expired by one worker, once
        for name in coupons:
            with self.subTest(coupon=name):
                events = events_of(name)
                self.assertEqual([event.sequence for event in events], list(range(1, len(events) + 1)))
                expired = [event.data["code"] for event in events if event.type == CLAIM_EXPIRED]
                self.assertEqual(sorted(expired), sorted(codes[name]))  # one event per claim, none twice
                self.assertEqual(Coupon.objects.get(name=name).remaining_amount, 100)

    def test_a_redemption_racing_an_expiry_writes_exactly_one_of_the_two_events(self):
        create_coupon(name="RACE", amount=60, hold_seconds=1)
        # Each claim's hold ends a second after that claim (near enough: the database's clock decides), not
        # after the last one: claiming 60 takes a while on a busy machine.
        claims = []
        for number in range(60):
            claims.append((claim_coupon(user_id=f"user_{number}", coupon_name="RACE").code, time.monotonic() + 1))
        answers = {}

        def redeemer(share):
            # Each code spread over the second around its own deadline: some before it, some after, some as it passes.
            for number, (code, deadline) in enumerate(share):
                time.sleep(max(0.0, deadline - 0.5 + number * 1.0 / len(share) - time.monotonic()))
                try:
                    redeem_claim(code=code)
                    answers[code] = ClaimStatus.REDEEMED
                except ClaimExpired:
                    answers[code] = ClaimStatus.EXPIRED

        def expiry_worker():
            while time.monotonic() < claims[-1][1] + 1.5:
                expire_holds()
                time.sleep(0.01)
            return expire_holds()

        run_simultaneously([*(functools.partial(redeemer, claims[start::4]) for start in range(4)), expiry_worker])
        run_simultaneously([expiry_worker])  # whatever a late pass would find

        statuses = dict(Claim.objects.values_list("code", "status"))
        self.assertEqual(statuses, answers)  # every 201 a redeemed claim, every 410 an expired one
        self.assertGreater(list(answers.values()).count(ClaimStatus.REDEEMED), 0)
        self.assertGreater(list(answers.values()).count(ClaimStatus.EXPIRED), 0)
        events = events_of("RACE")
        self.assertEqual([event.sequence for event in events], list(range(1, len(events) + 1)))
        endings = {}
        for event in events:
            if event.type in {REDEMPTION_REDEEMED, CLAIM_EXPIRED}:
                endings.setdefault(normalise_code(event.data["code"]), []).append(event.type)
        expected = {REDEMPTION_REDEEMED: ClaimStatus.REDEEMED, CLAIM_EXPIRED: ClaimStatus.EXPIRED}
        self.assertEqual(
            {code: [expected[t] for t in types] for code, types in endings.items()},
            {code: [status] for code, status in statuses.items()},
        )  # exactly one, the right one
        redeemed = list(statuses.values()).count(ClaimStatus.REDEEMED)
        self.assertEqual(Coupon.objects.get().remaining_amount, 60 - redeemed)
