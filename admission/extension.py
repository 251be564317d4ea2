"""Fair admission as a coupons extension (coupons/extensions.py): its create fields, its detail fields, and its
judgement of claims of `queue` and `draw` coupons.

A claim of such a coupon carries `admission_token`. Its signature, issuer,
subject (the claiming user), audience (the coupon) and window are checked
in prepare_claim, before any query (CPU only). In the claim group's
transaction, after the coupon's own answers (404, 409 already_claimed, 403
window, 400 out_of_stock), the token's entry (its `jti`) is read, in one
statement for the whole group: it must be this coupon's and this user's,
admitted, unspent and within its admission by the database's clock. The
granted claims then spend their entries in one UPDATE of the same
transaction (the entry's claim column is unique): a token works once, for
its user only, whichever app host it is sent to, and a failover loses
either both the claim and the spending or neither.
"""

from django.db import transaction
from django.db.models import Q
from rest_framework import serializers

from admission import services
from admission.exceptions import (
    AdmissionExpired,
    AdmissionInvalid,
    AdmissionRequired,
    AlreadyEntered,
    EntriesClosed,
    EntriesNotOpen,
    EntryNotFound,
    NoAdmission,
    NotADraw,
    ProofOfWorkInvalid,
    ProofOfWorkRequired,
)
from admission.models import MAX_ADMISSION_SECONDS, MAX_ADMIT_PER_SECOND, AdmissionPolicy, Entry, EntryStatus, Mode
from admission.tokens import VerifiedToken, verify_token
from coupons.exceptions import CouponError
from coupons.extensions import ClaimGroupRule, CouponExtension


def _create_fields():
    # Imported here: coupons' serializers import coupons.extensions, which must not need admission at import.
    from coupons.api.serializers import Rfc3339DateTimeField, StrictIntegerField

    return {
        "admission": serializers.ChoiceField(
            choices=Mode.choices,
            required=False,
            help_text="first_come (the default: claims as before), queue (a waiting room) or draw.",
        ),
        "admit_per_second": StrictIntegerField(
            required=False,
            allow_null=True,
            min_value=1,
            max_value=MAX_ADMIT_PER_SECOND,
            help_text="queue/draw: users admitted per second, within the stock left. Absent or null: as many as the"
            " stock left can serve, topped up as admissions are used or lapse.",
        ),
        "admission_seconds": StrictIntegerField(
            required=False,
            min_value=1,
            max_value=MAX_ADMISSION_SECONDS,
            help_text="queue/draw: seconds an admitted user has to claim (default 120).",
        ),
        "entries_open_at": Rfc3339DateTimeField(
            required=False, allow_null=True, help_text="queue/draw: entries refused before this instant."
        ),
        "draw_at": Rfc3339DateTimeField(
            required=False, allow_null=True, help_text="draw (required): entries close and the draw is made."
        ),
    }


class _LazyFields(dict):
    """create_fields, built at first use (coupons' API serializers are not importable while apps load)."""

    def _fill(self):
        if not dict.__len__(self):
            self.update(_create_fields())

    def items(self):
        self._fill()
        return super().items()

    def keys(self):
        self._fill()
        return super().keys()

    def __iter__(self):
        self._fill()
        return super().__iter__()

    def __contains__(self, key):
        self._fill()
        return super().__contains__(key)


def validate_admission_options(options: dict) -> dict:
    """The policy's arguments from the create fields sent; CouponError-free, DRF's ValidationError on bad combos."""
    mode = options.get("admission", Mode.FIRST_COME)
    extra = {name for name in options if name != "admission" and options[name] is not None}
    if mode == Mode.FIRST_COME:
        if extra:
            raise serializers.ValidationError({"admission": f"{', '.join(sorted(extra))}: only with queue or draw."})
        return {"mode": mode}
    if mode == Mode.DRAW and options.get("draw_at") is None:
        raise serializers.ValidationError({"draw_at": "A draw needs draw_at."})
    if mode == Mode.QUEUE and options.get("draw_at") is not None:
        raise serializers.ValidationError({"draw_at": "Only a draw has draw_at."})
    opens, draw_at = options.get("entries_open_at"), options.get("draw_at")
    if opens is not None and draw_at is not None and draw_at <= opens:
        raise serializers.ValidationError({"draw_at": "Must be after entries_open_at."})
    policy = {"mode": mode}
    for name in ("admit_per_second", "admission_seconds", "entries_open_at", "draw_at"):
        if options.get(name) is not None:
            policy[name] = options[name]
    return policy


# The most coupons whose answer a process keeps (then it forgets them all and reads again as claims come).
NAMES_CACHED = 100_000


class _AdmissionRule(ClaimGroupRule):
    def __init__(self, coupon_id, entries, now):
        self.coupon_id, self.entries, self.now = coupon_id, entries, now
        self.spending = {}  # position in the group -> entry id, for members let through

    def refusal(self, member):
        token = member.prepared
        if isinstance(token, CouponError):
            return token
        entry = self.entries.get(token.entry_id)
        if entry is None or entry["coupon_id"] != self.coupon_id or entry["user_id"] != member.user_id:
            return AdmissionInvalid()
        if entry["claim_id"] is not None or token.entry_id in self.spending.values():
            return AdmissionInvalid("This admission token has already been spent on a claim.")
        if entry["status"] not in (EntryStatus.ADMITTED, EntryStatus.EXPIRED):
            return AdmissionInvalid()
        if entry["admitted_until"] <= self.now:  # the database's clock, under the coupon row lock
            return AdmissionExpired()
        self.spending[member.position] = token.entry_id
        return None

    def written(self, granted):
        services.spend_entries(spent=[(self.spending[member.position], claim.pk) for member, claim in granted])
        return []


class AdmissionExtension(CouponExtension):
    create_fields = _LazyFields()
    claim_fields = {
        # No max_length: a token carries the coupon's name and the user id, JSON-escaped then base64url-encoded
        # (up to ~8.5 KB for 255 astral characters each); the request body limit (MAX_REQUEST_BODY_BYTES) bounds it.
        "admission_token": serializers.CharField(
            required=False,
            trim_whitespace=False,
            help_text="queue/draw coupons: the admission token GET .../entries/{user_id} gave this user.",
        )
    }
    http_errors = {
        NoAdmission: (409, "no_admission"),
        AlreadyEntered: (409, "already_entered"),
        EntriesNotOpen: (403, "entries_not_open"),
        EntriesClosed: (403, "entries_closed"),
        EntryNotFound: (404, "entry_not_found"),
        NotADraw: (404, "not_a_draw"),
        AdmissionRequired: (403, "admission_required"),
        AdmissionInvalid: (403, "admission_invalid"),
        AdmissionExpired: (403, "admission_expired"),
        ProofOfWorkRequired: (403, "proof_of_work_required"),
        ProofOfWorkInvalid: (403, "proof_of_work_invalid"),
    }

    def __init__(self):
        # coupon id -> its name if this extension judges its claims, else None. A coupon's admission mode is set
        # in the transaction that creates it and never changes, nor does its name, and ids are not reused: the
        # answer, once read, holds for the life of the process (bounded below). prepare_claim reads a token's
        # expected audience here, without a query.
        self.names = {}

    def coupon_created(self, *, coupon, options):
        policy = services.create_policy(coupon=coupon, **validate_admission_options(options))
        # Known in this process once committed (SQLite may give a rolled-back coupon's id to the next one).
        answer = {coupon.pk: coupon.name if policy is not None else None}
        transaction.on_commit(lambda: self._remember(answer))
        return []

    def forget(self):
        """Forget every coupon's answer (tests: SQLite reuses the ids of coupons a test case rolled back)."""
        self.names.clear()

    def _remember(self, answers):
        if len(self.names) + len(answers) > NAMES_CACHED:
            self.names.clear()
        self.names.update(answers)

    def coupon_details(self, *, coupon_name):
        from admission.selectors import admission_details

        return admission_details(coupon_name=coupon_name)

    def applies_to(self, *, coupon_ids):
        unknown = [coupon_id for coupon_id in coupon_ids if coupon_id not in self.names]
        if unknown:
            judged = dict(
                AdmissionPolicy.objects.filter(pk__in=unknown, mode__in=[Mode.QUEUE, Mode.DRAW]).values_list(
                    "pk", "coupon__name"
                )
            )
            self._remember({coupon_id: judged.get(coupon_id) for coupon_id in unknown})
        return {coupon_id for coupon_id in coupon_ids if self.names.get(coupon_id) is not None}

    def prepare_claim(self, *, coupon_id, user_id, claim_input):
        token = claim_input.get("admission_token")
        if token is None:
            return AdmissionRequired()
        try:
            return verify_token(token, user_id=user_id, coupon_name=self.names.get(coupon_id))
        except CouponError as refusal:
            return refusal

    def start_group(self, *, coupon_id, members, now):
        entry_ids = {member.prepared.entry_id for member in members if isinstance(member.prepared, VerifiedToken)}
        entries = {}
        if entry_ids:
            # One statement for the group; under the coupon row lock, which every claim of the coupon holds
            # while it spends an entry, so what is read here cannot change before the commit but by a lapse
            # (the worker's UPDATE re-checks the status and leaves a spent entry alone).
            rows = Entry.objects.filter(Q(pk__in=entry_ids)).values(
                "pk", "coupon_id", "user_id", "status", "admitted_until", "claim_id"
            )
            entries = {row["pk"]: row for row in rows}
        return _AdmissionRule(coupon_id, entries, now)


def forget_coupon(coupon_id: int) -> None:
    """Forget this process's answer for one coupon (its policy was just created)."""
    from coupons import extensions

    for extension in extensions.registered():
        if isinstance(extension, AdmissionExtension):
            extension.names.pop(coupon_id, None)


def forget_caches() -> None:
    """Forget what this process cached of coupons' admission (tests: each test case starts from its database)."""
    from admission import selectors
    from coupons import extensions

    for extension in extensions.registered():
        if isinstance(extension, AdmissionExtension):
            extension.forget()
    selectors.clear_caches()
