import json
import uuid

from django.test import SimpleTestCase, TestCase, override_settings

from tests.helpers import service_log_lines, structlog_events
from tests.test_settings import manage

# Logs one structlog event and one standard-logging record, as the service does.
PROBE = (
    "import logging, structlog; "
    "structlog.get_logger('probe').info('hello', answer=42); "
    "logging.getLogger('django.probe').warning('plain %s', 'stdlib')"
)


class LogFormatTests(SimpleTestCase):
    def test_json_lines_by_default(self):
        result = manage("shell", "-c", PROBE)

        self.assertEqual(result.returncode, 0, result.stderr)
        structured, plain = [json.loads(line) for line in result.stderr.splitlines()]
        self.assertEqual(
            {key: structured[key] for key in ["event", "answer", "level", "logger"]},
            {"event": "hello", "answer": 42, "level": "info", "logger": "probe"},
        )
        self.assertRegex(structured["timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$")
        self.assertEqual(
            {key: plain[key] for key in ["event", "level", "logger"]},
            {"event": "plain stdlib", "level": "warning", "logger": "django.probe"},
        )

    def test_human_readable_with_debug_on(self):
        result = manage("shell", "-c", PROBE, DEBUG="1")

        self.assertEqual(result.returncode, 0, result.stderr)
        structured, plain = result.stderr.splitlines()
        self.assertRegex(structured, r"^\d{4}-\d\d-\d\dT[\d:.]+Z \[info\s*\] hello\s+\[probe\] answer=42$")
        self.assertRegex(plain, r"\[warning\s*\] plain stdlib\s+\[django.probe\]$")

    def test_format_can_be_chosen(self):
        result = manage("shell", "-c", PROBE, DEBUG="1", LOG_FORMAT="json")
        self.assertEqual(json.loads(result.stderr.splitlines()[0])["event"], "hello")

    def test_unknown_format_is_refused_loudly(self):
        result = manage("check", LOG_FORMAT="xml")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("LOG_FORMAT must be one of json, console", result.stderr)


class RequestLogTests(TestCase):
    def test_one_line_per_request_with_its_own_request_id(self):
        with structlog_events() as logged:
            self.client.get("/health")
            self.client.post("/api/coupons/claim", "{}", content_type="application/json")

        events = [event for event in logged if event["logger"] == "couponsite.request_logs"]
        self.assertEqual(
            [(event["event"], event["request"], event["code"]) for event in events],
            [("request_finished", "GET /health", 200), ("request_finished", "POST /api/coupons/claim", 400)],
        )
        request_ids = [event["request_id"] for event in events]
        self.assertEqual(len(set(request_ids)), 2)
        for request_id in request_ids:
            uuid.UUID(request_id)
        # Neither a staff user's id (our user_id is the claimer) nor a client IP.
        self.assertEqual([key for event in events for key in ["user_id", "ip"] if key in event], [])


@override_settings(DEBUG=False, ROOT_URLCONF="tests.urls_failing")
class ServerErrorLogTests(SimpleTestCase):
    def test_a_bug_is_logged_with_its_traceback_and_request_id(self):
        self.client.raise_request_exception = False
        with service_log_lines() as output:
            self.assertEqual(self.client.get("/broken").status_code, 500)

        lines = [json.loads(line) for line in output.getvalue().splitlines()]
        [failed] = [line for line in lines if line["event"] == "request_failed"]
        self.assertEqual((failed["code"], failed["level"], failed["request"]), (500, "error", "GET /broken"))
        self.assertIn("RuntimeError: secret internals", failed["exception"])
        [django_error] = [line for line in lines if line["event"] == "Internal Server Error: /broken"]
        self.assertEqual(django_error["request_id"], failed["request_id"])
