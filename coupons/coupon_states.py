"""What this process knows of coupons, so that a claim it can only refuse is refused without the database.

A flash sale is one winner for every 100-200 refusals, and every refusal
used to cost the primary a query. Here each process keeps, per coupon it
has been asked about: its id, its sale window, whether it is sold out, and
(once it refuses from memory) who holds it. A claim is refused from memory
only when what the process knows proves the refusal; everything else goes
to the claim group's transaction, where the database judges under the
coupon row lock (coupons/claim_groups.py). So what is kept here may be
stale only in the refusing direction: it can make a claim wait for, or
miss, a unit that has just come back (for a bounded time, below), but it
can never grant one. The database grants every claim.

Where each fact comes from:
- A coupon's id, window and which extensions judge it: read once, on first
  use (one statement), and forgotten when it changes.
- "Sold out": learned from the database's own answer, after the commit of
  the claim group that took the last unit or was refused for lack of stock
  (`learned_sold_out`), never from a read that could predate the commit.
- "No such coupon": learned from the same first read, bounded in number.
- Who holds it: the live claims' user ids, read when the process first
  refuses from memory and then only the claims newer than those it has
  (`HolderSet`). A claim granted since can only have been granted while
  stock was left, i.e. after a change that made this process forget the
  sold-out state; so a sold-out state and its holders are read in that order
  and the holders are complete for it.

What makes a process forget: every change that can give a refused claim a
chance (a unit returned by a release or a hold's expiry, a restock, a sale
window moved, a coupon created or deleted, an extension's rule changed)
sends `NOTIFY coupon_states` with the coupon's id and name, from a trigger
on the coupon row (migration 0008: whoever wrote it) and from
`coupon_changed` (which the services and extensions call in their
transactions, and which makes this process forget at once): PostgreSQL delivers it
at the commit to every process listening, on every app host, and each
forgets that coupon. Notifications are sent on those state changes only,
never per claim. Each process listens on a connection of its own (a thread,
`DATABASE_LISTEN_URL`, not through PgBouncer's transaction mode, where LISTEN
does not work); while that connection is down, or after it reconnects (a
failover, a restart), the process forgets everything and refuses nothing
from memory until it listens again. A generation counter, moved by every
notification and reconnection, stops a sold-out answer that raced with a
notification from being kept.

On SQLite (one host, no LISTEN) a state is kept for `COUPON_STATE_TTL_SQLITE`
seconds, which bounds how long a returned unit can stay unclaimable there.

Sale windows are on the database's clock: the listener measures the
offset between this process's clock and the database's (and the round trip
that bounds the measurement's error) when it connects and every
`CLOCK_CHECK_SECONDS`; a window is judged from memory only when the claim is
before its start or after its end by more than that error plus
`WINDOW_MARGIN`; nearer the edges the claim goes to the database.
"""

import bisect
import collections
import hashlib
import logging
import os
import secrets
import threading
import time
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
from django.conf import settings
from django.db import connection, transaction

from coupons import extensions
from coupons.exceptions import AlreadyClaimed, CouponNotFound, OutOfStock
from coupons.models import Claim, Coupon
from coupons.sale_windows import SaleWindow, as_utc_datetime
from coupons.selectors import LIVE_STATUSES_SQL, database_now_sql

logger = logging.getLogger(__name__)

CHANNEL = "coupon_states"
# How many coupons a process keeps (states and names known not to exist):
# the least recently used go first, so a flood of made-up names cannot grow it.
MAX_COUPONS = 10_000
# The measured clock offset's error, plus this, keeps a cached window's
# refusal on the right side of the database's instant.
WINDOW_MARGIN = timedelta(milliseconds=20)
CLOCK_CHECK_SECONDS = 10.0
# The channel of the listener's own probes (it checks that it receives what it sends), and how long it waits.
PROBE_CHANNEL = "coupon_states_probe"
PROBE_SECONDS = 5.0
# The listener's application_name, as pg_stat_activity shows it.
LISTENER_NAME = "couponsite coupon states"
# Seconds between the listener's reconnection attempts.
RECONNECT_SECONDS = 0.5


def _user_hash(user_id: str) -> int:
    # 64 bits of BLAKE2b: a collision only sends a claim to the database.
    return int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=8).digest(), "big", signed=True)


class HolderSet:
    """The 64-bit hashes of a coupon's holders, sorted in an array: 8 bytes a holder, a bisect to look one up.

    Written here rather than taken from a Bloom filter library: none is
    maintained on the package index this project installs from, and this is
    exact up to hash collisions (which only cost a query) in a few lines.
    A hash present means "maybe a holder": the claim goes to the database.
    A holder who has since given the unit back stays in it (the same).
    """

    __slots__ = ("_hashes", "through_claim_id", "reading")

    def __init__(self):
        self._hashes = array("q")
        self.through_claim_id = 0  # every live claim of the coupon with an id up to this one is in
        self.reading = threading.Lock()  # one thread reads the newer claims; the others wait for it

    def read_newer(self, coupon_id):
        """Add the coupon's live claims newer than those in: claims of one coupon get their ids under its row
        lock, so none with a smaller id can commit later."""
        with connection.cursor() as cursor:
            cursor.execute(_holders_after_sql(), [coupon_id, self.through_claim_id])
            rows = cursor.fetchall()
        if rows:
            self._hashes = array("q", sorted([*self._hashes, *(_user_hash(user_id) for _, user_id in rows)]))
            self.through_claim_id = rows[-1][0]

    def may_hold(self, user_id: str) -> bool:
        wanted = _user_hash(user_id)
        position = bisect.bisect_left(self._hashes, wanted)
        return position < len(self._hashes) and self._hashes[position] == wanted


@dataclass
class CouponState:
    coupon_id: int
    name: str
    window: SaleWindow
    extensions: tuple
    loaded_at: float  # time.monotonic()
    sold_out: bool = False
    # Read for one claim only, while the process cannot keep states (not listening): whether that claim's
    # user holds the coupon, and the database's clock, read in the same statement.
    user_holds: bool | None = None
    read_at: datetime | None = None
    # Why the holders were last read for this state ("sold_out", a window's refusal class): read again, newer
    # claims only, when the reason to refuse changes (a sale that sold out, then ended, granted in between).
    holders_read_for: object = field(default=None, repr=False)


class CouponStates:
    """The process's coupon states (`coupon_states`); thread-safe."""

    def __init__(self):
        self._mutex = threading.Lock()
        self._coupons: OrderedDict[str, CouponState | None] = OrderedDict()  # name -> state, None: no such coupon
        # Coupon id -> its holders: kept when a coupon's state is forgotten (a unit back in stock), since
        # claims granted afterwards are newer and read as such; dropped on reconnection.
        self._holders: dict[int, HolderSet] = {}
        self._generation = 0
        self._listening = False
        self._listener = None
        self._listener_backend_pid = None
        self._probes_received = set()
        self._probe_channel = f"{PROBE_CHANNEL}_{secrets.token_hex(8)}"
        self._outage_logged = False
        self._markers_seen = collections.deque(maxlen=100)
        self._stopping = False
        self._pid = None
        self.clock_offset: timedelta | None = None
        self.clock_error: timedelta | None = None

    # --- what the claim path asks -------------------------------------------------------------

    def generation(self) -> int:
        return self._generation

    def lookup(self, name: str, user_id: str) -> CouponState:
        """The coupon's state, read from the database when this process does not know it; CouponNotFound.

        While the process cannot keep states (its listener is down, or the
        database a hot standby where LISTEN is refused), the read also says
        whether `user_id` holds the coupon, with the database's clock: the
        refusals are then proved by that one lock-free read, as a claim's
        were before the process kept states, and need no write.
        """
        if not self._usable():
            state = self._load(name, user_id)
            if state is None:
                raise CouponNotFound()
            return state
        state, _ = self._kept(name)
        if state is None:
            raise CouponNotFound()
        if state is not _UNKNOWN and self._fresh(state):
            return state
        generation = self._generation
        state = self._load(name, None)
        self._keep(name, state, generation)
        if state is None:
            raise CouponNotFound()
        return state

    def refusal(self, state: CouponState, user_id: str):
        """The refusal this process can prove from what it knows (AlreadyClaimed, the window's, OutOfStock), or
        None: the claim goes to the database. In the API's order: 409, then 403, then 400."""
        if state.read_at is not None:  # read for this claim alone (lookup)
            if state.user_holds:
                return AlreadyClaimed()
            return state.window.refusal(state.read_at) or (OutOfStock() if state.sold_out else None)
        if not self._usable():
            return None
        refusal, reason = self._refusal_of(state)
        if reason is None:
            return None
        holders = self._holders_of(state.coupon_id)
        if state.holders_read_for != reason:
            with holders.reading:
                if state.holders_read_for != reason:
                    holders.read_newer(state.coupon_id)
                    state.holders_read_for = reason
        if holders.may_hold(user_id) and _holds(state.coupon_id, user_id):
            return AlreadyClaimed()
        return refusal

    def known_refusal(self, name: str, user_id: str):
        """The refusal `refusal(lookup(name, user_id), user_id)` would give, when this process can give it without
        the database, or None (it may still refuse, after a query): a coupon known not to exist (CouponNotFound),
        or one known to refuse (window, stock) whose holders were read for that reason and do not hold `user_id`.
        The claim path's first step (coupons/api/memory_refusals.py); no statement, no connection."""
        if not self._usable():
            return None
        state, holders = self._kept(name)
        if state is None:
            return CouponNotFound()
        if state is _UNKNOWN or not self._fresh(state):
            return None
        refusal, reason = self._refusal_of(state)
        if reason is None or holders is None or state.holders_read_for != reason or holders.may_hold(user_id):
            return None
        return refusal

    def _kept(self, name):
        """What this process keeps for `name`, the name now its most recent: (its state — None: no such coupon, or
        _UNKNOWN —, the coupon's holders or None), read together, so that a state forgotten meanwhile is never
        judged with holders read for a newer one."""
        with self._mutex:
            state = self._coupons.get(name, _UNKNOWN)
            if state is _UNKNOWN:
                return state, None
            self._coupons.move_to_end(name)
            return state, None if state is None else self._holders.get(state.coupon_id)

    def _refusal_of(self, state):
        """(the refusal the state proves for a user who holds nothing, why), or (None, None)."""
        refusal = self._window_refusal(state)
        if refusal is not None:
            return refusal, type(refusal)
        if state.sold_out:
            return OutOfStock(), "sold_out"
        return None, None

    def learned_sold_out(self, coupon_id: int, generation: int) -> None:
        """The database answered, after a commit, that the coupon has no stock left, for a claim group that
        started at `generation`: kept unless something changed since."""
        with self._mutex:
            if generation != self._generation or not self._usable():
                return
            for state in self._coupons.values():
                if state is not None and state.coupon_id == coupon_id:
                    state.sold_out = True
                    state.holders_read_for = None  # claims were granted until now: read the newer ones

    def forget(self, *, coupon_id: int | None = None, name: str | None = None) -> None:
        with self._mutex:
            self._generation += 1
            if name is not None:
                self._coupons.pop(name, None)
            if coupon_id is not None:
                for known, state in list(self._coupons.items()):
                    if state is not None and state.coupon_id == coupon_id:
                        del self._coupons[known]

    def forget_all(self) -> None:
        with self._mutex:
            self._generation += 1
            self._coupons.clear()
            self._holders.clear()

    # --- internals ----------------------------------------------------------------------------

    def _usable(self) -> bool:
        """Whether what is kept may be used: on PostgreSQL, while this process listens."""
        if not settings.COUPON_STATE_CACHE:
            return False
        if connection.vendor != "postgresql":
            return True
        self._ensure_listener()
        return self._listening

    def _fresh(self, state):
        if connection.vendor == "postgresql":
            return True  # kept until a notification, or a reconnection, says otherwise
        return time.monotonic() - state.loaded_at < settings.COUPON_STATE_TTL_SQLITE

    def _keep(self, name, state, generation):
        if not self._usable():
            return
        with self._mutex:
            if generation != self._generation:
                return  # a change was notified while it was read: it may predate it
            self._coupons[name] = state
            self._coupons.move_to_end(name)
            while len(self._coupons) > MAX_COUPONS:
                self._coupons.popitem(last=False)

    def _load(self, name, user_id):
        with connection.cursor() as cursor:
            if user_id is None:
                cursor.execute(_state_sql(), [name])
                row = cursor.fetchone()
                user_holds = read_at = None
            else:
                cursor.execute(_state_and_holder_sql(), [user_id, name])
                row = cursor.fetchone()
                if row is not None:
                    *row, user_holds, read_at = row
        if row is None:
            return None
        coupon_id, remaining_amount, starts_at, ends_at = row
        return CouponState(
            user_holds=None if user_holds is None else bool(user_holds),
            read_at=as_utc_datetime(read_at),
            coupon_id=coupon_id,
            name=name,
            window=SaleWindow(as_utc_datetime(starts_at), as_utc_datetime(ends_at)),
            extensions=extensions.applying_to(coupon_id),
            loaded_at=time.monotonic(),
            # Read in a statement that may predate the last change's commit: a
            # zero here is only trusted as far as the generation check allows.
            sold_out=remaining_amount <= 0,
        )

    def _window_refusal(self, state):
        window = state.window
        if window.starts_at is None and window.ends_at is None:
            return None
        now, error = self._database_now()
        if now is None:
            return None
        # Judged at the instant least in favour of refusing that the estimate allows: the latest before a start
        # (so Retry-After never counts more whole seconds than were left: CI once saw 2 with 0.9993 s to go, the
        # estimate 0.7 ms behind), the earliest after an end.
        if window.starts_at is not None and now + error + WINDOW_MARGIN < window.starts_at:
            return window.refusal(now + error)
        if window.ends_at is not None and now - error - WINDOW_MARGIN >= window.ends_at:
            return window.refusal(now - error)
        return None

    def _database_now(self):
        """(the database's clock as estimated here, the estimate's error), or (None, None) unmeasured."""
        if connection.vendor != "postgresql":
            return datetime.now(tz=UTC), timedelta(0)  # SQLite's clock is this machine's
        offset, error = self.clock_offset, self.clock_error
        if offset is None:
            return None, None
        return datetime.now(tz=UTC) + offset, error

    def _holders_of(self, coupon_id):
        with self._mutex:
            holders = self._holders.get(coupon_id)
            if holders is None:
                if len(self._holders) >= MAX_COUPONS:
                    self._holders.clear()
                holders = self._holders[coupon_id] = HolderSet()
            return holders

    # --- the listener -------------------------------------------------------------------------

    def _ensure_listener(self):
        if self._pid == os.getpid():
            return
        with self._mutex:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()  # a forked worker starts its own
            self._listening = False
            self._coupons.clear()
            self._holders.clear()
            self._listener = threading.Thread(target=self._listen_forever, name="coupon-states", daemon=True)
            self._listener.start()

    def wait_until_listening(self, timeout: float = 10.0) -> bool:
        """Start the listener if need be and wait until it listens (tests, a worker's warm-up); whether it does."""
        deadline = time.monotonic() + timeout
        while not self._usable() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._usable()

    def wait_for_notifications(self, timeout: float = 10.0) -> None:
        """Wait until this process has heard every notification committed before the call (tests): a marker
        sent now arrives after them (PostgreSQL delivers notifications in commit order)."""
        if connection.vendor != "postgresql" or not self.wait_until_listening(timeout):
            return
        marker = f"0:marker-{time.monotonic_ns()}"
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, marker])
        deadline = time.monotonic() + timeout
        while marker not in self._markers_seen and time.monotonic() < deadline:
            time.sleep(0.005)

    def stop_listening(self) -> None:
        """End this process's listener (a test run, before its database is dropped)."""
        listener, backend_pid = self._listener, self._listener_backend_pid
        if listener is None or self._pid != os.getpid():
            return
        self._stopping = True
        if backend_pid is not None:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(%s)", [backend_pid])
        listener.join(10)
        with self._mutex:
            self._pid = self._listener = self._listener_backend_pid = None
            self._listening = self._stopping = False
            self._coupons.clear()
            self._holders.clear()

    def _listen_forever(self):
        while not self._stopping:
            try:
                with psycopg.connect(
                    listen_conninfo(), autocommit=True, connect_timeout=5, application_name=LISTENER_NAME
                ) as listener:
                    self._listener_backend_pid = listener.info.backend_pid
                    listener.execute(f"LISTEN {CHANNEL}")
                    self._check(listener)
                    self.forget_all()  # anything kept may predate the LISTEN
                    self._listening = True
                    self._outage_logged = False
                    logger.info("coupon states: listening")
                    while True:
                        for notification in listener.notifies(timeout=CLOCK_CHECK_SECONDS):
                            self._notified(notification)
                        self._check(listener)
            except Exception as exc:  # noqa: BLE001 - any failure: forget, and listen again
                if not (self._stopping or self._outage_logged):  # once per outage, not per reconnection attempt
                    logger.warning("coupon states: not listening (%s); refusing nothing from memory", exc)
                    self._outage_logged = True
            self._listening = False
            self._listener_backend_pid = None
            self.forget_all()
            if not self._stopping:
                time.sleep(RECONNECT_SECONDS)

    def _notified(self, notification):
        if notification.channel != CHANNEL:
            self._probes_received.add(notification.payload)
            return
        if notification.payload.startswith("0:marker-"):  # wait_for_notifications's
            self._markers_seen.append(notification.payload)
            return
        coupon_id, _, name = notification.payload.partition(":")  # "<id>:<name>" (a name may hold ":")
        try:
            self.forget(coupon_id=int(coupon_id), name=name)
        except ValueError:  # "*": the coupons' table was truncated (migration 0009)
            self.forget_all()

    def _check(self, listener):
        """Prove the connection listens, and measure the clock. A notification sent from another connection must
        come back: through PgBouncer's transaction mode (or anything else that breaks LISTEN) it does not, and
        the process then refuses nothing from memory rather than miss the changes it was told of. (Sent on the
        listener's own connection, it could come back there even so: PostgreSQL hands a session its own
        notifications, on whichever server connection PgBouncer gave it.)"""
        probe = str(time.monotonic_ns())
        # A channel of this process's own, so that no other process hears its probes (not named after the
        # backend's pid: through PgBouncer that is a made-up number, negative too).
        channel = self._probe_channel
        listener.execute(f"LISTEN {channel}")
        with psycopg.connect(
            listen_conninfo(), autocommit=True, connect_timeout=5, application_name=f"{LISTENER_NAME} probe"
        ) as sender:
            sender.execute("SELECT pg_notify(%s, %s)", [channel, probe])
        for notification in listener.notifies(timeout=PROBE_SECONDS, stop_after=None):
            self._notified(notification)
            if probe in self._probes_received:
                break
        if probe not in self._probes_received:
            raise RuntimeError(
                "a notification this connection sent never came back: LISTEN does not work through it"
                " (PgBouncer in transaction mode?); set DATABASE_LISTEN_URL to PostgreSQL itself"
            )
        self._probes_received.clear()
        self._measure_clock(listener)

    def _measure_clock(self, listener):
        before = datetime.now(tz=UTC)
        database_now = listener.execute("SELECT statement_timestamp()").fetchone()[0]
        after = datetime.now(tz=UTC)
        self.clock_error = (after - before) / 2
        self.clock_offset = database_now - (before + self.clock_error)


_UNKNOWN = object()


def listen_conninfo() -> str:
    """The connection string of the listener: DATABASE_LISTEN_URL, else the database's own settings."""
    if settings.DATABASE_LISTEN_URL:
        return settings.DATABASE_LISTEN_URL
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params.pop("server_side_binding", None)
    params.pop("prepare_threshold", None)
    return psycopg.conninfo.make_conninfo(**{key: value for key, value in params.items() if value is not None})


def _holds(coupon_id, user_id):
    """Whether the user holds a live claim of the coupon: one probe of the user's claims (the (user_id, ...)
    index, whatever the statistics say: coupons/claim_groups.py, the holders read, says why)."""
    with connection.cursor() as cursor:
        cursor.execute(_holds_sql(), [coupon_id, user_id])
        return cursor.fetchone() is not None


def coupon_changed(*, coupon_id: int, name: str) -> None:
    """Tell every process, at this transaction's commit, to forget what it knows of the coupon.

    Call it inside the transaction of any change that can give a refused
    claim a chance: a unit back in stock, a restock, a window moved, a
    coupon created, an extension's rule changed.
    """
    # This process forgets at once (and so never waits for its own change),
    # and again at the commit: a state read meanwhile predates the change.
    coupon_states.forget(coupon_id=coupon_id, name=name)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # The payload the coupon row's trigger sends (migration 0008): one of two identical ones is delivered.
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, f"{coupon_id}:{name}"])
    else:  # SQLite: the other processes' states last COUPON_STATE_TTL_SQLITE
        transaction.on_commit(lambda: coupon_states.forget(coupon_id=coupon_id, name=name))


def _state_sql():
    coupons = connection.ops.quote_name(Coupon._meta.db_table)
    return f"SELECT id, remaining_amount, starts_at, ends_at FROM {coupons} WHERE name = %s"  # noqa: S608


def _state_and_holder_sql():
    coupons, claims = connection.ops.quote_name(Coupon._meta.db_table), connection.ops.quote_name(Claim._meta.db_table)
    return (
        f"SELECT c.id, c.remaining_amount, c.starts_at, c.ends_at, EXISTS (SELECT 1 FROM {claims} u"  # noqa: S608
        f" WHERE u.user_id = %s AND u.coupon_id + 0 = c.id AND u.status IN ({LIVE_STATUSES_SQL})),"
        f" {database_now_sql()} FROM {coupons} c WHERE c.name = %s"
    )


def _holders_after_sql():
    claims = connection.ops.quote_name(Claim._meta.db_table)
    return (
        f"SELECT id, user_id FROM {claims}"  # noqa: S608 - the table name only
        f" WHERE coupon_id = %s AND status IN ({LIVE_STATUSES_SQL}) AND id > %s ORDER BY id"
    )


def _holds_sql():
    claims = connection.ops.quote_name(Claim._meta.db_table)
    return (
        f"SELECT 1 FROM {claims}"  # noqa: S608 - the table name only
        f" WHERE coupon_id + 0 = %s AND user_id = %s AND status IN ({LIVE_STATUSES_SQL})"
    )


# The process's coupon states (the server forks its workers before any request: each has its own).
coupon_states = CouponStates()
