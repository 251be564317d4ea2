"""Imported codes: a shop's own codes (a point-of-sale run, a partner's, a printed run), handed out by claims.

An import (`import_codes` in coupons/services.py, POST /api/coupons/{name}/codes
and the admin's form) reads CSV (the code in the first field of each line,
an optional header `code`) or JSON lines (`{"code": "..."}` or a JSON string
per line), streamed: READ_BYTES at a time, so 1,000,000 codes never sit in
memory. On PostgreSQL the raw lines go through COPY into a temporary table
of the import's transaction, and SQL does the rest, set-wise: one INSERT ...
SELECT cuts out each line's code, normalises it as lookups normalise it
(coupons/claim_codes.py), leaves out malformed rows and any that is one of
our generated codes (16 characters: a probe of the claims' unique index),
and inserts the others into ImportedCode in line order, in a savepoint; if
the unique index refuses one, or fewer went in than were read, something
was wrong. On SQLite
the rows are read and normalised in Python and staged by batched INSERTs.
Only when something is wrong is that INSERT rolled back (to a savepoint)
and the reporting query run (malformed rows, duplicates in the file, codes
in use, by line), and then the whole transaction is rolled back: nothing of
a failed import is kept.

Imports run one at a time (a transaction-level advisory lock on PostgreSQL,
the write lock on SQLite), so that two imports of overlapping codes never
both pass the check: the first to commit wins every code it had, the other
is refused whole. Before its INSERT an import holds the coupon row FOR KEY
SHARE (hold_coupon: the coupon cannot be deleted under it; claims' FOR NO
KEY UPDATE goes on), and only at the end FOR NO KEY UPDATE, briefly, for
the stock update: claims of the coupon go on during an import.

A claim group of a coupon with imported codes (Coupon.imported_codes) reads
the next unused codes under the coupon row lock (`draw_codes`, a range of
a partial index) and marks those it hands out (`mark_handed_out`) in its
transaction: a code goes to one claim, once, never again (not even after
that claim is released: its code may have been shown).
"""

import codecs
import itertools
import json
import re
from collections.abc import Iterator

from django.conf import settings
from django.db import IntegrityError, connection, transaction

from coupons.claim_codes import (
    CLAIM_CODE_LENGTH,
    MAX_CODE_LENGTH,
    MIN_CODE_LENGTH,
    imported_form,
    reads_as_ours_otherwise,
)
from coupons.models import Claim, Coupon, ImportedCode

# Refused rows reported by line (the count says how many in all).
MAX_REPORTED_ERRORS = 1000
# Bytes read from the stream at a time: an import's memory is a few times this (the text, its escaped copy, the
# bytes COPY sends), whatever its size; larger reads gained nothing measurable.
READ_BYTES = 1 << 18
# Rows sent to SQLite at a time (one executemany).
BATCH_ROWS = 2_000
# Any constant shared by every import: pg_advisory_xact_lock's key.
_IMPORT_LOCK_KEY = 2_025_000_025
# The import's temporary tables: its raw lines (PostgreSQL), its rows (line, text, code).
_RAW, _STAGING = "coupons_import_lines", "coupons_import_staging"
CSV, JSON_LINES = "csv", "jsonl"

MALFORMED, DUPLICATE, IN_USE = "malformed", "duplicate", "in_use"


def _text_chunks(stream) -> Iterator[str]:
    """The stream's text READ_BYTES at a time, each chunk whole lines (without the "\\n" after the last).
    Bytes that are not UTF-8 read as U+FFFD, so that their row is refused as malformed, by line, like any other."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    rest = ""
    while data := stream.read(READ_BYTES):
        text = rest + decoder.decode(data)
        cut = text.rfind("\n")
        if cut < 0:
            rest = text
            continue
        rest = text[cut + 1 :]
        yield text[:cut]
    rest += decoder.decode(b"", final=True)
    if rest:
        yield rest


def _lines(stream) -> Iterator[str]:
    for chunk in _text_chunks(stream):
        yield from chunk.split("\n")


def first_csv_field(line: str) -> str | None:
    """The first field of one CSV line (quoted or not; a trailing "\\r" ignored), None if it has none.

    A row is a line (no code holds a line break), and a quoted field must
    close right before the comma or the line's end. PostgreSQL's imports
    apply the same rule in SQL (_CSV_FIRST_FIELD_SQL: tests check that they
    agree); this one serves SQLite's.
    """
    line = line.rstrip("\r")
    if not line.startswith('"'):
        return line.split(",", 1)[0] if line else None
    quoted = _QUOTED_FIELD.match(line)
    return quoted.group(1).replace('""', '"') if quoted else None


def json_line_code(line: str) -> str | None:
    """The code's text of one JSON line: `{"code": "..."}` or `"..."`; None if it is neither."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if isinstance(value, dict):
        value = value.get("code")
    return value if isinstance(value, str) else None


def _is_header(line: str) -> bool:
    """Whether a CSV's first line is its header (a first field `code`)."""
    field = first_csv_field(line)
    return field is not None and field.strip(" \t").lower() == "code"


def _rows(stream, content_format) -> Iterator[tuple[int, str | None, str | None]]:
    """(line, text, code: None if malformed) per row, normalised in Python (SQLite's imports)."""
    for number, line in enumerate(_lines(stream), start=1):
        if number == 1 and content_format == CSV and _is_header(line):
            continue
        text = first_csv_field(line) if content_format == CSV else json_line_code(line)
        code = imported_form(text) if text is not None else None
        yield number, text, None if code is None or reads_as_ours_otherwise(code) else code


def _literal(text):
    """A constant of ours as an SQL string literal (E'' so that backslashes read alike everywhere)."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


# A quoted first field: no quote inside but doubled ones, then the comma or the line's end (Python's and
# PostgreSQL's regular expressions read it alike).
_QUOTED_FIELD_PATTERN = r'^"((?:[^"]|"")*)"(?:,|$)'
_QUOTED_FIELD = re.compile(_QUOTED_FIELD_PATTERN)
# first_csv_field in SQL, over the raw line `t`.
_CSV_FIRST_FIELD_SQL = (
    "CASE WHEN t = '' THEN NULL"
    f" WHEN left(t, 1) = '\"' THEN replace(substring(t FROM {_literal(_QUOTED_FIELD_PATTERN)}), '\"\"', '\"')"
    " ELSE split_part(t, ',', 1) END"
)
# imported_form, then reads_as_ours_otherwise (coupons/claim_codes.py), in SQL over the text `f` (`b`: without its
# hyphens and spaces): ASCII letters and digits with hyphens or spaces (at most twice the longest code), upper-cased
# without the separators, 4 to 64 characters, and not 16 of Crockford's symbols with an I, L or O (read as one of
# ours, changed); NULL if refused.
# (A bounded repetition such as {1,128} in the pattern made PostgreSQL's regex 10 times slower: lengths apart.)
_IMPORTED_FORM_SQL = (
    f"CASE WHEN f ~ '^[-0-9A-Za-z ]+$' AND length(f) <= {2 * MAX_CODE_LENGTH}"
    f" AND length(b) BETWEEN {MIN_CODE_LENGTH} AND {MAX_CODE_LENGTH}"
    f" AND NOT (length(b) = {CLAIM_CODE_LENGTH} AND f ~* '^[-0-9A-TV-Z ]+$' AND f ~* '[ILO]')"
    " THEN upper(b) END"
)


def stage(*, stream, content_format: str) -> int:
    """Read the stream's rows into the import's temporary table; returns how many rows it holds (a header apart).

    PostgreSQL: the raw lines go in by COPY as they are read (escaped for
    COPY's text format with a few C-speed replaces per chunk), numbered by
    an identity column; cutting out each line's field and normalising it is
    left to SQL, in the INSERT itself (_rows_sql). Python never handles a
    CSV row: parsing and normalising a million rows one by one was 1.25 s of
    CPU and most of the import's own. JSON lines are decoded in Python
    (json.loads per line) and their text sent on the same way. SQLite: the
    same rules in Python (_rows), into a table of (line, text, code) by
    batched INSERTs: slower, and said so (docs/performance.md).
    """
    postgresql = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        # A previous import of this connection's same outer transaction (a test's, an admin action's) may have left
        # them; PostgreSQL drops them when the import's transaction ends, committed or not.
        temp_schema = "pg_temp" if postgresql else "temp"
        for table in (_STAGING, _RAW):
            cursor.execute(f"DROP TABLE IF EXISTS {temp_schema}.{table}")
        if not postgresql:
            cursor.execute(f"CREATE TEMP TABLE {_STAGING} (line integer, text text, code text)")
            rows, staged = _rows(stream, content_format), 0
            while batch := list(itertools.islice(rows, BATCH_ROWS)):
                cursor.executemany(f"INSERT INTO {_STAGING} (line, text, code) VALUES (%s, %s, %s)", batch)  # noqa: S608
                staged += len(batch)
            return staged
        chunks = _text_chunks(stream)
        first = next(chunks, None)
        first_line = 1
        if first is not None and content_format == CSV and _is_header(first.partition("\n")[0]):
            first, first_line = (first.partition("\n")[2] if "\n" in first else None), 2
        cursor.execute(
            f"CREATE TEMP TABLE {_RAW} (line integer GENERATED ALWAYS AS IDENTITY (START WITH {first_line}), t text)"
            " ON COMMIT DROP"
        )
        staged = 0
        with cursor.cursor.copy(f"COPY {_RAW} (t) FROM STDIN") as copy:
            for chunk in itertools.chain([] if first is None else [first], chunks):
                staged += chunk.count("\n") + 1
                copy.write(_copy_text(chunk, content_format))
        return staged


def _copy_text(chunk, content_format) -> str:
    """A chunk of lines in COPY's text format, one field per line: backslashes, tabs and carriage returns escaped,
    NUL (which a text column cannot hold) read as U+FFFD; for JSON lines, each line's text, or \\N (NULL) if it
    has none."""
    if content_format == CSV:
        return _escaped(chunk) + "\n"
    codes = map(json_line_code, chunk.split("\n"))
    return "".join("\\N\n" if code is None else _escaped(code).replace("\n", "\\n") + "\n" for code in codes)


def _escaped(text):
    for plain, escaped in _COPY_ESCAPES:
        if plain in text:
            text = text.replace(plain, escaped)
    return text


# The backslash first: the others' escapes are backslashes.
_COPY_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\r", "\\r"), ("\x00", "\ufffd"))


def _rows_sql(content_format):
    """The staged rows as (line, text, code: NULL if malformed), in SQL (only table names and our SQL in it)."""
    if connection.vendor != "postgresql":
        return f"SELECT line, text, code FROM {_STAGING}"  # noqa: S608
    # Each step a subquery fenced by OFFSET 0: flattened, PostgreSQL repeated the field's expression wherever the
    # normalising one names `f` (six times), and the whole took 5.5 s per million rows instead of 2.1; the last
    # fence keeps a filter on `code` from computing it twice.
    fields = f"SELECT line, t AS f FROM {_RAW}"  # noqa: S608
    if content_format == CSV:
        lines = f"SELECT line, rtrim(t, E'\\r') AS t FROM {_RAW} OFFSET 0"  # noqa: S608
        fields = f"SELECT line, {_CSV_FIRST_FIELD_SQL} AS f FROM ({lines}) l"  # noqa: S608
    bare = f"SELECT line, f, translate(f, '- ', '') AS b FROM ({fields} OFFSET 0) r OFFSET 0"  # noqa: S608
    return f"SELECT line, f AS text, {_IMPORTED_FORM_SQL} AS code FROM ({bare}) s OFFSET 0"  # noqa: S608


def lock_imports() -> None:
    """One import at a time, until the transaction ends (SQLite: its write lock, taken by BEGIN IMMEDIATE).

    An import's transaction outlasts the service's timeouts, which are set for
    claims (couponsite/settings.py): it waits for the client's upload between
    rows, for another import's lock, and inserts a million rows in one
    statement. Its own, for this transaction only (SET LOCAL), from
    CODE_IMPORT_TIMEOUT (statements, locks) and CODE_IMPORT_IDLE_TIMEOUT (a
    client that stops sending ends the import, and frees its locks). And the
    memory to sort its rows by line in one go (a million: 87 MB; with the
    default 4 MB they were merged on disk, a second slower).
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            timeout, idle = settings.CODE_IMPORT_TIMEOUT * 1000, settings.CODE_IMPORT_IDLE_TIMEOUT * 1000
            cursor.execute(
                f"SET LOCAL statement_timeout = {int(timeout)}; SET LOCAL lock_timeout = {int(timeout)};"
                f" SET LOCAL idle_in_transaction_session_timeout = {int(idle)}; SET LOCAL work_mem = '256MB'"
            )
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_IMPORT_LOCK_KEY])


def hold_coupon(*, name: str) -> int | None:
    """The coupon's id, its row held FOR KEY SHARE until the import commits (None if it is gone), as the foreign
    key's checks of the inserted codes will hold it: a deletion (FOR UPDATE) waits from here on, claims' FOR NO
    KEY UPDATE goes on beside it. SQLite: the import holds the write lock already."""
    coupons = connection.ops.quote_name(Coupon._meta.db_table)
    key_share = " FOR KEY SHARE" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {coupons} WHERE name = %s{key_share}", [name])  # noqa: S608 - only the table
        row = cursor.fetchone()
    return row[0] if row else None


def insert_staged(*, coupon_id: int, content_format: str, rows: int) -> bool:
    """Insert the staged rows' codes as the coupon's, in line order: all `rows` of them (True), or none (False: one
    was malformed, a duplicate in the file or of a code imported before, or a claim's code).

    One statement does it all (normalising PostgreSQL's raw lines too): an
    import that is right, the usual one, costs one pass over its rows. Only
    a 16-character code can be one of our generated ones: only those probe
    the claims' unique code index. A duplicate is left to the unique index
    to refuse, in a savepoint of its own (ON CONFLICT DO NOTHING, which let
    the count tell, cost 13% more per row); with our rows out again, the
    report (staged_errors) sees the codes in use as they were before.
    """
    codes = connection.ops.quote_name(ImportedCode._meta.db_table)
    claims = connection.ops.quote_name(Claim._meta.db_table)
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {codes} (coupon_id, code, handed_out)"  # noqa: S608 - only table names and our SQL
                f" SELECT %s, code, FALSE FROM ({_rows_sql(content_format)}) s WHERE code IS NOT NULL"
                f" AND NOT (length(code) = %s AND EXISTS (SELECT 1 FROM {claims} c WHERE c.code = s.code))"
                " ORDER BY line",
                [coupon_id, CLAIM_CODE_LENGTH],
            )
            if cursor.rowcount == rows:
                return True
            transaction.set_rollback(True)
    except IntegrityError:
        pass
    return False


def staged_errors(*, content_format: str, room: int) -> tuple[list, int]:
    """The staged rows that are malformed, duplicates of an earlier line, or whose code is in use (imported before,
    or a claim's), by line (up to `room` of them), and how many in all. Run with the import's own INSERT rolled
    back: only for an import that is refused."""
    codes = connection.ops.quote_name(ImportedCode._meta.db_table)
    claims = connection.ops.quote_name(Claim._meta.db_table)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":  # its rows once, for the queries below
            cursor.execute(f"CREATE TEMP TABLE {_STAGING} ON COMMIT DROP AS {_rows_sql(content_format)}")
        refused_sql = (
            f"SELECT s.line, s.code,"  # noqa: S608 - only table names
            f" CASE WHEN s.line > f.first_line THEN '{DUPLICATE}' ELSE '{IN_USE}' END"
            f" FROM {_STAGING} s JOIN (SELECT code, MIN(line) AS first_line FROM {_STAGING} GROUP BY code) f"
            " ON f.code = s.code"
            " WHERE s.line > f.first_line"
            f" OR EXISTS (SELECT 1 FROM {codes} i WHERE i.code = s.code)"
            f" OR EXISTS (SELECT 1 FROM {claims} c WHERE c.code = s.code)"
            f" UNION ALL SELECT line, text, '{MALFORMED}' FROM {_STAGING} WHERE code IS NULL"
        )
        cursor.execute(f"SELECT COUNT(*) FROM ({refused_sql}) n")  # noqa: S608
        total = cursor.fetchone()[0]
        cursor.execute(f"{refused_sql} ORDER BY 1 LIMIT %s", [room])
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
