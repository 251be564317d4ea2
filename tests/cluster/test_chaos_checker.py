"""The chaos checker (tests/cluster/chaos.py) finds every kind of anomaly it is there for, on doctored histories.

A checker that cannot fail proves nothing: each test here hands it a
history and database that break one rule, and one that breaks none. Runs
with `make test` (no cluster needed).
"""

from django.test import SimpleTestCase

from tests.cluster.chaos import FAULT_TYPES, Injection, Op, check, fault_figures, schedule


def op(user, status, sent, kind="new", coupon="c", code=None):
    return Op(kind, user, coupon, sent, sent + 0.01, status, code)


class CheckerTests(SimpleTestCase):
    def test_a_clean_history_has_no_anomaly(self):
        history = [
            op("a", 201, 1),
            op("b", 503, 2),  # committed, answer lost
            op("b", 409, 3, kind="retry"),
            op("c", 503, 4),  # not committed
            op("c", 201, 5, kind="retry"),
            op("a", 409, 6, kind="repeat"),
            op("d", 400, 7, code="out_of_stock"),
        ]
        verdict = check(history, {"c": (3, 0, ["a", "b", "c"])})
        self.assertEqual(verdict.anomalies, [])
        self.assertEqual((verdict.told_201, verdict.rows, verdict.committed_unanswered), (2, 3, 1))

    def assert_anomaly(self, history, database, words):
        anomalies = check(history, database).anomalies
        self.assertEqual(len(anomalies), 1, anomalies)
        self.assertIn(words, anomalies[0])

    def test_a_201_without_its_row_is_lost(self):
        self.assert_anomaly([op("a", 201, 1), op("b", 201, 2)], {"c": (5, 4, ["a"])}, "LOST")

    def test_a_row_nobody_was_told_of_is_a_phantom(self):
        self.assert_anomaly([op("a", 201, 1), op("b", 400, 2)], {"c": (2, 0, ["a", "b"])}, "PHANTOM")

    def test_a_row_whose_retry_said_out_of_stock_is_a_phantom(self):
        history = [op("a", 503, 1), op("a", 400, 2, kind="retry")]
        self.assert_anomaly(history, {"c": (1, 0, ["a"])}, "PHANTOM")

    def test_a_409_without_a_row(self):
        history = [op("a", 503, 1), op("a", 409, 2, kind="retry")]
        self.assert_anomaly(history, {"c": (1, 1, [])}, "told 409 and has no row")

    def test_two_201s_for_one_user(self):
        history = [op("a", 201, 1), op("a", 201, 2, kind="repeat")]
        self.assert_anomaly(history, {"c": (5, 4, ["a"])}, "told 201 2 times")

    def test_a_201_then_out_of_stock(self):
        history = [op("a", 201, 1), op("a", 400, 2, kind="repeat")]
        self.assert_anomaly(history, {"c": (5, 4, ["a"])}, "then out of stock")

    def test_a_user_holding_a_coupon_twice(self):
        self.assert_anomaly([op("a", 201, 1)], {"c": (5, 3, ["a", "a"])}, "twice")

    def test_stock_that_does_not_add_up(self):
        self.assert_anomaly([op("a", 201, 1)], {"c": (5, 3, ["a"])}, "remaining 3")

    def test_a_500_or_no_answer_at_all(self):
        for status in (500, 502, None):
            with self.subTest(status=status):
                history = [op("a", status, 1), op("a", 201, 2, kind="retry")]
                self.assert_anomaly(history, {"c": (5, 4, ["a"])}, f"status {status}")

    def test_rows_of_a_user_who_never_claimed(self):
        self.assert_anomaly([op("a", 201, 1)], {"c": (5, 3, ["a", "z"])}, "never claimed")


class FiguresTests(SimpleTestCase):
    def test_the_longest_stretch_without_a_granted_claim_and_the_failed_answers_per_fault_type(self):
        history = [op("a", 201, 9.99), op("b", 503, 10.5), op("c", 201, 13.99), op("d", 201, 14.49)]
        injection = Injection(FAULT_TYPES[0], {}, hold=3, injected=10.0, healed=13.0, whole=15.0)
        [row] = fault_figures([injection], history).values()
        self.assertAlmostEqual(row["longest_without_a_claim_max"], 4.0)
        self.assertEqual(row["failed"], {503: 1})
        self.assertAlmostEqual(row["heal_max"], 2.0)

    def test_the_schedule_is_seeded_and_injects_every_type_first(self):
        first = [item for item, _ in zip(schedule(7, 3), range(40), strict=False)]
        again = [item for item, _ in zip(schedule(7, 3), range(40), strict=False)]
        other = [item for item, _ in zip(schedule(8, 3), range(40), strict=False)]
        self.assertEqual(first, again)
        self.assertNotEqual(first, other)
        self.assertEqual({fault_type for fault_type, _, _ in first[: len(FAULT_TYPES)]}, set(FAULT_TYPES))
