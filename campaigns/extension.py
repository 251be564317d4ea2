"""The campaigns' rules in coupons' claim path, through coupons/extensions.py.

A coupon of a campaign is judged in its claim group's own transaction,
after the coupon's own answers (404, 409 already_claimed, 403 window, 400
out_of_stock), in this order:

1. 409 `campaign_limit_reached`: the user already holds `max_claims_per_user`
   live claims (held or redeemed) of the campaign's coupons. Checked first,
   as coupons answers already_claimed before out_of_stock: a customer's own
   limit is true whatever the stock.
2. 400 `campaign_exhausted`: the campaign's coupons hold `max_claims` units.

Exact under concurrency. `start_group` locks the campaign's counter row
(SELECT ... FOR NO KEY UPDATE), always after the coupon row, as every
transaction that touches both does (claim groups, releases, expiries: the
coupon row first, then the campaign's), so no lock cycle can form. Claims
of different coupons of one campaign meet at that lock and pass one group
at a time; under it, a statement of its own (READ COMMITTED: a snapshot
taken after the wait) reads the users' live claims across the campaign's
coupons (probes of the unique (coupon, user_id) index of live claims), and
`written` moves the counter in the same transaction. The database refuses
a counter over the cap (CHECK campaign_taken_within_max_claims). On
SQLite the transaction's BEGIN IMMEDIATE serialises all writers anyway.

Two statements per group (three with a per-user limit), whatever its size;
a coupon with no campaign is never judged (`applies_to`), so it pays none.
"""

import functools

from django import forms
from django.db import connection
from rest_framework import serializers, status

from campaigns.exceptions import CampaignAlreadyExists, CampaignExhausted, CampaignLimitReached, CampaignNotFound
from campaigns.models import Campaign, CampaignCoupon
from coupons.api.error_codes import ErrorCode
from coupons.extensions import ClaimGroupRule, CouponExtension
from coupons.models import Claim
from coupons.outbox import CAMPAIGN_EXHAUSTED, NewEvent
from coupons.selectors import LIVE_STATUSES_SQL
from coupons.validators import validate_coupon_name


class CampaignExtension(CouponExtension):
    create_fields = {
        "campaign": serializers.CharField(
            required=False,
            min_length=1,
            max_length=255,
            trim_whitespace=False,
            validators=[validate_coupon_name],
            help_text="The name of the campaign the coupon joins (at most one, only when it is created).",
        )
    }
    admin_create_fields = {
        "campaign": forms.ChoiceField(
            required=False,
            choices=lambda: [("", "(none)"), *((n, n) for n in Campaign.objects.values_list("name", flat=True))],
            help_text="The campaign the coupon joins (only when it is created).",
        )
    }
    http_errors = {
        CampaignExhausted: (status.HTTP_400_BAD_REQUEST, ErrorCode.CAMPAIGN_EXHAUSTED),
        CampaignLimitReached: (status.HTTP_409_CONFLICT, ErrorCode.CAMPAIGN_LIMIT_REACHED),
        CampaignNotFound: (status.HTTP_404_NOT_FOUND, ErrorCode.CAMPAIGN_NOT_FOUND),
        CampaignAlreadyExists: (status.HTTP_409_CONFLICT, ErrorCode.CAMPAIGN_EXISTS),
    }

    def coupon_created(self, *, coupon, options):
        name = options.get("campaign")
        if name is None:
            return []
        campaign_id = Campaign.objects.filter(name=name).values_list("pk", flat=True).first()
        if campaign_id is None:
            raise CampaignNotFound(f"No campaign is named {name!r}.")
        # A new coupon has no claims: the campaign's counter needs no change.
        # create_coupon tells every process (coupon_changed) after this, in the same transaction: each reads which
        # extensions judge the new coupon when it loads its state.
        CampaignCoupon.objects.create(coupon=coupon, campaign_id=campaign_id)
        return []

    def coupon_details(self, *, coupon_name):
        campaign = (
            CampaignCoupon.objects.filter(coupon__name=coupon_name).values_list("campaign__name", flat=True).first()
        )
        return {"campaign": campaign}

    def applies_to(self, *, coupon_ids):
        return set(CampaignCoupon.objects.filter(coupon_id__in=coupon_ids).values_list("coupon_id", flat=True))

    def start_group(self, *, coupon_id, members, now):
        with connection.cursor() as cursor:
            cursor.execute(_lock_campaign_sql(), [coupon_id])
            row = cursor.fetchone()
        if row is None:  # left its campaign since the coupon's state was read: nothing to judge
            return ClaimGroupRule()
        campaign_id, name, max_claims, per_user, taken = row
        holdings = {}
        if per_user is not None:
            users = list(dict.fromkeys(member.user_id for member in members))
            with connection.cursor() as cursor:
                cursor.execute(_holdings_sql(len(users)), [campaign_id, *users])
                holdings = dict(cursor.fetchall())
        return CampaignRule(campaign_id, name, max_claims, per_user, taken, holdings)

    def units_returned(self, *, coupon_id, claims):
        with connection.cursor() as cursor:
            cursor.execute(_give_back_sql(), [len(claims), coupon_id])


class CampaignRule(ClaimGroupRule):
    """One claim group's judge: the campaign's counter and the members' holdings, as read under its lock."""

    def __init__(self, campaign_id, name, max_claims, per_user, taken, holdings):
        self.campaign_id, self.name = campaign_id, name
        self.max_claims, self.per_user = max_claims, per_user
        self.taken, self.holdings = taken, holdings

    def refusal(self, member):
        if self.per_user is not None and self.holdings.get(member.user_id, 0) >= self.per_user:
            return CampaignLimitReached()
        if self.max_claims is not None and self.taken >= self.max_claims:
            return CampaignExhausted()
        # Granted: the next members of the group see it.
        self.taken += 1
        self.holdings[member.user_id] = self.holdings.get(member.user_id, 0) + 1
        return None

    def written(self, granted):
        if not granted:
            return []
        with connection.cursor() as cursor:
            cursor.execute(_take_sql(), [len(granted), self.campaign_id])
        if self.max_claims is not None and self.taken == self.max_claims:
            return [NewEvent(CAMPAIGN_EXHAUSTED, {"campaign": self.name, "max_claims": self.max_claims})]
        return []


def _tables():
    quote = connection.ops.quote_name
    return (
        quote(Campaign._meta.db_table),
        quote(CampaignCoupon._meta.db_table),
        quote(Claim._meta.db_table),
    )


@functools.cache
def _lock_campaign_sql():
    campaigns, members, _ = _tables()
    # SQLite has no row locks: its BEGIN IMMEDIATE already holds the database's write lock.
    lock = " FOR NO KEY UPDATE OF k" if connection.features.has_select_for_update else ""
    return (
        f"SELECT k.id, k.name, k.max_claims, k.max_claims_per_user, k.taken FROM {campaigns} k"  # noqa: S608
        f" JOIN {members} m ON m.campaign_id = k.id WHERE m.coupon_id = %s{lock}"
    )


@functools.lru_cache(maxsize=256)
def _holdings_sql(user_count):
    _, members, claims = _tables()
    users = ", ".join(["%s"] * user_count)
    # Per user, a probe of the unique (coupon_id, user_id) index of live
    # claims for each of the campaign's coupons (a handful).
    return (
        f"SELECT c.user_id, COUNT(*) FROM {claims} c"  # noqa: S608 - only model table names
        f" WHERE c.coupon_id IN (SELECT m.coupon_id FROM {members} m WHERE m.campaign_id = %s)"
        f" AND c.user_id IN ({users}) AND c.status IN ({LIVE_STATUSES_SQL}) GROUP BY c.user_id"
    )


@functools.cache
def _take_sql():
    campaigns, _, _ = _tables()
    return f"UPDATE {campaigns} SET taken = taken + %s WHERE id = %s"  # noqa: S608


@functools.cache
def _give_back_sql():
    campaigns, members, _ = _tables()
    # One statement: the counter row is locked (after the coupon's, which the
    # release or expiry holds already) and moved.
    return (
        f"UPDATE {campaigns} SET taken = taken - %s"  # noqa: S608
        f" WHERE id = (SELECT campaign_id FROM {members} WHERE coupon_id = %s)"
    )
