"""Group claims (coupons/claim_groups.py): one transaction per group, each member its own answer."""

import contextlib
import threading
import time

from django.db import DatabaseError, connection, connections
from django.test import TestCase, TransactionTestCase
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client import REGISTRY

from coupons.claim_codes import new_claim_code
from coupons.claim_groups import claim_groups, grant_claims
from coupons.coupon_states import coupon_states
from coupons.exceptions import AlreadyClaimed, CouponNotFound, OutOfStock
from coupons.models import Claim, Coupon
from coupons.services import claim_coupon, create_coupon

WAIT_SECONDS = 30


def answers(outcomes):
    """Claims as their user ids, refusals as their class names."""
    return [outcome.user_id if isinstance(outcome, Claim) else type(outcome).__name__ for outcome in outcomes]


class GrantClaimsTests(TestCase):
    """One group's transaction: winners in arrival order, up to the stock."""

    def setUp(self):
        self.coupon = create_coupon(name="PROMO", amount=3)

    def grant(self, *user_ids):
        return answers(grant_claims(coupon_id=self.coupon.pk, user_ids=list(user_ids)))

    def test_winners_in_arrival_order_until_the_stock_runs_out_mid_group(self):
        self.assertEqual(
            self.grant("ann", "bob", "ann", "cat", "dan", "eve"),
            ["ann", "bob", "AlreadyClaimed", "cat", "OutOfStock", "OutOfStock"],
        )
        self.coupon.refresh_from_db()
        self.assertEqual(self.coupon.remaining_amount, 0)
        self.assertEqual(list(Claim.objects.values_list("user_id", flat=True)), ["ann", "bob", "cat"])

    def test_holders_committed_earlier_hear_already_claimed(self):
        self.grant("ann")

        self.assertEqual(self.grant("bob", "ann", "ann"), ["bob", "AlreadyClaimed", "AlreadyClaimed"])
        self.coupon.refresh_from_db()
        self.assertEqual(self.coupon.remaining_amount, 1)

    def test_a_user_too_late_twice_in_a_group_hears_out_of_stock_twice(self):
        Coupon.objects.filter(pk=self.coupon.pk).update(remaining_amount=1)

        self.assertEqual(self.grant("ann", "bob", "bob"), ["ann", "OutOfStock", "OutOfStock"])

    def test_a_coupon_deleted_meanwhile_is_not_found_for_every_member(self):
        self.coupon.delete()

        self.assertEqual(self.grant("ann", "bob"), ["CouponNotFound", "CouponNotFound"])

    def test_a_group_is_one_lock_one_insert_one_update_with_its_events_one_commit(self):
        with CaptureQueriesContext(connection) as queries:
            self.grant("ann", "bob", "ann", "cat", "dan")

        # Inside the test's transaction atomic() is a savepoint; in a request it is BEGIN ... COMMIT.
        statements = [q["sql"] for q in queries if "SAVEPOINT" not in q["sql"]]
        lock, holders, insert, *update_and_events = statements
        self.assertIn("u.user_id IN", holders)  # after the lock: its own snapshot and clock
        self.assertTrue(insert.startswith("INSERT"))
        # The F() decrement, relative in the database, under the lock; the event counter moved with it.
        take_units = "remaining_amount = remaining_amount - 3, last_event_sequence = last_event_sequence + 4"
        if connection.vendor == "postgresql":
            self.assertTrue(lock.endswith("FOR NO KEY UPDATE"), lock)
            [update_and_insert] = update_and_events  # one statement: a writable CTE
            self.assertTrue(update_and_insert.startswith("WITH taken AS (UPDATE coupons_coupon SET"))
            self.assertIn(take_units, update_and_insert)
            self.assertIn("INSERT INTO coupons_event", update_and_insert)  # 3 claims, sold out
        else:
            update, events = update_and_events
            self.assertIn(take_units, update)
            self.assertTrue(events.startswith("INSERT INTO coupons_event"), events)

    def test_a_group_without_winners_writes_nothing(self):
        self.grant("ann", "bob", "cat")

        with CaptureQueriesContext(connection) as queries:
            self.assertEqual(self.grant("ann", "dan"), ["AlreadyClaimed", "OutOfStock"])

        self.assertEqual([q["sql"][:6] for q in queries if "SAVEPOINT" not in q["sql"]], ["SELECT", "SELECT"])


class LockHolder:
    """The other connection's side of `coupon_locked_elsewhere`: statements in its transaction, and how it ends."""

    def __init__(self, cursor):
        self.cursor = cursor
        self.commit = False  # set to commit what was executed; else rolled back

    def execute(self, sql, params=()):
        self.cursor.execute(sql, params)


@contextlib.contextmanager
def coupon_locked_elsewhere(coupon):
    """Another connection holds the coupon row lock (on SQLite: the database's write lock) until the block ends."""
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            if other.vendor == "sqlite":
                cursor.execute("BEGIN IMMEDIATE")
            else:
                cursor.execute("BEGIN")
                cursor.execute("SELECT 1 FROM coupons_coupon WHERE id = %s FOR UPDATE", [coupon.pk])
            holder = LockHolder(cursor)
            yield holder
            cursor.execute("COMMIT" if holder.commit else "ROLLBACK")
    finally:
        other.close()


def wait_until(condition, what):
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.005)


def group_size_totals():
    return (
        REGISTRY.get_sample_value("coupon_claim_group_size_count") or 0.0,
        REGISTRY.get_sample_value("coupon_claim_group_size_sum") or 0.0,
    )


class ClaimGroupsTests(TransactionTestCase):
    """The groups of one process, formed by real threads on real connections.

    A claim leads a group at once; while its transaction waits for a row
    lock held elsewhere, later claims queue one by one (so their arrival
    order is known), then go together as the next group.
    """

    def setUp(self):
        self.coupon = create_coupon(name="PROMO", amount=3)
        self.answers = {}
        self.threads = []

    def start_claim(self, key, user_id):
        def claim():
            try:
                self.answers[key] = claim_coupon(user_id=user_id, coupon_name="PROMO").user_id
            except Exception as exc:
                self.answers[key] = type(exc)
            finally:
                connection.close()

        thread = threading.Thread(target=claim)
        self.threads.append(thread)
        thread.start()

    def queue_behind_a_blocked_group(self, user_ids):
        """A leader blocked on the lock, then `user_ids` queued in order; returns once the lock is free again."""
        with coupon_locked_elsewhere(self.coupon):
            self.start_claim("leader", "lead")
            wait_until(lambda: claim_groups.in_flight(self.coupon.pk), "the leader's group is in flight")
            for position, user_id in enumerate(user_ids):
                self.start_claim(position, user_id)
                wait_until(lambda n=position + 1: claim_groups.queued(self.coupon.pk) == n, f"{position + 1} queue")
        for thread in self.threads:
            thread.join(WAIT_SECONDS)
        self.assertFalse(claim_groups.in_flight(self.coupon.pk))

    def test_claims_arriving_during_a_group_go_together_as_the_next(self):
        groups_before, claims_before = group_size_totals()

        self.queue_behind_a_blocked_group(["ann", "bob", "ann", "cat", "dan"])

        self.assertEqual(self.answers["leader"], "lead")
        self.assertEqual(
            [self.answers[position] for position in range(5)],
            ["ann", "bob", AlreadyClaimed, OutOfStock, OutOfStock],
        )
        groups, claims = group_size_totals()
        self.assertEqual((groups - groups_before, claims - claims_before), (2, 6))  # a group of 1, then of 5
        self.coupon.refresh_from_db()
        self.assertEqual(self.coupon.remaining_amount, 0)
        self.assertEqual(sorted(Claim.objects.values_list("user_id", flat=True)), ["ann", "bob", "lead"])

    def test_a_failing_group_fails_every_member_and_commits_nothing(self):
        # A real database error in the middle of the group's transaction: the
        # INSERT of a claim for "poison" is refused by a trigger.
        trigger = PoisonTrigger()
        trigger.install()
        self.addCleanup(trigger.remove)

        self.queue_behind_a_blocked_group(["ann", "poison", "bob"])

        self.assertEqual(self.answers["leader"], "lead")
        [failure] = {self.answers[position] for position in range(3)}  # the same error for every member...
        self.assertTrue(issubclass(failure, DatabaseError), failure)
        self.coupon.refresh_from_db()
        self.assertEqual(self.coupon.remaining_amount, 2)  # ...and nothing of the group committed
        self.assertEqual(list(Claim.objects.values_list("user_id", flat=True)), ["lead"])
        # A retry is a fresh chance.
        self.assertEqual(claim_coupon(user_id="ann", coupon_name="PROMO").user_id, "ann")

    def test_a_holder_committed_while_the_group_waited_for_the_lock_is_seen(self):
        # The lock holder claims for "ann" and commits while ann's group waits
        # for the lock: the group must see that claim (409), not insert a
        # second one (which the unique index would turn into an error).
        with coupon_locked_elsewhere(self.coupon) as locked:
            self.start_claim("waiting", "ann")
            wait_until(lambda: self.lock_waiters() == 1, "ann's group waits for the row lock")
            locked.execute(
                "INSERT INTO coupons_claim (coupon_id, user_id, created_at, code, status, order_id)"
                " VALUES (%s, 'ann', %s, %s, 'held', '')",
                [self.coupon.pk, timezone.now(), new_claim_code()],
            )
            locked.execute(
                "UPDATE coupons_coupon SET remaining_amount = remaining_amount - 1 WHERE id = %s", [self.coupon.pk]
            )
            locked.commit = True
        self.threads[0].join(WAIT_SECONDS)

        self.assertEqual(self.answers["waiting"], AlreadyClaimed)
        self.coupon.refresh_from_db()
        self.assertEqual(self.coupon.remaining_amount, 2)
        self.assertEqual(list(Claim.objects.values_list("user_id", flat=True)), ["ann"])

    def lock_waiters(self):
        """Backends waiting for a lock (on SQLite, where the wait is in the busy handler: taken as waiting)."""
        if connection.vendor == "sqlite":
            return 1 if claim_groups.in_flight(self.coupon.pk) else 0
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return cursor.fetchone()[0]

    def test_a_lone_claim_leads_at_once(self):
        groups_before, claims_before = group_size_totals()

        self.assertEqual(claim_coupon(user_id="ann", coupon_name="PROMO").user_id, "ann")

        self.assertEqual(group_size_totals(), (groups_before + 1, claims_before + 1))
        self.assertFalse(claim_groups.in_flight(self.coupon.pk))

    def test_refusals_the_process_can_prove_never_reach_a_group(self):
        coupon_states.wait_until_listening()
        Coupon.objects.filter(pk=self.coupon.pk).update(remaining_amount=1)
        claim_coupon(user_id="ann", coupon_name="PROMO")  # the last unit: the process learns it is sold out
        with self.assertRaises(CouponNotFound):
            claim_coupon(user_id="ann", coupon_name="NOPE")  # the process learns the name is unknown
        before = group_size_totals()

        with self.assertRaises(AlreadyClaimed):
            claim_coupon(user_id="ann", coupon_name="PROMO")
        with self.assertRaises(CouponNotFound):
            claim_coupon(user_id="ann", coupon_name="NOPE")
        with self.assertRaises(OutOfStock):
            claim_coupon(user_id="bob", coupon_name="PROMO")

        self.assertEqual(group_size_totals(), before)


class PoisonTrigger:
    """A trigger that makes the database refuse any claim for user "poison"."""

    def install(self):
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                cursor.execute(
                    "CREATE TRIGGER poison BEFORE INSERT ON coupons_claim WHEN NEW.user_id = 'poison' "
                    "BEGIN SELECT RAISE(ABORT, 'poisoned claim'); END"
                )
            else:
                cursor.execute(
                    "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    "IF NEW.user_id = 'poison' THEN RAISE EXCEPTION 'poisoned claim'; END IF; RETURN NEW; END $$"
                )
                cursor.execute(
                    "CREATE TRIGGER poison BEFORE INSERT ON coupons_claim FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
                )

    def remove(self):
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                cursor.execute("DROP TRIGGER poison")
            else:
                cursor.execute("DROP TRIGGER poison ON coupons_claim")
                cursor.execute("DROP FUNCTION refuse_poison()")
