"""Queue length and admission rate for Prometheus, read from the database at each scrape (as coupons'
stock_metrics: one query per scrape, none per request; every host reports the same figures: take max())."""

from datetime import timedelta

import structlog
from django.db import DatabaseError
from django.db.models import Count, Q
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from admission.models import Entry, EntryStatus

logger = structlog.get_logger("admission.metrics")


class AdmissionCollector:
    def collect(self):
        since = timezone.now() - timedelta(seconds=60)
        try:
            # One query per scrape: every status's count and the last minute's admissions, filtered aggregates.
            counts = Entry.objects.aggregate(
                admitted_recently=Count("pk", filter=Q(admitted_at__gte=since)),
                **{status: Count("pk", filter=Q(status=status)) for status in EntryStatus.values},
            )
            admitted = counts.pop("admitted_recently")
        except DatabaseError as exc:
            logger.warning("admission metrics unavailable", error=str(exc))
            return
        by_status = GaugeMetricFamily(
            "admission_entries_by_status",
            "Entries of every queue and draw, by status (waiting: the queues' length).",
            labels=["status"],
        )
        for status in EntryStatus.values:
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status
        yield GaugeMetricFamily(
            "admission_admitted_per_second", "Admissions per second over the last minute.", value=admitted / 60
        )
