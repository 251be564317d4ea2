"""The documentation's shell examples: reading them from the pages, and comparing what they print with what
the pages show (tests/docs/runner.py runs them).

The convention (docs/guarantees.md, "Documentation examples"): a fenced
block of language `console` holds commands, each on a line starting with
`$ ` (continued on the next line after a trailing `\\`, or on lines
starting with `> ` as bash's PS2 shows them), and after each command the
output it prints, until the next command.

Outputs are compared strictly, except for values that differ on every run:
timestamps of the run, UUIDs, API keys, DRF tokens, webhook signing secrets,
admission tokens, a draw's seed, commitment and hashes (64 hex digits),
pagination cursors, claim codes, the wait in DRF's 429 message. Those are matched by kind, and each
value shown in a page must stand for one actual value throughout the page
(and a value the page itself sends must come back unchanged), so a later
command that uses a value shown earlier (a cursor, a key, a code) is sent the
actual one. A claim code is one value however a person types it: shown as
the service prints it (`8B8H-XZCN-RZX7-VE4E`) and sent later in lower case
or without hyphens (`8b8hxzcnrzx7ve4e`), it is sent as the actual code
spelled that way.

HTTP answers (`curl -i`) are compared as status line, headers and body: the
headers in HIDDEN_HEADERS may be left out of the page (every other header
must be shown, with its value), `Retry-After` is compared as "a number of
seconds", and a JSON body as JSON (so a page may pretty-print it; keys,
their order, types and values must match).

An HTML comment right before a block changes how it is run:

    <!-- example: not run: <why> -->           the block is not run (the reason is required)
    <!-- example: server NAME=value ... -->    restart the server with these settings, for this
                                               block and the page's later ones (same database)
"""

import binascii
import json
import re
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.helpers import ROOT

DOCS = ROOT / "docs"
RUNNABLE_LANGUAGE = "console"
# Shell examples must be `console` blocks, run or marked as not run: none of these may hide one.
SHELL_LANGUAGES = {"sh", "bash", "shell", "zsh", "shell-session", "shellsession", "http", "curl"}
PROMPT = "$ "
CONTINUATION = "> "  # bash's PS2: the next line of a command that goes on (a loop)
DIRECTIVE = re.compile(r"^\s*<!--\s*example:\s*(?P<body>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>.*)$")
# Transport and hardening headers every answer carries, which a page need not show (it may, and
# then they are compared). Any other header of an answer must be shown.
HIDDEN_HEADERS = {
    "allow",  # DRF sends it with every answer
    "date",
    "server",
    "transfer-encoding",
    "connection",
    "content-length",
    "vary",
    "x-frame-options",
    "x-content-type-options",
    "referrer-policy",
    "cross-origin-opener-policy",
}


class ExampleError(AssertionError):
    """A page's example is malformed, failed to run, or its output differs from what the page shows."""


# Values that differ on every run --------------------------------------------------------------


def _is_cursor(text):
    # A cursor is URL-safe base64 of "<ISO timestamp>|<claim id>" (coupons/api/cursors.py). Recognised by
    # decoding it, so that long identifiers (metric names, user ids) stay literal and compared exactly.
    from rest_framework.exceptions import ValidationError

    from coupons.api.cursors import decode_cursor

    try:
        decode_cursor(text)
    except (ValidationError, binascii.Error):
        return False
    return True


def _timestamp_shape(text):
    # The offset's form (Z or ±hh:mm) is part of the contract; the fraction may be absent when it is zero.
    return text[10], re.search(r"(Z|[+-]\d\d:\d\d)$", text).group(1)


def _is_about_now(text):
    # A timestamp of the run (a claim's time, a sale opening in an hour) varies; any other (a date the page
    # sends, or one the service derives from it) must be printed as the page shows it.
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return abs(moment - datetime.now(UTC)) < timedelta(days=2)


def _claim_code(text):
    # The bare code a spelling stands for, read as the service reads it (coupons/claim_codes.py).
    from coupons.claim_codes import normalise_code

    return normalise_code(text)


def _spelled_like(code, shown):
    """The bare `code` written as `shown` is: grouped with hyphens or not, in its case."""
    from coupons.claim_codes import format_code

    spelled = format_code(code) if "-" in shown else code
    return spelled.lower() if shown.islower() else spelled


def _code_spelling(text):
    return "-" in text, text.islower()


def _has_a_digit(text):
    # A bare 16-letter word is not taken for a code: a page's bare codes are written with a digit in them.
    return "-" in text or any(character.isdigit() for character in text)


def _itself(text):
    return text


def _as_is(actual, shown):
    return actual


@dataclass(frozen=True)
class TokenKind:
    name: str
    pattern: str
    accepts: object = None  # text -> bool, for candidates the pattern alone cannot tell apart
    shape: object = None  # text -> comparable: a documented value and an actual one must agree on it
    varies: object = None  # actual text -> bool: whether this value may differ from the one shown (default: yes)
    # For a value with several spellings: the value a spelling stands for (bindings are between those), and
    # (actual value, shown spelling) -> the actual value spelled the same way, to send.
    canonical: object = _itself
    spell: object = _as_is


# A claim code, grouped (XXXX-XXXX-XXXX-XXXX) or bare, in upper or lower case: Crockford's base32.
CLAIM_CODE_SPELLINGS = "|".join(
    rf"{symbol}{{4}}(?:-{symbol}{{4}}){{3}}|{symbol}{{16}}" for symbol in ("[0-9A-HJKMNP-TV-Z]", "[0-9a-hjkmnp-tv-z]")
)

# Order matters: at one position, the first kind that matches wins.
TOKEN_KINDS = (
    TokenKind(
        "timestamp",
        r"\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:\d\d)",
        shape=_timestamp_shape,
        varies=_is_about_now,
    ),
    # An admission token (admission/tokens.py): a JWS, three base64url parts, header and payload JSON objects.
    TokenKind("admission token", r"\beyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"),
    # A draw's seed, commitment or entry-list hash (admission/draws.py): 256 bits in hex.
    TokenKind("digest", r"\b[0-9a-f]{64}\b"),
    TokenKind("uuid", r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"),
    TokenKind("API key", r"\b[A-Za-z0-9]{8}\.[A-Za-z0-9]{32}\b"),  # coupons/api_keys.py KEY_FORMAT
    TokenKind("token", r"\b[0-9a-f]{40}\b"),  # DRF's authtoken
    TokenKind("webhook secret", r"\bwhsec_[A-Za-z0-9+/]{43}="),  # coupons/webhooks.py: base64 of 32 random bytes
    # Before cursors, whose pattern a grouped code also fits: as the service prints it (XXXX-XXXX-XXXX-XXXX, in
    # Crockford's base32), or as a person may type it back, in lower case or without hyphens.
    TokenKind(
        "claim code",
        rf"(?<![A-Za-z0-9_-])(?:{CLAIM_CODE_SPELLINGS})(?![A-Za-z0-9_-])",
        accepts=_has_a_digit,
        shape=_code_spelling,
        canonical=_claim_code,
        spell=_spelled_like,
    ),
    TokenKind("cursor", r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{16,}(?![A-Za-z0-9_-])", accepts=_is_cursor),
    # DRF's message of a 429 states the wait, which is Retry-After's.
    TokenKind("wait", r"(?<=Expected available in )\d+(?= seconds?\.)"),
)
TOKENS = re.compile("|".join(f"(?P<t{index}>{kind.pattern})" for index, kind in enumerate(TOKEN_KINDS)))


def tokenize(text):
    """`text` as a list of (kind, text): kind None for literal text, else the TokenKind of a varying value."""
    parts, position = [], 0
    for match in TOKENS.finditer(text):
        kind = TOKEN_KINDS[int(match.lastgroup[1:])]
        if kind.accepts is not None and not kind.accepts(match.group()):
            continue
        if match.start() > position:
            parts.append((None, text[position : match.start()]))
        parts.append((kind, match.group()))
        position = match.end()
    if position < len(text):
        parts.append((None, text[position:]))
    return _merge_literals(parts)


def _merge_literals(parts):
    merged = []
    for kind, text in parts:
        if kind is None and merged and merged[-1][0] is None:
            merged[-1] = (None, merged[-1][1] + text)
        else:
            merged.append((kind, text))
    return merged


@dataclass
class Bindings:
    """Which actual value each varying value shown in a page stands for: one to one, for the whole page."""

    actual_of: dict = field(default_factory=dict)
    shown_of: dict = field(default_factory=dict)

    def bind(self, kind, shown, actual):
        if kind.shape is not None and kind.shape(shown) != kind.shape(actual):
            return False
        if kind.varies is not None and not kind.varies(actual) and shown != actual:
            return False
        return self._bind(kind.canonical(shown), kind.canonical(actual))

    def _bind(self, shown, actual):
        if shown in self.actual_of or actual in self.shown_of:
            return self.actual_of.get(shown) == actual and self.shown_of.get(actual) == shown
        self.actual_of[shown] = actual
        self.shown_of[actual] = shown
        return True

    def command_to_send(self, command):
        """The command with the values it shows replaced by the actual ones (spelled as shown); values first seen
        here are its own."""
        parts = []
        for kind, text in tokenize(command):
            if kind is not None:
                value = kind.canonical(text)
                if not self._bind(value, self.actual_of.get(value, value)):
                    raise ExampleError(f"{text!r} is sent, but an earlier output printed it for another value")
                text = kind.spell(self.actual_of[value], text)
            parts.append(text)
        return "".join(parts)

    def matches(self, shown, actual):
        """Whether `actual` is `shown` but for varying values, bound consistently (binding new ones)."""
        shown_parts, actual_parts = tokenize(shown), tokenize(actual)
        if len(shown_parts) != len(actual_parts):
            return False
        for (shown_kind, shown_text), (actual_kind, actual_text) in zip(shown_parts, actual_parts, strict=True):
            if shown_kind is not actual_kind:
                return False
            if shown_kind is None and shown_text != actual_text:
                return False
            if shown_kind is not None and not self.bind(shown_kind, shown_text, actual_text):
                return False
        return True


# Comparing an output with what the page shows ---------------------------------------------------

HTTP_STATUS_LINE = re.compile(r"^HTTP/\d(?:\.\d)? \d{3}\b")


def _lines(text):
    return [line.rstrip() for line in text.replace("\r\n", "\n").strip("\n").split("\n")] if text.strip() else []


def _split_http(lines):
    """(status line, [(name, value)], body text) of `curl -i`'s output."""
    blank = lines.index("") if "" in lines else len(lines)
    headers = []
    for line in lines[1:blank]:
        name, separator, value = line.partition(":")
        if not separator:
            raise ExampleError(f"not a header line: {line!r}")
        headers.append((name.strip().lower(), value.strip()))
    return lines[0], headers, "\n".join(lines[blank + 1 :])


def _canonical_json(text):
    try:
        return json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":"))
    except ValueError:
        return None


def _body_differences(shown, actual, bindings):
    shown_json = _canonical_json(shown) if shown.strip() else None
    if shown_json is not None:
        actual_json = _canonical_json(actual)
        if actual_json is None:
            return ["the page shows a JSON body, the answer's body is not JSON"]
        return [] if bindings.matches(shown_json, actual_json) else ["the JSON bodies differ"]
    return _text_differences(_lines(shown), _lines(actual), bindings)


def _text_differences(shown, actual, bindings):
    if len(shown) != len(actual):
        return [f"{len(shown)} line(s) shown, {len(actual)} printed"]
    return [
        f"line {number}: shown {shown_line!r}, printed {actual_line!r}"
        for number, (shown_line, actual_line) in enumerate(zip(shown, actual, strict=True), 1)
        if not bindings.matches(shown_line, actual_line)
    ]


def _http_differences(shown_lines, actual_lines, bindings):
    shown_status, shown_headers, shown_body = _split_http(shown_lines)
    actual_status, actual_headers, actual_body = _split_http(actual_lines)
    differences = []
    if shown_status != actual_status:
        differences.append(f"status line: shown {shown_status!r}, printed {actual_status!r}")
    actual_values = dict(actual_headers)
    for name, value in shown_headers:
        if name not in actual_values:
            differences.append(f"header {name!r} shown but not sent")
        elif name == "retry-after":
            if not (value.isdigit() and actual_values[name].isdigit()):
                differences.append(f"retry-after: shown {value!r}, sent {actual_values[name]!r} (seconds expected)")
        elif not bindings.matches(value, actual_values[name]):
            differences.append(f"header {name!r}: shown {value!r}, sent {actual_values[name]!r}")
    shown_names = {name for name, _ in shown_headers}
    differences += [
        f"header {name!r} sent but not shown: {value!r}"
        for name, value in actual_headers
        if name not in shown_names and name not in HIDDEN_HEADERS
    ]
    return differences + _body_differences(shown_body, actual_body, bindings)


def differences(shown, actual, bindings):
    """How `actual` (what a command printed) differs from `shown` (what the page shows): [] when it does not."""
    shown_lines, actual_lines = _lines(shown), _lines(actual)
    if shown_lines and HTTP_STATUS_LINE.match(shown_lines[0]):
        if not (actual_lines and HTTP_STATUS_LINE.match(actual_lines[0])):
            return ["the page shows an HTTP answer, the command printed something else"]
        return _http_differences(shown_lines, actual_lines, bindings)
    return _text_differences(shown_lines, actual_lines, bindings)


def shown_path(page):
    """The page's path as messages show it: from the repository's root, where it is there."""
    return page.relative_to(ROOT) if page.is_relative_to(ROOT) else page


# Reading pages --------------------------------------------------------------------------------


@dataclass
class Command:
    line: int  # in its page, 1-based
    text: str
    output: str


@dataclass
class Block:
    page: Path
    line: int
    commands: list
    not_run_reason: str | None = None
    server_settings: dict | None = None  # None: as the previous block

    @property
    def where(self):
        return f"{shown_path(self.page)}:{self.line}"


def pages():
    """Every page the examples are read from: the README and everything under docs/."""
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def read_blocks(page):
    """The page's console blocks; raises ExampleError for a shell example written any other way."""
    lines = page.read_text().split("\n")
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        language = (opening["info"].split() or [""])[0].strip("{}.").lower()
        start, indent, fence = index, len(opening["indent"]), opening["fence"]
        index += 1
        body = []
        while index < len(lines) and not re.match(rf"^\s*{re.escape(fence)}\s*$", lines[index]):
            body.append(lines[index][indent:] if lines[index][:indent].isspace() else lines[index].lstrip())
            index += 1
        index += 1
        where = f"{shown_path(page)}:{start + 1}"
        if language in SHELL_LANGUAGES:
            raise ExampleError(f"{where}: a shell example must be a `console` block (`$ ` commands, then output)")
        if language != RUNNABLE_LANGUAGE:
            continue
        block = Block(page, start + 1, _commands(body, start + 2, where))
        _apply_directive(block, lines[:start], where)
        blocks.append(block)
    return blocks


def _commands(body, first_line, where):
    commands = []
    for offset, line in enumerate(body):
        if line.startswith(PROMPT):
            commands.append(Command(first_line + offset, line[len(PROMPT) :], ""))
        elif not commands:
            raise ExampleError(f"{where}: a console block starts with a `$ ` command, not {line!r}")
        elif line.startswith(CONTINUATION) and not commands[-1].output:
            commands[-1].text += "\n" + line[len(CONTINUATION) :]
        elif commands[-1].text.endswith("\\") and not commands[-1].output:
            commands[-1].text += "\n" + line
        else:
            commands[-1].output += line + "\n"
    if not commands:
        raise ExampleError(f"{where}: a console block without any `$ ` command")
    return commands


def _apply_directive(block, lines_before, where):
    previous = next((line for line in reversed(lines_before) if line.strip()), "")
    directive = DIRECTIVE.match(previous)
    if not directive:
        return
    body = directive["body"]
    if body.startswith("not run"):
        reason = body.removeprefix("not run").lstrip(":—- ").strip()
        if not reason:
            raise ExampleError(f"{where}: say why the example is not run: <!-- example: not run: <why> -->")
        block.not_run_reason = reason
    elif body.startswith("server"):
        settings = [item.partition("=") for item in shlex.split(body.removeprefix("server"))]
        if not settings or any(not name or not equals for name, equals, _ in settings):
            raise ExampleError(f"{where}: write <!-- example: server NAME=value ... -->")
        block.server_settings = {name: value for name, _, value in settings}
    else:
        raise ExampleError(f"{where}: unknown example directive {body!r} (`not run: <why>` or `server NAME=value`)")


def count(all_pages=None):
    """(console blocks to run, commands in them, [(where, why)] of the blocks not run) over the pages."""
    blocks = commands = 0
    not_run = []
    for page in pages() if all_pages is None else all_pages:
        for block in read_blocks(page):
            if block.not_run_reason:
                not_run.append((block.where, block.not_run_reason))
            else:
                blocks += 1
                commands += len(block.commands)
    return blocks, commands, not_run
