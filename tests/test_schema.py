import io
import json
import re
import uuid

from django.core.management import call_command
from django.test import SimpleTestCase, TestCase
from hypothesis import example, given
from hypothesis import strategies as st

from coupons.api.error_codes import ErrorCode
from coupons.claim_codes import CODE_PATTERN, normalise_code
from coupons.exceptions import InvalidIdempotencyKey, MalformedCode


class SchemaTests(SimpleTestCase):
    def setUp(self):
        response = self.client.get("/api/schema/", {"format": "json"})
        self.assertEqual(response.status_code, 200)
        self.schema = json.loads(response.content)

    def statuses(self, path, method):
        return set(self.schema["paths"][path][method]["responses"])

    def test_lists_every_endpoint(self):
        self.assertEqual(
            set(self.schema["paths"]),
            {
                "/api/coupons",
                "/api/coupons/claim",  # POST only: a GET there reads the coupon named "claim", as {name} says
                "/api/coupons/{name}",
                "/api/coupons/{name}/claims/{user_id}",
                "/api/users/{user_id}/claims",
                "/api/redemptions",
                "/api/redemptions/{code}",
                "/api/webhooks",
                "/api/webhooks/{subscription_id}",
                "/api/events",
                "/api/coupons/{name}/codes",
                "/api/campaigns",
                "/api/campaigns/{name}",
                "/api/coupons/{name}/entries",
                "/api/coupons/{name}/entries/{user_id}",
                "/api/coupons/{name}/draw",
                "/.well-known/jwks.json",
                "/api/admission/challenge",
            },
        )

    def test_documents_every_status_code(self):
        self.assertEqual(
            self.statuses("/api/coupons", "post"),
            {"201", "400", "401", "403", "404", "409", "411", "413", "415", "422", "503"},
        )
        self.assertEqual(
            self.statuses("/api/coupons/claim", "post"),
            {"201", "400", "403", "404", "409", "411", "413", "415", "422", "429", "503"},
        )
        self.assertEqual(self.statuses("/api/coupons/{name}", "get"), {"200", "404", "503"})
        self.assertEqual(
            self.statuses("/api/coupons/{name}/claims/{user_id}", "delete"),
            {"204", "400", "401", "403", "404", "409", "411", "413", "415", "422", "503"},
        )
        self.assertEqual(
            self.statuses("/api/webhooks", "post"),
            {"201", "400", "401", "403", "409", "411", "413", "415", "422", "503"},
        )
        self.assertEqual(self.statuses("/api/webhooks", "get"), {"200", "401", "403", "503"})
        self.assertEqual(
            self.statuses("/api/webhooks/{subscription_id}", "delete"),
            {"204", "400", "401", "403", "404", "409", "422", "503"},
        )
        self.assertEqual(self.statuses("/api/events", "get"), {"200", "400", "401", "403", "503"})
        self.assertEqual(set(self.schema["paths"]["/api/coupons/{name}/claims/{user_id}"]), {"delete"})
        self.assertEqual(self.statuses("/api/users/{user_id}/claims", "get"), {"200", "400", "404", "503"})
        self.assertEqual(set(self.schema["paths"]["/api/coupons/claim"]), {"post"})
        self.assertEqual(
            self.statuses("/api/redemptions", "post"),
            {"201", "400", "403", "404", "409", "410", "411", "413", "415", "422", "503"},
        )
        self.assertEqual(self.statuses("/api/redemptions/{code}", "get"), {"200", "400", "404", "503"})
        self.assertEqual(
            self.statuses("/api/redemptions/{code}", "delete"),
            {"204", "400", "401", "403", "404", "409", "410", "411", "413", "415", "422", "503"},
        )

    def test_allow_names_the_schema_methods(self):
        """Every path's Allow header names its documented methods (HEAD and OPTIONS aside). Schemathesis's
        allow_header_conformance is left out of tests/test_schemathesis_served.py (it says why): this is that
        check, for every path."""
        sample = {"name": "PROMO", "user_id": "ann", "code": "7K3M-Q9TD-X2HB-R4WN", "subscription_id": uuid.uuid4()}
        # A GET there is served, and documented as GET /api/coupons/{name} (the coupon named "claim", or a name
        # holding "/claims/", or ending "/codes" or "/entries").
        served_as_a_coupon_read = {
            "/api/coupons/claim",
            "/api/coupons/{name}/claims/{user_id}",
            "/api/coupons/{name}/codes",
            "/api/coupons/{name}/entries",
        }
        for path, operations in self.schema["paths"].items():
            with self.subTest(path=path):
                allow = self.client.options(path.format(**sample)).headers["Allow"]
                documented = {method.upper() for method in operations}
                documented |= {"GET"} if path in served_as_a_coupon_read else set()
                # As Schemathesis compares them: HEAD (with GET) and OPTIONS are the framework's.
                self.assertEqual({method.strip() for method in allow.split(",")} - {"HEAD", "OPTIONS"}, documented)

    def test_redemption_shapes(self):
        schemas = self.schema["components"]["schemas"]
        self.assertEqual(
            set(schemas["Redemption"]["properties"]),
            {"coupon_name", "user_id", "code", "status", "order_id", "redeemed_at", "claimed_at", "expires_at"},
        )
        self.assertEqual(schemas["ClaimStatus"]["enum"], ["held", "redeemed", "released", "expired"])
        conflict = self.schema["paths"]["/api/redemptions"]["post"]["responses"]["409"]
        # already_redeemed with its details, or (a keyed request) idempotency_key_in_use's plain Error.
        self.assertEqual(
            conflict["content"]["application/json"]["schema"]["anyOf"],
            [{"$ref": "#/components/schemas/AlreadyRedeemedError"}, {"$ref": "#/components/schemas/Error"}],
        )
        self.assertEqual(
            set(schemas["AlreadyRedeemedError"]["properties"]), {"error", "code", "redeemed_at", "order_id"}
        )
        self.assertIn("code", schemas["Claim"]["required"])

    def test_every_write_operation_takes_an_idempotency_key(self):
        for path, operations in self.schema["paths"].items():
            for method, operation in operations.items():
                with self.subTest(path=path, method=method):
                    headers = {p["name"] for p in operation.get("parameters", ()) if p["in"] == "header"}
                    self.assertEqual("Idempotency-Key" in headers, method in {"post", "delete"})

    def test_error_bodies_are_documented(self):
        error = self.schema["components"]["schemas"]["Error"]
        self.assertEqual(sorted(error["required"]), ["code", "error"])
        self.assertEqual(error["properties"]["code"]["allOf"], [{"$ref": "#/components/schemas/ErrorCode"}])
        self.assertEqual(self.schema["components"]["schemas"]["ErrorCode"]["enum"], list(ErrorCode))
        not_found = self.schema["paths"]["/api/coupons/{name}"]["get"]["responses"]["404"]
        self.assertEqual(not_found["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Error")

    def test_strict_request_bodies(self):
        create = self.schema["components"]["schemas"]["CouponCreateInput"]
        self.assertEqual(create["properties"]["amount"]["type"], "integer")
        self.assertEqual(create["properties"]["amount"]["minimum"], 1)
        self.assertEqual(create["properties"]["name"]["maxLength"], 255)
        # Schemathesis sent "" as a schema-valid name: the schema now says what the API accepts.
        for schema_name, field in [
            ("CouponCreateInput", "name"),
            ("ClaimInput", "user_id"),
            ("ClaimInput", "coupon_name"),
        ]:
            with self.subTest(field=field):
                properties = self.schema["components"]["schemas"][schema_name]["properties"][field]
                self.assertEqual(properties["minLength"], 1)
                self.assertIn("no control", properties["description"])

    def test_generates_without_warnings(self):
        call_command("spectacular", "--fail-on-warn", "--validate", stdout=io.StringIO(), stderr=io.StringIO())

    def test_swagger_ui_is_served_without_a_cdn(self):
        response = self.client.get("/api/docs/")
        self.assertEqual(response.status_code, 200)
        html = response.content.decode()
        self.assertIn("drf_spectacular_sidecar", html)
        self.assertNotIn("cdn.jsdelivr", html)


def accepted(parse, text):
    try:
        parse(text)
    except (InvalidIdempotencyKey, MalformedCode):
        return False
    return True


# Text near the patterns' edges: visible ASCII, quotes, a space, a control character, non-ASCII.
KEY_TEXT = st.builds(
    lambda quote_first, body, quote_last: '"' * quote_first + body + '"' * quote_last,
    st.booleans(),
    st.one_of(st.text(alphabet='ab"~! \té', max_size=6), st.integers(250, 258).map(lambda n: "k" * n)),
    st.booleans(),
)
CODE_TEXT = st.text(alphabet="0189AZUIOLilo- \n", min_size=14, max_size=34)


class SchemaPatternTests(SimpleTestCase):
    """The patterns the schema states are exactly what the API's parsers accept: a client that follows the schema
    is never refused for them, and what the schema forbids the API refuses."""

    def setUp(self):
        schema = json.loads(self.client.get("/api/schema/", {"format": "json"}).content)
        operation = schema["paths"]["/api/redemptions/{code}"]["delete"]
        parameters = {parameter["name"]: parameter["schema"] for parameter in operation["parameters"]}
        self.key, self.code = parameters["Idempotency-Key"], parameters["code"]

    @given(KEY_TEXT)
    @example('""')
    @example('"' + "k" * 255 + '"')
    def test_the_idempotency_key_pattern_is_what_the_api_accepts(self, text):
        from coupons.api.idempotency import parse_key  # here: at collection, DRF's settings would import it back

        self.assertEqual(bool(re.fullmatch(self.key["pattern"], text)), accepted(parse_key, text), repr(text))

    @given(CODE_TEXT | st.from_regex(CODE_PATTERN, fullmatch=True))
    @example("7K3M-Q9TD-X2HB-R4WN")
    @example("7k3m q9td x2hb r4wn--")
    @example("-7K3M-Q9TD-X2HB-R4WN-")
    def test_every_claim_code_of_the_pattern_is_accepted(self, text):
        # One way only: the API also reads doubled separators and separators at either end (coupons/claim_codes.py).
        if re.fullmatch(self.code["pattern"], text):
            self.assertLessEqual(len(text), self.code["maxLength"])
            self.assertTrue(accepted(normalise_code, text), repr(text))
        elif accepted(normalise_code, text):
            self.assertTrue(re.fullmatch(self.code["pattern"], text.strip(" -")) or re.search("[ -]{2}", text))


class StaticFilesTests(TestCase):
    def test_swagger_assets_are_served(self):
        response = self.client.get("/api/docs/")
        asset = next(
            line.split('"')[1] for line in response.content.decode().splitlines() if "swagger-ui-bundle.js" in line
        )
        self.assertEqual(self.client.get(asset).status_code, 200)
