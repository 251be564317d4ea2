"""python manage.py expire_holds: the worker that gives the units of unredeemed claims back to stock, on time.

Run one per app host (the Procfile's `expire_holds:` line, a compose
service): several at once are safe, and so is one on each side of a
failover (coupons/holds.py says why). It runs until SIGTERM or SIGINT,
finishing the pass in progress; while the database is away it logs a
warning and tries again every second.
"""

import signal
import threading

import structlog
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import InterfaceError, OperationalError, connection

from coupons.holds import expire_holds, seconds_until_next_deadline

logger = structlog.get_logger("coupons.holds")

# Seconds between attempts while the database cannot be reached.
RETRY_SECONDS = 1.0
# The shortest wait between passes: a due hold that a pass skipped (a
# redemption held it locked) is looked at again this soon, without a busy loop.
MIN_SLEEP_SECONDS = 0.02


class Command(BaseCommand):
    help = "Expire the holds of claims not redeemed in time, as they fall due, until stopped (one per app host)."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Run one pass, print how many holds expired, and exit.")
        parser.add_argument(
            "--max-sleep",
            type=float,
            default=settings.EXPIRE_HOLDS_MAX_SLEEP_MS / 1000,
            help="The longest wait between passes, in seconds (EXPIRE_HOLDS_MAX_SLEEP_MS / 1000; default %(default)s):"
            " the most a hold shorter than it, granted while the worker sleeps, can expire late.",
        )

    def handle(self, *args, once, max_sleep, **options):
        if once:
            self.stdout.write(f"{expire_holds()} hold(s) expired.")
            return
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        logger.info("expire_holds_started", max_sleep=max_sleep)
        while not stop.is_set():
            stop.wait(self.run_pass(max_sleep))
        connection.close()
        logger.info("expire_holds_stopped")

    def run_pass(self, max_sleep):
        """One pass; returns the seconds to wait before the next."""
        try:
            expired = expire_holds()
            until_next = seconds_until_next_deadline()
        except (OperationalError, InterfaceError) as exc:
            # Down, restarting or failing over: the pass's committed coupons
            # stay expired, the rest are the next pass's. A fresh connection then.
            logger.warning("expire_holds_database_unavailable", error=str(exc))
            connection.close()
            return RETRY_SECONDS
        if expired:
            logger.info("holds_expired", count=expired)
        if until_next is None:
            return max_sleep
        return min(max(until_next, MIN_SLEEP_SECONDS), max_sleep)
