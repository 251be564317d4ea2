"""Database statements per answer: pg_stat_statements deltas around a measurement (bench/flashsale.py).

The private cluster preloads pg_stat_statements (SERVER_SETTINGS); on a
DATABASE_URL server without it the figures are left out. A snapshot reads
every entry of the benchmark's database (top-level statements only, as the
clients sent them: a function's inner statements are not counted); a delta
of two snapshots sorts them by the first word of the normalized text:

- statements: everything else (SELECT, INSERT, UPDATE, DELETE, WITH, LISTEN,
  NOTIFY, COPY, ...): what "statements per answer" counts;
- transaction control: BEGIN/START, COMMIT/END, ROLLBACK, SAVEPOINT, RELEASE,
  counted apart (a round trip each, but not work for the planner);
- session noise: SET, RESET, SHOW, DISCARD, DEALLOCATE: left out;
- foreign-key checks (`SELECT 1 FROM ONLY "public"."coupons_coupon" x ... FOR KEY SHARE OF x`, which
  PostgreSQL's RI triggers run after an INSERT and pg_stat_statements records as top-level statements):
  counted apart, not as statements (no client sends them; their cost is in the database's CPU).

The snapshot's own query (it names pg_stat_statements) is left out too.
pg_stat_statements under-records BEGIN/COMMIT here (about 0.2 per pgbench
transaction, which sends 2), so transaction control is kept in the JSON
only, as recorded, and not printed.
`total_exec_time` is the executor's time summed over backends (not the
planner's, not the network's, not the time spent waiting for a lock only
partly: a lock wait inside the executor counts), so the benchmark reports it
beside the database processes' CPU (/proc utime + stime), the real cost.
"""

import re
from dataclasses import dataclass, field

SERVER_SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    # Room for every distinct statement of a run (IN lists of each length are distinct entries):
    # an evicted entry would lose its counts (checked: pg_stat_statements_info.dealloc).
    "pg_stat_statements.max": 20000,
    "pg_stat_statements.track": "top",
}
TRANSACTION_CONTROL = {"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE", "ABORT"}
SESSION_NOISE = {"SET", "RESET", "SHOW", "DISCARD", "DEALLOCATE"}
SNAPSHOT = """
SELECT userid, queryid, toplevel, query, calls, total_exec_time
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


FOREIGN_KEY_CHECK = re.compile(r'\s*SELECT \$?\d+ FROM ONLY "[^"]+"\."[^"]+" x WHERE .* FOR KEY SHARE OF x\s*$', re.S)


def kind(query):
    """What a normalized statement's text is: "statement", "transaction control", "foreign-key check" or
    "session"."""
    if FOREIGN_KEY_CHECK.match(query):
        return "foreign-key check"
    match = re.match(r"\s*(\w+)", query)
    word = match.group(1).upper() if match else ""
    if word in TRANSACTION_CONTROL:
        return "transaction control"
    if word in SESSION_NOISE:
        return "session"
    return "statement"


@dataclass
class StatementDelta:
    statements: int = 0
    transaction_control: int = 0
    foreign_key_checks: int = 0
    exec_ms: float = 0.0  # total_exec_time of the statements (transaction control included: it is ~0)
    evicted: int = 0  # entries pg_stat_statements deallocated meanwhile: the counts are then a lower bound
    top: list = field(default_factory=list)  # [(calls, exec ms, normalized text)], all, most called first


class StatementCounter:
    """Snapshots of pg_stat_statements for one database, through a connection of its own."""

    def __init__(self, url):
        import psycopg

        self.connection = None
        try:
            connection = psycopg.connect(url, autocommit=True)
            connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            connection.execute("SELECT 1 FROM pg_stat_statements LIMIT 1")
        except psycopg.Error as error:
            print(f"(no database statement counts: {error.__class__.__name__}: {str(error).strip()})")
            return
        self.connection = connection

    @property
    def available(self):
        return self.connection is not None

    def snapshot(self):
        if self.connection is None:
            return None
        rows = self.connection.execute(SNAPSHOT).fetchall()
        (evicted,) = self.connection.execute("SELECT dealloc FROM pg_stat_statements_info").fetchone()
        entries = {
            (userid, queryid, toplevel): (query, calls, exec_ms)
            for userid, queryid, toplevel, query, calls, exec_ms in rows
            if "pg_stat_statements" not in query
        }
        return entries, evicted

    @staticmethod
    def delta(before, after):
        if before is None or after is None:
            return None
        (entries_before, evicted_before), (entries_after, evicted_after) = before, after
        result = StatementDelta(evicted=evicted_after - evicted_before)
        changed = []
        for key, (query, calls, exec_ms) in entries_after.items():
            _, calls_before, exec_ms_before = entries_before.get(key, (query, 0, 0.0))
            calls, exec_ms = calls - calls_before, exec_ms - exec_ms_before
            if calls <= 0:
                continue
            category = kind(query)
            if category == "session":
                continue
            if category == "transaction control":
                result.transaction_control += calls
            elif category == "foreign-key check":
                result.foreign_key_checks += calls
            else:
                result.statements += calls
                changed.append((calls, exec_ms, " ".join(query.split())))
            result.exec_ms += exec_ms
        result.top = sorted(changed, reverse=True)
        return result

    def close(self):
        if self.connection is not None:
            self.connection.close()
