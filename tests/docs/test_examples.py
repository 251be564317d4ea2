"""Every console example of the README and of docs/, run against the service as deployed, and what each prints
compared with what its page shows: on SQLite (the zero-setup default) and on PostgreSQL, a fresh database per page.

And proof that the comparison fails when a page drifts from the service.
"""

import os
from datetime import UTC, datetime, timedelta

import pytest

from tests.docs import examples, runner
from tests.docs.examples import Bindings, ExampleError, differences, read_blocks, tokenize

ALL_PAGES = examples.pages()


def _has_examples_to_run(page):
    try:
        return any(not block.not_run_reason for block in read_blocks(page))
    except ExampleError:
        return True  # collected, so that its test says what is wrong (test_every_page_reads says it too)


PAGES = [page for page in ALL_PAGES if _has_examples_to_run(page)]


def page_id(page):
    return str(examples.shown_path(page))


@pytest.fixture(scope="session")
def sqlite_databases(tmp_path_factory):
    with runner.SqliteDatabases(tmp_path_factory.mktemp("docs-sqlite")) as databases:
        yield databases


@pytest.fixture(scope="session")
def postgres_databases():
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        pytest.skip("the examples on PostgreSQL need DATABASE_URL=postgres://... (the tests use SQLite here)")
    with runner.PostgresDatabases(url) as databases:
        yield databases


def run_examples(page, databases, scratch):
    with databases.fresh() as database_url:
        return runner.run_page(page, database_url, scratch)


@pytest.mark.parametrize("page", ALL_PAGES, ids=page_id)
def test_every_page_reads(page):
    """Every shell example is a console block, and every one not run says why."""
    read_blocks(page)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_examples_on_sqlite(page, sqlite_databases, tmp_path):
    result = run_examples(page, sqlite_databases, tmp_path)
    assert result.commands_run > 0


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_examples_on_postgresql(page, postgres_databases, tmp_path):
    result = run_examples(page, postgres_databases, tmp_path)
    assert result.commands_run > 0


def test_the_pages_have_examples_to_run():
    blocks, commands, not_run = examples.count()
    assert examples.DOCS / "getting-started.md" in PAGES
    assert blocks > 0 and commands > 0, (blocks, commands)
    assert all(reason for _, reason in not_run)


# A page that drifts from the service fails ----------------------------------------------------------------

GETTING_STARTED = examples.DOCS / "getting-started.md"


@pytest.mark.parametrize(
    "shown, doctored, expected_message",
    [
        ('"remaining_amount":99', '"remaining_amount":98', "the JSON bodies differ"),
        ("HTTP/1.1 409 Conflict", "HTTP/1.1 400 Bad Request", "status line"),
        ('"code":"out_of_stock"}', '"code":"out_of_stock","detail":null}', "the JSON bodies differ"),
        ("Superuser created successfully.", "Superuser created.", "line 1"),
        ("HTTP/1.1 204 No Content", "HTTP/1.1 204 No Content\nRetry-After: 1", "'retry-after' shown but not sent"),
    ],
    ids=["a value", "a status", "a field", "a command's text output", "a header"],
)
def test_a_doctored_example_fails(shown, doctored, expected_message, sqlite_databases, tmp_path):
    text = GETTING_STARTED.read_text()
    assert text.count(shown) == 1, shown
    page = tmp_path / "doctored.md"
    page.write_text(text.replace(shown, doctored))
    (tmp_path / "run").mkdir()

    with pytest.raises(ExampleError, match=expected_message) as failure:
        run_examples(page, sqlite_databases, tmp_path / "run")

    doctored_line = text[: text.index(shown)].count("\n") + 1
    line = int(str(failure.value).split(":", 2)[1])
    assert line < doctored_line, "reported at the command whose output was doctored"


def test_a_command_that_fails_fails_its_example(sqlite_databases, tmp_path):
    page = tmp_path / "failing.md"
    page.write_text("```console\n$ .venv/bin/python manage.py no_such_command\n```\n")
    (tmp_path / "run").mkdir()

    with pytest.raises(ExampleError, match="exited with status 1"):
        run_examples(page, sqlite_databases, tmp_path / "run")


# How outputs are compared -----------------------------------------------------------------------------------

ANSWER = "HTTP/1.1 201 Created\nContent-Type: application/json\n\n{body}"
NOW = datetime.now(UTC).replace(microsecond=123456)


def iso(moment):
    return moment.isoformat().replace("+00:00", "Z")


def answer(body, **headers):
    head = "".join(f"{name.replace('_', '-')}: {value}\n" for name, value in headers.items())
    return f"HTTP/1.1 201 Created\nContent-Type: application/json\n{head}\n{body}"


def test_a_json_body_may_be_laid_out_but_not_reordered():
    sent = '{"user_id":"u1","coupon_name":"P"}'
    assert differences(answer('{\n  "user_id": "u1",\n  "coupon_name": "P"\n}'), answer(sent), Bindings()) == []
    assert differences(answer('{"coupon_name":"P","user_id":"u1"}'), answer(sent), Bindings())
    assert differences(answer('{"user_id":"u1","coupon_name":"P","extra":1}'), answer(sent), Bindings())
    assert differences(
        answer('{"user_id":"u1","coupon_name":"P"}'), answer('{"user_id":"u1","coupon_name":1}'), Bindings()
    )


def test_headers_other_than_transport_ones_must_be_shown():
    sent = "HTTP/1.1 201 Created\r\nServer: granian\r\nDate: today\r\nContent-Type: application/json\r\n\r\n{}"
    assert differences("HTTP/1.1 201 Created\nContent-Type: application/json\n\n{}", sent, Bindings()) == []
    with_header = sent.replace("Date: today", "Date: today\r\nRetry-After: 3")
    assert differences("HTTP/1.1 201 Created\nContent-Type: application/json\n\n{}", with_header, Bindings()) == [
        "header 'retry-after' sent but not shown: '3'"
    ]
    shown = "HTTP/1.1 201 Created\nContent-Type: application/json\nRetry-After: 60\n\n{}"
    assert differences(shown, with_header, Bindings()) == []  # a number of seconds, whichever
    assert differences(shown.replace("json", "xml"), with_header, Bindings())


def test_a_timestamp_of_the_run_may_differ_one_for_one():
    shown = answer('{"a":"2026-11-26T10:45:05.184310Z","b":"2026-11-26T10:45:06.000001Z"}')
    later = NOW + timedelta(seconds=1)
    assert differences(shown, answer(f'{{"a":"{iso(NOW)}","b":"{iso(later)}"}}'), Bindings()) == []
    # One value shown twice must be one value printed twice, and two values two.
    assert differences(shown, answer(f'{{"a":"{iso(NOW)}","b":"{iso(NOW)}"}}'), Bindings())
    bindings = Bindings()
    assert differences(shown, answer(f'{{"a":"{iso(NOW)}","b":"{iso(later)}"}}'), bindings) == []
    assert differences(answer('{"a":"2026-11-26T10:45:05.184310Z"}'), answer(f'{{"a":"{iso(later)}"}}'), bindings), (
        "a value shown earlier stands for the value printed then"
    )
    # The offset's form is part of the contract.
    assert differences(answer('{"a":"2026-11-26T10:45:05Z"}'), answer(f'{{"a":"{NOW.isoformat()}"}}'), Bindings())


def test_a_timestamp_that_is_not_of_the_run_must_be_printed_as_shown():
    shown = answer('{"ends_at":"2025-11-30T23:00:00Z"}')
    assert differences(shown, answer('{"ends_at":"2025-11-30T23:00:00Z"}'), Bindings()) == []
    assert differences(shown, answer('{"ends_at":"2025-12-01T00:00:00Z"}'), Bindings())


def test_a_value_the_page_sends_must_come_back_unchanged_and_a_shown_one_is_sent_as_printed():
    bindings = Bindings()
    starts = iso(NOW + timedelta(hours=1))
    assert (
        bindings.command_to_send(f'curl -d \'{{"starts_at": "{starts}"}}\'')
        == f'curl -d \'{{"starts_at": "{starts}"}}\''
    )
    assert differences(answer(f'{{"starts_at":"{starts}"}}'), answer(f'{{"starts_at":"{iso(NOW)}"}}'), bindings)

    cursor_shown, cursor_printed = (
        "MjAyNi0xMi0wMlQwNzo0NToxMy43OTEwMDArMDA6MDB8Mw",
        "MjAyNy0wMS0wMVQwMDowMDowMCswMDowMHw3",
    )
    assert differences(answer(f'{{"next":"{cursor_shown}"}}'), answer(f'{{"next":"{cursor_printed}"}}'), bindings) == []
    assert bindings.command_to_send(f"curl '...?cursor={cursor_shown}'") == f"curl '...?cursor={cursor_printed}'"


def test_a_claim_code_is_one_value_however_it_is_typed():
    shown, printed = "8B8H-XZCN-RZX7-VE4E", "ABCD-EFGH-JKMN-PQR5"
    bindings = Bindings()
    assert differences(answer(f'{{"code":"{shown}"}}'), answer(f'{{"code":"{printed}"}}'), bindings) == []
    assert (
        bindings.command_to_send(f'curl -d \'{{"code": "8b8hxzcnrzx7ve4e"}}\' .../8b8h-xzcn-rzx7-ve4e .../{shown}')
        == f'curl -d \'{{"code": "abcdefghjkmnpqr5"}}\' .../abcd-efgh-jkmn-pqr5 .../{printed}'
    )
    # The service's spelling is part of the contract, and one code shown twice is one code printed twice.
    assert differences(answer(f'{{"code":"{shown}"}}'), answer(f'{{"code":"{printed.lower()}"}}'), Bindings())
    assert differences(
        answer(f'{{"a":"{shown}","b":"{shown}"}}'), answer(f'{{"a":"{printed}","b":"7K3M-Q9TD-X2HB-R4WN"}}'), Bindings()
    )
    # Not codes: a U (outside Crockford's alphabet), a 16-letter word.
    assert tokenize("7K3M-Q9TD-X2HB-R4WU responsibilities") == [(None, "7K3M-Q9TD-X2HB-R4WU responsibilities")]


def test_long_identifiers_are_compared_exactly():
    shown = 'coupon_claims_total{outcome="already_claimed"} 1.0'
    assert differences(shown, shown, Bindings()) == []
    assert differences(shown, shown.replace("already_claimed", "already_claimedx"), Bindings())


def test_a_webhook_secret_is_a_value_of_the_run():
    shown = answer('{"secret":"whsec_YCAa90UD7jwvYm7752Ofjrmxk+Aini5H5YKrj7TzTrs="}')
    printed = answer('{"secret":"whsec_Jq0/3vWm1xT8bQ2k7Rr9yN4cZp6hLd0eUa5sGf1oKiE="}')
    assert differences(shown, printed, Bindings()) == []
    assert differences(shown, answer('{"secret":"whsec_tooshort="}'), Bindings())
