"""`Idempotency-Key` on the API's write endpoints: one decorator on a view's write method (`@idempotent`).

Without the header the method runs as it always has (a dictionary lookup is
all it costs). With it (coupons/idempotency.py holds the rules):

- the key's syntax is checked (400 `invalid_idempotency_key`);
- the key is held for this request, per caller (the API key's prefix, the
  staff user, or "anonymous"); "the same request" is the same method, path
  and body (JSON compared by value, not by key order or spacing);
- a request seen before is answered as it was, byte for byte (status,
  body, Retry-After), with `Idempotent-Replayed: true`; another request
  with the key gets 422 `idempotency_key_reused`, one sent while the first
  is still running 409 `idempotency_key_in_use` with Retry-After;
- otherwise the method runs, and its answer is stored in the transaction
  of its effect: by default the decorator runs the method and stores its
  answer in one transaction; `answered_in_service=True` is for a method
  whose service commits in a transaction of its own making (the claim, in
  its claim group), which it hands `answering(request, success)`.
  Answers 2xx, 400, 403, 404, 409 and 410 are stored; any other (5xx, 429...)
  lets go of the key, so that a retry runs afresh;
- a method whose body is streamed, never held whole (a code import:
  `streamed_body=True`), reads it from `request.body_stream`. With a key,
  that is a temporary file the body was copied to while its SHA-256 was
  computed (in memory up to SPOOL_MEMORY_BYTES, on disk beyond): the
  fingerprint must be known before the key is held, and the body can be
  read from the client only once. Without one it is the request itself.

Authentication, permissions and rate limits run before (DRF's initial()):
their refusals are never stored.
"""

import functools
import hashlib
import json
import re
import tempfile

import structlog
from django.db import DatabaseError, transaction
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from prometheus_client import Counter
from rest_framework.renderers import JSONRenderer

from coupons.api.errors import api_exception_handler
from coupons.api.schema import add_error_responses
from coupons.api_keys import VerifiedKey
from coupons.exceptions import IdempotencyKeyInUse, IdempotencyKeyReused, InvalidIdempotencyKey
from coupons.idempotency import StoredAnswer, acquire_key, release_key, store_answers

HEADER = "Idempotency-Key"
HEADER_META_KEY = "HTTP_IDEMPOTENCY_KEY"  # how WSGI names it
REPLAYED_HEADER = "Idempotent-Replayed"
# Visible ASCII, no spaces: UUIDs, random tokens, "order-1234:retry" all fit.
KEY_FORMAT = re.compile(r"[\x21-\x7e]{1,255}")
# What parse_key accepts, as the OpenAPI schema's pattern (ECMA-262 without lookahead, so that client generators
# and fuzzers can read it): a bare key of KEY_FORMAT but `""` (the quoted form of an empty key), or a key of
# KEY_FORMAT in the structured-field quotes, which take it to 256 or 257 characters. tests/test_schema.py
# checks that the two agree.
SCHEMA_KEY_PATTERN = r'^(?:[!-~]|[!#-~][!-~]|"[!#-~]|[!-~]{3,255}|"[!-~]{254,255}")$'
# A streamed body sent with a key is copied this much at a time, and kept in memory up to this size.
SPOOL_MEMORY_BYTES = 1 << 20
# The refusals a retry would hear again (410: a claim whose hold expired or that was released stays so).
STORED_STATUSES = frozenset({400, 403, 404, 409, 410})

logger = structlog.get_logger(__name__)
requests_total = Counter(
    "idempotent_requests", "Write requests sent with an Idempotency-Key, by what became of them.", ["outcome"]
)
OUTCOMES = ("executed", "replayed", "in_use", "reused", "invalid", "not_stored")
_counters = {outcome: requests_total.labels(outcome=outcome) for outcome in OUTCOMES}
_renderer = JSONRenderer()

SCHEMA_PARAMETER = OpenApiParameter(
    HEADER,
    {"type": "string", "pattern": SCHEMA_KEY_PATTERN},
    OpenApiParameter.HEADER,
    description="Makes the request safe to retry: 1 to 255 visible ASCII characters (a UUID, say; no spaces), new"
    ' for each new request, optionally in double quotes (a structured-field string; `""` is no key). Sent again'
    " with the same request (method, path, body) within IDEMPOTENCY_TTL, the first answer is replayed byte for"
    " byte with `Idempotent-Replayed: true`, and the request has its effect only once.",
)


def idempotent(method=None, *, answered_in_service=False, streamed_body=False):
    """Decorates an APIView's write method (post, delete...) with Idempotency-Key handling (see the module)."""
    if method is None:
        return functools.partial(idempotent, answered_in_service=answered_in_service, streamed_body=streamed_body)

    @extend_schema(parameters=[SCHEMA_PARAMETER])
    @functools.wraps(method)
    def idempotent_method(view, request, *args, **kwargs):
        # From META, not request.headers: that builds a dict of every header, 4% of a sold-out refusal's CPU.
        sent = request.META.get(HEADER_META_KEY)
        if streamed_body:
            request.body_stream = request._request
        if sent is None:
            request.idempotency = None
            return method(view, request, *args, **kwargs)
        key = parse_key(sent)
        if streamed_body:
            request.body_stream, body_digest = spooled(request._request)
            fingerprint = fingerprint_of(request, body_digest=body_digest)
        else:
            fingerprint = fingerprint_of(request)
        try:
            held = acquire_key(caller=caller_of(request), key=key, fingerprint=fingerprint)
        except IdempotencyKeyReused:
            _counters["reused"].inc()
            raise
        except IdempotencyKeyInUse:
            _counters["in_use"].inc()
            raise
        if isinstance(held, StoredAnswer):
            _counters["replayed"].inc()
            return as_response(held, replayed=True)
        held.answer_for = answer_for
        request.idempotency = held
        run = _answered_in_service if answered_in_service else _answered_in_one_transaction
        try:
            response = run(held, method, view, request, *args, **kwargs)
        except BaseException:  # a 5xx (the database away...), or a bug: nothing to keep
            _let_go(held)
            _counters["not_stored"].inc()
            raise
        if held.stored is None:
            _let_go(held)
            _counters["not_stored"].inc()
            return response
        _counters["executed"].inc()
        return as_response(held.stored, replayed=False)

    return idempotent_method


def parse_key(sent):
    # The draft standard sends the key as a structured-field string, in double quotes: taken without them.
    key = sent[1:-1] if len(sent) >= 2 and sent[0] == sent[-1] == '"' else sent
    if not KEY_FORMAT.fullmatch(key):
        _counters["invalid"].inc()
        raise InvalidIdempotencyKey()
    return key


def caller_of(request):
    """Whose key it is: keys of different callers never meet."""
    if isinstance(request.auth, VerifiedKey):
        return f"key:{request.auth.prefix}"
    if request.user is not None and request.user.is_authenticated:
        return f"user:{request.user.pk}"
    return "anonymous"


def fingerprint_of(request, *, body_digest=None):
    """SHA-256 of the method, the path with its query, and the body (a JSON body by value; a streamed one by its
    own SHA-256, `body_digest`)."""
    if body_digest is None:
        body = request._request.body  # read before DRF parses it (Django keeps the bytes for the parser)
        try:
            body = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
        except ValueError:
            pass  # not JSON (a 400 to come): compared as bytes
    else:
        body = b"sha256:" + body_digest
    digest = hashlib.sha256(request.method.encode())
    for part in (request._request.get_full_path().encode(), body):
        digest.update(b"\0" + part)
    return digest.hexdigest()


def spooled(stream):
    """A copy of the stream's bytes, rewound (a temporary file past SPOOL_MEMORY_BYTES), and their SHA-256."""
    copy = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115 - the request's, until it ends
    digest = hashlib.sha256()
    while data := stream.read(SPOOL_MEMORY_BYTES):
        digest.update(data)
        copy.write(data)
    copy.seek(0)
    return copy, digest.digest()


def answering(request, success):
    """For an `answered_in_service` method: the request's Attempt, answering `success` when the service succeeds
    (None without a key). `success` is the Response, or a function of what the service made that returns it
    (for a body that depends on it: called in the service's transaction)."""
    attempt = request.idempotency
    if attempt is not None:
        attempt.answer_for = functools.partial(answer_for, success=success)
    return attempt


def answer_for(outcome, success=None):
    """The answer to store for a service's outcome: `success`, or the error the API answers for a refusal."""
    if isinstance(outcome, Exception):
        return answer_of(api_exception_handler(outcome, {}))
    return answer_of(success(outcome) if callable(success) else success)


def answer_of(response):
    """A DRF Response as the bytes the API sends (JSONRenderer, the API's one renderer)."""
    body = _renderer.render(response.data) if response.data is not None else b""
    return StoredAnswer(
        status_code=response.status_code,
        content_type=_renderer.media_type if body else "",
        retry_after=response.headers.get("Retry-After", ""),
        body=body,
    )


def stored(answer):
    return 200 <= answer.status_code < 300 or answer.status_code in STORED_STATUSES


def as_response(answer, *, replayed):
    response = HttpResponse(answer.body, status=answer.status_code, content_type=answer.content_type or None)
    if not answer.content_type:
        del response["Content-Type"]
    if answer.retry_after:
        response["Retry-After"] = answer.retry_after
    if replayed:
        response[REPLAYED_HEADER] = "true"
    return response


def _answered_in_one_transaction(attempt, method, view, request, *args, **kwargs):
    """Run the method and store its answer in one transaction: the answer is committed exactly with the effect."""
    with transaction.atomic():
        try:
            response = method(view, request, *args, **kwargs)
        except Exception as exc:
            response = view.handle_exception(exc)  # the API's error answer; a bug is raised again
        answer = answer_of(response)
        if not stored(answer):
            transaction.set_rollback(True)
            return response
        if store_answers([(attempt, answer)]):
            raise IdempotencyKeyInUse()  # taken over by a retry meanwhile: this effect is rolled back
        attempt.stored = answer  # committed when the block ends (or the block raises, and it is not)
    return response


def _answered_in_service(attempt, method, view, request, *args, **kwargs):
    """Run the method, whose service stores its answer; a refusal it made without a transaction is stored here."""
    try:
        return method(view, request, *args, **kwargs)
    except Exception as exc:
        if attempt.stored is not None:
            return None  # a refusal stored with the service's transaction: answered as stored
        response = view.handle_exception(exc)
        answer = answer_of(response)
        if stored(answer):
            if store_answers([(attempt, answer)]):
                raise IdempotencyKeyInUse() from exc
            attempt.stored = answer
        return response


def _let_go(attempt):
    try:
        release_key(attempt)
    except DatabaseError as exc:
        # The database is away: the key's lease runs out instead (IDEMPOTENCY_LEASE).
        logger.warning("idempotency_key_not_released", error=str(exc))


def document_idempotency_errors(result, generator, request, public):
    """drf-spectacular hook: every operation that takes an Idempotency-Key documents what the key can answer."""
    errors = {
        "400": "The Idempotency-Key is malformed (code invalid_idempotency_key).",
        "409": "A request with this Idempotency-Key is still running (code idempotency_key_in_use, with Retry-After).",
        "422": "This Idempotency-Key was sent with another request (code idempotency_key_reused).",
    }
    for operations in result["paths"].values():
        for operation in operations.values():
            if any(parameter["name"] == HEADER for parameter in operation.get("parameters", ())):
                add_error_responses(operation, errors)
    return result
