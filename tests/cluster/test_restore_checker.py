"""The restore checker (tests/cluster/restore.py) finds what it is there for, on doctored histories and restores.

Each test hands it a sale's answers and a restored database that break one
rule, and one that breaks none. Runs with `make test` (no cluster needed).
"""

from django.test import SimpleTestCase

from tests.cluster.restore import WALL_CLOCK_OFFSET, check_restore
from tests.cluster.sale import Answer


def answer(user, status, sent):
    """An answer sent at wall-clock second `sent` and answered 0.1 s later (the sale records monotonic times)."""
    return Answer(user, status, sent - WALL_CLOCK_OFFSET, sent + 0.1 - WALL_CLOCK_OFFSET)


ANSWERS = [answer("a", 201, 10), answer("b", 201, 11), answer("c", 503, 12), answer("d", 201, 20)]


class RestoreCheckerTests(SimpleTestCase):
    def test_a_point_in_time_restore_with_everything_before_and_nothing_after(self):
        # c's answer was lost but its claim committed: a row is allowed; d came after the target.
        verdict = check_restore(ANSWERS, (10, 7, ["a", "b", "c"]), kept_until=15, dropped_from=15)
        self.assertEqual((verdict.anomalies, verdict.told_201, verdict.rows), ([], 2, 3))

    def test_a_missing_201_is_lost_and_its_span_is_the_rpo(self):
        verdict = check_restore(ANSWERS, (10, 8, ["a", "d"]), kept_until=25)
        self.assertEqual(verdict.lost, ["b"])
        self.assertAlmostEqual(verdict.rpo_seconds, 25 - 11.1, places=3)  # float rounding of the clock offset
        self.assertIn("LOST", verdict.anomalies[0])

    def test_a_claim_sent_after_the_target_is_an_anomaly(self):
        verdict = check_restore(ANSWERS, (10, 7, ["a", "b", "d"]), kept_until=15, dropped_from=15)
        self.assertEqual(len(verdict.anomalies), 1, verdict.anomalies)
        self.assertIn("after the recovery target", verdict.anomalies[0])

    def test_stock_that_does_not_add_up_and_strangers_are_anomalies(self):
        verdict = check_restore(ANSWERS, (10, 9, ["a", "b", "zed"]), kept_until=15)
        self.assertEqual(len(verdict.anomalies), 2, verdict.anomalies)
        self.assertIn("never claimed", verdict.anomalies[0])
        self.assertIn("stock", verdict.anomalies[1])
