"""Django's PostgreSQL backend, made honest about what a failover does to a connection.

Three changes, each for a way a primary's loss used to reach clients wrongly:

1. A connection health check that costs no round trip. A database restart
   or a Patroni failover (HAProxy closes every session to a node that stops
   being the primary) breaks every idle persistent connection. Without a
   check, each of them fails one request with a 503 before Django replaces
   it: long after the database is back, a crowd meets the threads that were
   idle through the outage. Django's own check (CONN_HEALTH_CHECKS) sends
   `SELECT 1` before reuse, a round trip on every request that cost 5-7% of
   the throughput of `GET /health` and of a sold-out refusal
   (docs/architecture.md, Serving). An idle connection receives nothing unless the server or
   a proxy is hanging up on it (a FATAL message, then the end of the
   stream), so asking the kernel whether anything has arrived answers the
   same question without a round trip. A false alarm (an unsolicited
   notice; the service LISTENs to nothing) costs one reconnection. Neither
   check sees a peer that vanished without closing (a cable cut with no
   proxy in between): the first query then waits for TCP.

2. Errors that mean "this database cannot take writes now" are
   OperationalErrors, answered 503 (`unavailable`) like a lost connection,
   never a 500. PostgreSQL files them under "invalid transaction state",
   which psycopg and Django call InternalError: a write on a primary that
   Patroni demoted (or on a standby) is "read-only SQL transaction"
   (25006), a session PostgreSQL ended for idling in a transaction (25P03,
   see DATABASE_IDLE_IN_TRANSACTION_TIMEOUT) has lost its connection.

3. A COMMIT that returns with a warning is not confirmed. When the wait of
   a COMMIT for the synchronous standby is cancelled (pg_cancel_backend()
   on a session that hangs while the standby is gone, as an operator
   might; the statement timeout does not reach a COMMIT's wait), PostgreSQL
   reports success with a WARNING ("canceling wait for
   synchronous replication... The transaction has already committed
   locally, but might not have been replicated to the standby"): the claim
   is on this node only, and the node may be about to be rewound away. Such
   a COMMIT raises an OperationalError (a 503): the client retries, and
   hears 409 if the claim survived, or gets a fresh chance if it did not.
   Never a 201 for a claim that a failover can lose. No other COMMIT
   warns: any WARNING during a COMMIT counts (the message itself is
   translated when lc_messages is).
"""

import select
import threading

import psycopg
from django.db import OperationalError
from django.db.backends.postgresql import base
from django.db.utils import DatabaseErrorWrapper
from django.utils.functional import cached_property
from psycopg.pq import TransactionStatus

# SQLSTATEs outside psycopg's OperationalError that mean "not writable now".
NOT_WRITABLE_NOW = {
    "25006",  # read_only_sql_transaction: a demoted primary, a standby, default_transaction_read_only
    "25P03",  # idle_in_transaction_session_timeout: the server ended the session
}

# The warnings PostgreSQL sent during this thread's COMMIT in progress (None: no COMMIT in progress).
# Notices are delivered synchronously, in the thread that runs the statement.
_commit_in_progress = threading.local()


def _record_commit_warning(diagnostic):
    warnings = getattr(_commit_in_progress, "warnings", None)
    if warnings is not None and diagnostic.severity_nonlocalized == "WARNING":
        warnings.append(diagnostic.message_primary)


class UnavailabilityErrorWrapper(DatabaseErrorWrapper):
    """Django's error translation, with the NOT_WRITABLE_NOW errors raised as OperationalError."""

    def __exit__(self, exc_type, exc_value, traceback):
        if (
            exc_type is not None
            and issubclass(exc_type, psycopg.Error)
            and not issubclass(exc_type, psycopg.OperationalError)
            and exc_value.sqlstate in NOT_WRITABLE_NOW
        ):
            unavailable = psycopg.OperationalError(*exc_value.args)
            unavailable.__cause__ = exc_value
            return super().__exit__(psycopg.OperationalError, unavailable, traceback)
        return super().__exit__(exc_type, exc_value, traceback)


class DatabaseWrapper(base.DatabaseWrapper):
    @cached_property
    def wrap_database_errors(self):
        return UnavailabilityErrorWrapper(self)

    def _configure_connection(self, connection):
        # Called once for every new connection, pooled or not.
        connection.add_notice_handler(_record_commit_warning)
        return super()._configure_connection(connection)

    def _commit(self):
        _commit_in_progress.warnings = []
        try:
            super()._commit()
            warnings = _commit_in_progress.warnings
        finally:
            _commit_in_progress.warnings = None
        if warnings:
            raise OperationalError(f"COMMIT not confirmed by the synchronous standby: {'; '.join(warnings)}")

    def is_usable(self):
        if self.connection is None or self.connection.info.transaction_status != TransactionStatus.IDLE:
            return False  # broken (UNKNOWN), or left inside a transaction
        poller = select.poll()
        poller.register(self.connection.fileno(), select.POLLIN)
        return not poller.poll(0)
