"""Django's PostgreSQL backend, with a connection health check that costs no round trip.

A database restart or a Patroni failover (HAProxy closes every session to a
node that stops being the primary) breaks every idle persistent connection.
Without a check, each of them fails one request with a 503 before Django
replaces it: long after the database is back, a crowd meets the threads that
were idle through the outage. Django's own check (CONN_HEALTH_CHECKS) sends
`SELECT 1` before reuse, a round trip on every request that cost 5-7% of the
throughput of `GET /health` and of a sold-out refusal (docs/architecture.md, Serving).

An idle connection receives nothing unless the server or a proxy is hanging
up on it (a FATAL message, then the end of the stream), so asking the kernel
whether anything has arrived answers the same question without a round trip.
A false alarm (an unsolicited notice; the service LISTENs to nothing) costs
one reconnection. Neither check sees a peer that vanished without closing
(a cable cut with no proxy in between): the first query then waits for TCP.
"""

import select

from django.db.backends.postgresql import base
from psycopg.pq import TransactionStatus


class DatabaseWrapper(base.DatabaseWrapper):
    def is_usable(self):
        if self.connection is None or self.connection.info.transaction_status != TransactionStatus.IDLE:
            return False  # broken (UNKNOWN), or left inside a transaction
        poller = select.poll()
        poller.register(self.connection.fileno(), select.POLLIN)
        return not poller.poll(0)
