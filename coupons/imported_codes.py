"""Imported codes: a shop's own codes (a point-of-sale run, a partner's, a printed run), handed out by claims.

An import (`import_codes` in coupons/services.py, POST /api/coupons/{name}/codes
and the admin's form) reads CSV (the code in the first column, an optional
header `code`) or JSON lines (`{"code": "..."}` or a JSON string per line),
streamed: each row is normalised as lookups normalise it
(coupons/claim_codes.py) and sent on at once, so 1,000,000 codes never sit in
memory. On PostgreSQL they go through COPY into a staging table of the
import's transaction; on SQLite through batched INSERTs. The rest is
set-wise, in SQL: one INSERT ... SELECT ... ON CONFLICT DO NOTHING into
ImportedCode, whose count tells whether any row was a duplicate (in the
file, or of a code imported before); a probe of the claims' unique code
index for rows that could be one of our generated codes (16 characters).
Only when something is wrong is that INSERT rolled back (to a savepoint)
and the reporting query run (duplicates in the file, codes in use, by
line; malformed rows are found as they are read), and then the whole
transaction is rolled back: nothing of a failed import is kept.

Imports run one at a time (a transaction-level advisory lock on PostgreSQL,
the write lock on SQLite), so that two imports of overlapping codes never
both pass the check: the first to commit wins every code it had, the other
is refused whole. The coupon row is locked only at the end, for the stock
update: claims of the coupon go on during an import.

A claim group of a coupon with imported codes (Coupon.imported_codes) reads
the next unused codes under the coupon row lock (`draw_codes`, a range of
a partial index) and marks those it hands out (`mark_handed_out`) in its
transaction: a code goes to one claim, once, never again (not even after
that claim is released: its code may have been shown).
"""

import codecs
import csv
import json
from collections.abc import Iterable, Iterator

from django.conf import settings
from django.db import connection

from coupons.claim_codes import CLAIM_CODE_LENGTH, imported_form, reads_as_ours_otherwise
from coupons.models import Claim, ImportedCode

# Refused rows reported by line (the count says how many in all).
MAX_REPORTED_ERRORS = 1000
# Rows sent to the database at a time (one COPY write, or one executemany on SQLite).
BATCH_ROWS = 10_000
# Any constant shared by every import: pg_advisory_xact_lock's key.
_IMPORT_LOCK_KEY = 2_025_000_025
_STAGING = "coupons_import_staging"

MALFORMED, DUPLICATE, IN_USE = "malformed", "duplicate", "in_use"


def _lines(stream) -> Iterator[str]:
    """The UTF-8 text lines of a byte stream, read a megabyte at a time (codecs' readline cost a third of an
    import's CPU)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    rest = ""
    while chunk := stream.read(1 << 20):
        lines = (rest + decoder.decode(chunk)).split("\n")
        rest = lines.pop()
        for line in lines:
            yield line + "\n"
    rest += decoder.decode(b"", final=True)
    if rest:
        yield rest


def read_csv(stream) -> Iterator[tuple[int, str | None]]:
    """(line number, the code's text) per row of a CSV byte stream (the first column; a header `code` skipped);
    None for a row with no first column."""
    reader = csv.reader(_lines(stream))
    for row in reader:
        if reader.line_num == 1 and row and row[0].strip().lower() == "code":
            continue
        yield reader.line_num, (row[0] if row else None)


def read_json_lines(stream) -> Iterator[tuple[int, str | None]]:
    """(line number, the code's text) per line of a JSON lines byte stream: `{"code": "..."}` or `"..."`; None for a
    line that is neither."""
    for number, line in enumerate(_lines(stream), start=1):
        try:
            value = json.loads(line)
        except ValueError:
            yield number, None
            continue
        if isinstance(value, dict):
            value = value.get("code")
        yield number, value if isinstance(value, str) else None


def stage(rows: Iterable[tuple[int, str | None]], errors: list) -> tuple[int, int]:
    """Normalise `rows` into the import's staging table; malformed ones are appended to `errors` (up to
    MAX_REPORTED_ERRORS). Returns (rows staged, rows malformed)."""
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        # A previous import of this connection's same outer transaction (a test's, an admin action's) may have left it.
        temp_schema = "pg_temp" if connection.vendor == "postgresql" else "temp"
        cursor.execute(f"DROP TABLE IF EXISTS {temp_schema}.{quote(_STAGING)}")
        # PostgreSQL drops it at the end of the import's transaction, committed or not.
        on_commit = " ON COMMIT DROP" if connection.vendor == "postgresql" else ""
        cursor.execute(f"CREATE TEMP TABLE {quote(_STAGING)} (line integer, code text){on_commit}")
    staged = malformed = 0
    batch = []
    for line, text in rows:
        code = imported_form(text) if isinstance(text, str) else None
        if code is None or reads_as_ours_otherwise(code):
            malformed += 1
            if len(errors) < MAX_REPORTED_ERRORS:
                errors.append({"line": line, "reason": MALFORMED, "code": text})
            continue
        batch.append((line, code))
        if len(batch) >= BATCH_ROWS:
            staged += _send(batch)
            batch = []
    if batch:
        staged += _send(batch)
    return staged, malformed


def _send(batch):
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # COPY's text format: a normalised code is letters and digits only, nothing to escape.
            with cursor.cursor.copy(f"COPY {_STAGING} (line, code) FROM STDIN") as copy:
                copy.write("".join(f"{line}\t{code}\n" for line, code in batch))
        else:
            cursor.executemany(f"INSERT INTO {_STAGING} (line, code) VALUES (%s, %s)", batch)  # noqa: S608
    return len(batch)


def lock_imports() -> None:
    """One import at a time, until the transaction ends (SQLite: its write lock, taken by BEGIN IMMEDIATE).

    An import's transaction outlasts the service's timeouts, which are set for
    claims (couponsite/settings.py): it waits for the client's upload between
    rows, for another import's lock, and inserts a million rows in one
    statement. Its own, for this transaction only (SET LOCAL), from
    CODE_IMPORT_TIMEOUT (statements, locks) and CODE_IMPORT_IDLE_TIMEOUT (a
    client that stops sending ends the import, and frees its locks).
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            timeout, idle = settings.CODE_IMPORT_TIMEOUT * 1000, settings.CODE_IMPORT_IDLE_TIMEOUT * 1000
            cursor.execute(
                f"SET LOCAL statement_timeout = {int(timeout)}; SET LOCAL lock_timeout = {int(timeout)};"
                f" SET LOCAL idle_in_transaction_session_timeout = {int(idle)}"
            )
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_IMPORT_LOCK_KEY])


def insert_staged(*, coupon_id: int) -> int:
    """Insert the staged codes as the coupon's, in line order, skipping any already imported (or twice in the file);
    returns how many were inserted."""
    codes = connection.ops.quote_name(ImportedCode._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {codes} (coupon_id, code, handed_out)"  # noqa: S608 - only table names
            f" SELECT %s, code, FALSE FROM {_STAGING} WHERE TRUE ORDER BY line ON CONFLICT (code) DO NOTHING",
            [coupon_id],
        )
        return cursor.rowcount


def any_generated_in_use() -> bool:
    """Whether a staged code is a claim's code already (only a 16-character one can be one of ours)."""
    claims = connection.ops.quote_name(Claim._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT 1 FROM {_STAGING} s WHERE length(s.code) = %s"  # noqa: S608
            f" AND EXISTS (SELECT 1 FROM {claims} c WHERE c.code = s.code) LIMIT 1",
            [CLAIM_CODE_LENGTH],
        )
        return cursor.fetchone() is not None


def staged_errors(*, room: int) -> tuple[list, int]:
    """The staged rows that are duplicates of an earlier line, or whose code is in use (imported before, or a
    claim's), by line (up to `room` of them), and how many in all. Run with the import's own INSERT rolled back."""
    codes = connection.ops.quote_name(ImportedCode._meta.db_table)
    claims = connection.ops.quote_name(Claim._meta.db_table)
    refused_sql = (
        f"SELECT s.line, s.code,"  # noqa: S608 - only table names
        f" CASE WHEN s.line > f.first_line THEN '{DUPLICATE}' ELSE '{IN_USE}' END"
        f" FROM {_STAGING} s JOIN (SELECT code, MIN(line) AS first_line FROM {_STAGING} GROUP BY code) f"
        " ON f.code = s.code"
        " WHERE s.line > f.first_line"
        f" OR EXISTS (SELECT 1 FROM {codes} i WHERE i.code = s.code)"
        f" OR EXISTS (SELECT 1 FROM {claims} c WHERE c.code = s.code)"
    )
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM ({refused_sql}) n")  # noqa: S608
        total = cursor.fetchone()[0]
        cursor.execute(f"{refused_sql} ORDER BY s.line LIMIT %s", [room])
        rows = [{"line": line, "reason": reason, "code": code} for line, code, reason in cursor.fetchall()]
    return rows, total


def unused_count(*, coupon_id: int) -> int:
    return ImportedCode.objects.filter(coupon_id=coupon_id, handed_out=False).count()


# The claim path's part (coupons/claim_groups.py): under the coupon row lock.


def draw_codes(*, coupon_id: int, count: int) -> list[tuple[int, str]]:
    """Up to `count` of the coupon's unused codes, in import order: (id, code). Under the coupon row lock."""
    with connection.cursor() as cursor:
        cursor.execute(_DRAW_SQL, [coupon_id, count])
        return cursor.fetchall()


def mark_handed_out(*, code_ids: list[int]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {ImportedCode._meta.db_table} SET handed_out = TRUE"  # noqa: S608 - only the table
            f" WHERE id IN ({', '.join(['%s'] * len(code_ids))})",
            code_ids,
        )


_DRAW_SQL = (
    f"SELECT id, code FROM {ImportedCode._meta.db_table}"  # noqa: S608 - only the table
    " WHERE coupon_id = %s AND NOT handed_out ORDER BY id LIMIT %s"
)
