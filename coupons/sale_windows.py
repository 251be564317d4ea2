"""Sale windows: when a coupon may be claimed, and its status, at a given instant.

Pure functions of the window's bounds and "now". Callers pass the
database's clock (STATEMENT_TIMESTAMP() on PostgreSQL), never the app
server's: every server then agrees on the instant a sale opens and closes.
"""

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.utils.dateparse import parse_datetime

from coupons.exceptions import SaleEnded, SaleNotStarted

ONE_SECOND = timedelta(seconds=1)


class SaleStatus(enum.StrEnum):
    SCHEDULED = "scheduled"  # now < starts_at
    LIVE = "live"
    SOLD_OUT = "sold_out"  # inside the window, no stock left
    ENDED = "ended"  # now >= ends_at

    @property
    def label(self):
        return self.value.replace("_", " ").capitalize()  # "Sold out"


@dataclass(frozen=True)
class SaleWindow:
    """[starts_at, ends_at): either bound may be None (unbounded)."""

    starts_at: datetime | None
    ends_at: datetime | None

    def has_started(self, now: datetime) -> bool:
        return self.starts_at is None or now >= self.starts_at

    def has_ended(self, now: datetime) -> bool:
        return self.ends_at is not None and now >= self.ends_at

    def refusal(self, now: datetime) -> SaleNotStarted | SaleEnded | None:
        """What a claim at `now` is refused with: SaleNotStarted (with the whole seconds left, rounded up),
        SaleEnded, or None inside the window."""
        if not self.has_started(now):
            return SaleNotStarted(retry_after_seconds=whole_seconds_until(self.starts_at, now))
        if self.has_ended(now):
            return SaleEnded()
        return None

    def check_open(self, now: datetime) -> None:
        """Raise the refusal of a claim at `now`, if any."""
        refusal = self.refusal(now)
        if refusal is not None:
            raise refusal

    def status(self, *, now: datetime, remaining_amount: int) -> SaleStatus:
        if self.has_ended(now):
            return SaleStatus.ENDED
        if not self.has_started(now):
            return SaleStatus.SCHEDULED
        return SaleStatus.LIVE if remaining_amount > 0 else SaleStatus.SOLD_OUT


def whole_seconds_until(moment: datetime, now: datetime) -> int:
    """Seconds from `now` to `moment`, rounded up (integer arithmetic: no float rounding), at least 1."""
    return max(1, -((now - moment) // ONE_SECOND))


def as_utc_datetime(value) -> datetime | None:
    """A timestamp read by raw SQL, as an aware datetime.

    psycopg returns timestamptz as aware datetimes; SQLite returns text (or,
    for a datetime column, a naive datetime in UTC, as Django stores it).
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = parse_datetime(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def format_utc(value: datetime | None) -> str | None:
    """`YYYY-MM-DDTHH:MM:SS[.ffffff]Z`: the API's one timestamp format."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
