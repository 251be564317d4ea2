"""Stock left of live coupons, claims by status, the webhook backlog and the backup stream, for Prometheus, read from
the database at each scrape.

A gauge updated on every claim would cost each claim a write to a metrics
file; this reads the figures when Prometheus asks instead: four queries
per scrape (a fifth on PostgreSQL, the backup stream's), none per request. Live coupons are those with stock left.
Every app host reports the same database's figures, so dashboards take
max(), not sum(), across hosts. Per-coupon series are capped at the most
recent LABELLED_COUPONS live coupons, so that the number of series stays
bounded.
"""

import math

import structlog
from django.db import DatabaseError, connection
from django.db.models import Count, Min, Q, Subquery, Sum, Window
from django.utils import timezone
from django_prometheus.exports import ExportToDjangoView
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from coupons.holds import seconds_until_next_deadline
from coupons.models import Claim, ClaimStatus, Coupon, WebhookSubscription
from coupons.webhooks import waiting_events

LABELLED_COUPONS = 50
logger = structlog.get_logger("coupons.metrics")


class LiveStockCollector:
    def collect(self):
        try:
            # One query: the window sums cover every live coupon, before the LIMIT.
            live = list(
                Coupon.objects.filter(remaining_amount__gt=0)
                .annotate(live=Window(Count("id")), stock=Window(Sum("remaining_amount")))
                .order_by("-created_at", "-id")
                .values_list("name", "remaining_amount", "live", "stock")[:LABELLED_COUPONS]
            )
        except DatabaseError as exc:
            # The request metrics still get scraped; the stock is absent (not 0) while the database is away.
            logger.warning("stock metrics unavailable", error=str(exc))
            return
        coupons, stock = (live[0][2], live[0][3]) if live else (0, 0)
        yield GaugeMetricFamily("coupons_live", "Coupons with stock left.", value=coupons)
        yield GaugeMetricFamily("coupon_stock_remaining_total", "Units left, all live coupons together.", value=stock)
        per_coupon = GaugeMetricFamily(
            "coupon_stock_remaining", f"Units left per live coupon (the {LABELLED_COUPONS} newest).", labels=["coupon"]
        )
        for name, remaining, _, _ in live:
            per_coupon.add_metric([name], remaining)
        yield per_coupon


class ClaimStatusCollector:
    """Claims by status, and how late the expiry of holds runs.

    The counts are one GROUP BY over the claims table's (coupon, status)
    index: its cost grows with the table (docs/performance.md gives it).
    Not `coupon_claims{status}`: that family is the claim requests' counter
    (coupon_claims_total{outcome}), and one name cannot have two types.
    """

    def collect(self):
        try:
            counts = dict(Claim.objects.values_list("status").annotate(count=Count("*")).order_by())
            until_next = seconds_until_next_deadline()
        except DatabaseError as exc:
            logger.warning("claim metrics unavailable", error=str(exc))
            return
        by_status = GaugeMetricFamily(
            "coupon_claims_by_status", "Claims of every coupon, by status (read at scrape time).", labels=["status"]
        )
        for status in ClaimStatus:
            by_status.add_metric([status.value], counts.get(status.value, 0))
        yield by_status
        yield GaugeMetricFamily(
            "coupon_hold_expiry_lag_seconds",
            "How long the most overdue held claim has been past its deadline (0: none): the expiry worker's delay.",
            value=max(0.0, -until_next) if until_next is not None else 0.0,
        )


class WebhookBacklogCollector:
    """How far webhook delivery lags, from the database (every app host reports the same figures; take max())."""

    def collect(self):
        try:
            backlog = WebhookSubscription.objects.aggregate(
                oldest=Min(Subquery(waiting_events().values("occurred_at")[:1]), filter=Q(is_active=True)),
                disabled=Count("pk", filter=Q(is_active=False)),
            )
        except DatabaseError as exc:
            logger.warning("webhook metrics unavailable", error=str(exc))
            return
        oldest = backlog["oldest"]
        yield GaugeMetricFamily(
            "webhook_oldest_undelivered_event_age_seconds",
            "Age of the oldest event an active webhook subscription has not had yet (0: none waiting).",
            value=(timezone.now() - oldest).total_seconds() if oldest is not None else 0,
        )
        yield GaugeMetricFamily(
            "webhook_subscriptions_disabled",
            "Webhook subscriptions disabled (see the admin).",
            value=backlog["disabled"],
        )


class BackupStreamCollector:
    """Whether the backup host streams this database's WAL, and how far behind (deploy/barman.conf).

    Read on the primary the app hosts write to, in one query: the
    pg_stat_replication row of Barman's pg_receivewal (its application_name)
    and the WAL its replication slot holds back, which grows while the
    backup host is away until the primary's disk fills. Unknown (NaN) where
    there is nothing to read: no stream, no slot, or not PostgreSQL. The
    database role needs pg_monitor to see the positions (a superuser has it).
    """

    STREAMER = "barman_receive_wal"
    SLOT = "barman"

    def collect(self):
        lag = retained = None
        if connection.vendor == "postgresql":
            try:
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT (SELECT min(pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)) FROM pg_stat_replication"
                        " WHERE application_name = %s),"
                        " (SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) FROM pg_replication_slots"
                        " WHERE slot_name = %s)",
                        [self.STREAMER, self.SLOT],
                    )
                    lag, retained = cursor.fetchone()
            except DatabaseError as exc:
                logger.warning("backup stream metrics unavailable", error=str(exc))
                return
        yield GaugeMetricFamily(
            "coupon_backup_wal_streaming",
            "1 while the backup host streams this database's WAL (Barman's pg_receivewal), else 0.",
            value=int(lag is not None),
        )
        yield GaugeMetricFamily(
            "coupon_backup_wal_lag_bytes",
            "WAL written on the primary and not yet flushed by the backup host's stream (NaN: no stream).",
            value=float(lag) if lag is not None else math.nan,
        )
        yield GaugeMetricFamily(
            "coupon_backup_slot_retained_wal_bytes",
            "WAL the primary keeps for the backup host's replication slot (NaN: no slot).",
            value=float(retained) if retained is not None else math.nan,
        )


stock_registry = CollectorRegistry(auto_describe=False)
stock_registry.register(LiveStockCollector())
stock_registry.register(ClaimStatusCollector())
stock_registry.register(WebhookBacklogCollector())
stock_registry.register(BackupStreamCollector())


def metrics(request):
    """django-prometheus's /metrics (every server worker added up), then the stock, read now."""
    response = ExportToDjangoView(request)
    response.content += generate_latest(stock_registry)
    return response
