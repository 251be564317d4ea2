"""Structured logs: one JSON object per line, or aligned human-readable lines for development.

Every line goes through the same structlog processors, whether it comes from
a structlog logger (the claim outcomes, the request lines of couponsite/request_logs.py)
or from standard logging (Django, the web server): each has a timestamp, a level,
the logger's name and, inside a request, the request's `request_id`. structlog's
events are rendered by structlog itself; standard logging's records by the
handler's formatter (`structured_formatter`); both are written by the one
handler (`StreamHandler`), so they share a stream and a lock.
"""

import logging
import re
import sys

import orjson
import structlog

RENDERERS = ("json", "console")

# A claim's code is a bearer secret (whoever has it can redeem it), and the
# redemption endpoints carry it in their path: /api/redemptions/<code>.
# Whatever follows that prefix, up to a space, quote or query string, is
# replaced wherever a path is logged: the request lines' `request` field,
# Django's own "Not Found: <path>" lines, granian's access log.
_CODE_IN_PATH = re.compile(r"(/api/redemptions/)[^\s\"'?#]+")
REDACTED = "[code]"


def redact_codes(text: str) -> str:
    """`text` with every claim code in a redemption path replaced by [code]."""
    if "/api/redemptions/" not in text:  # the common case: no regex run
        return text
    return _CODE_IN_PATH.sub(rf"\g<1>{REDACTED}", text)


def redact_claim_codes(logger, method_name, event_dict):
    """A structlog processor: no claim code in any text field of a line."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact_codes(value)
    return event_dict


# Applied to every line, from structlog and standard logging alike.
_SHARED_PROCESSORS = [
    structlog.contextvars.merge_contextvars,  # request_id, bound per request (couponsite/request_logs.py)
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    redact_claim_codes,
]


def configure_structlog(*, renderer, level, cache=True):
    """structlog renders its events itself (`renderer`: "json" or "console") and hands each line to the handler
    standard logging's records go through (see `logging_config`); events below `level` cost nothing.

    Rather than through standard logging (a LogRecord per event, copied again by structlog's ProcessorFormatter
    before rendering): 28 µs a request's line that way, 12 this way, in-process (docs/performance.md). `cache`
    off: loggers follow a later change of level (the tests' capture).
    """
    # No line shows where a call was made from, nor the thread's name or
    # the process's id, so standard logging need not look them up for every
    # record (the logging HOWTO's "Optimization"): walking a request's
    # stack to find the caller was a tenth of its request line's cost.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    levels = logging.getLevelNamesMapping()
    if level.upper() not in levels:
        raise ValueError(f"Unknown level: {level!r}")
    structlog.configure(
        processors=[*_SHARED_PROCESSORS, *_rendering(renderer)],
        # Drops a disabled level before any work is done on the event (positional arguments: `event % args`).
        wrapper_class=structlog.make_filtering_bound_logger(levels[level.upper()]),
        logger_factory=LineLogger,
        cache_logger_on_first_use=cache,
    )


def _orjson_text(event_dict, default):
    # A fifth of a line's rendering time less than json.dumps (structlog's performance guide suggests orjson).
    return orjson.dumps(event_dict, default=default, option=orjson.OPT_NON_STR_KEYS).decode()


def _rendering(renderer):
    """The processors that turn an event into its line."""
    if renderer == "json":
        return [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(serializer=_orjson_text)]
    return [structlog.dev.ConsoleRenderer(colors=False)]


def structured_formatter(renderer):
    """The logging.Formatter that renders every standard logging record as `renderer` ("json" or "console")."""
    return structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *_rendering(renderer)],
        foreign_pre_chain=[*_SHARED_PROCESSORS, structlog.stdlib.ExtraAdder()],
    )


class LineLogger:
    """structlog's logger (its `logger_factory`: `structlog.get_logger(name)` makes one): writes each rendered line
    through the service's handler. structlog's own WriteLogger would hold a stream and a lock of its own, beside
    the handler's; `name` is what add_logger_name puts on the line."""

    def __init__(self, name=""):
        self.name = name

    def msg(self, line):
        StreamHandler.write_line(line)

    debug = info = warning = warn = error = err = critical = fatal = exception = failure = log = msg


class StreamHandler(logging.StreamHandler):
    """logging.StreamHandler, rendering each line before it takes the handler's lock rather than under it, and
    writing structlog's lines too (`write_line`).

    The lock is one per process: with a request line rendered under it,
    every thread that logs waits for the rendering of the others', and a
    thread that loses the GIL while holding it holds them all up (p99
    latency). Only the write is serialised here, so lines never interleave.
    """

    configured = None  # the handler LOGGING made last: structlog's lines go through it

    def __init__(self, stream=None):
        super().__init__(stream)
        StreamHandler.configured = self

    def handle(self, record):
        passed = self.filter(record)
        if passed:
            try:
                self.write(self.format(record))
            except RecursionError:  # as logging.StreamHandler.emit
                raise
            except Exception:
                self.handleError(record)
        return passed

    def write(self, line):
        with self.lock:
            self.stream.write(line + self.terminator)
            self.flush()

    @classmethod
    def write_line(cls, line):
        """Write a line rendered by structlog: through the configured handler, or to stderr before there is one."""
        handler = cls.configured
        if handler is None:
            sys.stderr.write(line + "\n")
        else:
            handler.write(line)


def logging_config(*, renderer, level):
    """Django's LOGGING: everything to stderr through the structured formatter."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"structured": {"()": structured_formatter, "renderer": renderer}},
        "handlers": {"console": {"class": "couponsite.logs.StreamHandler", "formatter": "structured"}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            # Django's default configuration gives these loggers handlers of
            # their own (console, with DEBUG on): everything goes to ours.
            "django": {"handlers": [], "propagate": True},
            "django.server": {"handlers": [], "propagate": True},
            # 4xx answers (sold out, already claimed) are the normal course of
            # a flash sale, not warnings: Django logs only server errors.
            "django.request": {"level": "ERROR"},
        },
    }
