"""python manage.py run_admission: the admission worker (queues open, draws made, admissions lapse and are
topped up, the waiting told sold_out). One per app host (the Procfile's `admission:` line): several at once
are safe, each coupon's pass runs under its policy row lock. Runs until SIGTERM or SIGINT."""

import signal
import threading

import structlog
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import InterfaceError, OperationalError, connection

from admission.services import admission_passes

logger = structlog.get_logger("admission")
RETRY_SECONDS = 1.0


class Command(BaseCommand):
    help = "Run fair admission's passes (open, draw, lapse, admit, sold out) until stopped (one per app host)."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Run one pass, print what it did, and exit.")

    def handle(self, *args, once, **options):
        if once:
            self.stdout.write(str(admission_passes()))
            return
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        logger.info("admission_started")
        while not stop.is_set():
            stop.wait(self.run_pass())
        connection.close()
        logger.info("admission_stopped")

    def run_pass(self):
        try:
            done = admission_passes()
        except (OperationalError, InterfaceError) as exc:
            logger.warning("admission_database_unavailable", error=str(exc))
            connection.close()
            return RETRY_SECONDS
        if any(done.values()):
            logger.info("admission_pass", **done)
        return settings.ADMISSION_PASS_MS / 1000
