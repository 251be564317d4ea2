"""couponsite/postgresql: the connection check that needs no round trip, on a real PostgreSQL connection."""

import time
from unittest import skipUnless

from django.db import connection, connections
from django.test import TestCase


@skipUnless(connection.vendor == "postgresql", "the check is the PostgreSQL backend's")
class ConnectionCheckTests(TestCase):
    def setUp(self):
        # A connection of its own, outside the test's transaction, as a server thread holds one.
        self.other = connections.create_connection("default")
        self.addCleanup(self.other.close)
        self.other.ensure_connection()

    def test_the_service_runs_on_the_checking_backend_with_checks_on(self):
        self.assertEqual(connection.settings_dict["ENGINE"], "couponsite.postgresql")
        self.assertTrue(connection.settings_dict["CONN_HEALTH_CHECKS"])

    def other_backend(self):
        """The other connection's server process as pg_stat_activity sees it now: (state, last query), or None."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")  # not the snapshot of the test's transaction
            cursor.execute(
                "SELECT state, query FROM pg_stat_activity WHERE pid = %s", [self.other.connection.info.backend_pid]
            )
            return cursor.fetchone()

    def test_an_idle_connection_is_usable_and_checking_it_sends_nothing(self):
        with self.other.cursor() as cursor:
            cursor.execute("SELECT 'the last query'")

        self.assertTrue(self.other.is_usable())

        # Django's own check would have sent SELECT 1.
        self.assertEqual(self.other_backend(), ("idle", "SELECT 'the last query'"))

    def test_a_connection_the_server_closed_is_not_usable(self):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [self.other.connection.info.backend_pid])
        deadline = time.monotonic() + 10
        while self.other_backend() is not None:  # the FATAL message is sent before the backend leaves
            self.assertLess(time.monotonic(), deadline, "the backend did not exit")
            time.sleep(0.01)

        self.assertFalse(self.other.is_usable())

    def test_a_connection_left_inside_a_transaction_is_not_usable(self):
        self.other.connection.execute("BEGIN")
        self.assertFalse(self.other.is_usable())

    def test_a_closed_connection_is_not_usable(self):
        self.other.close()
        self.assertFalse(self.other.is_usable())
