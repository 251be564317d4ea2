import io
import json

from django.core.management import call_command
from django.test import SimpleTestCase, TestCase

from coupons.api.error_codes import ErrorCode


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
                "/api/coupons/claim",
                "/api/coupons/{name}",
                "/api/coupons/{name}/claims/{user_id}",
                "/api/users/{user_id}/claims",
                "/api/redemptions",
                "/api/redemptions/{code}",
                "/api/webhooks",
                "/api/webhooks/{subscription_id}",
                "/api/events",
                "/api/coupons/{name}/entries",
                "/api/coupons/{name}/entries/{user_id}",
                "/api/coupons/{name}/draw",
                "/.well-known/jwks.json",
            },
        )

    def test_documents_every_status_code(self):
        self.assertEqual(
            self.statuses("/api/coupons", "post"),
            {"201", "400", "401", "403", "409", "411", "413", "415", "422", "503"},
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
        self.assertEqual(self.statuses("/api/users/{user_id}/claims", "get"), {"200", "400", "503"})
        self.assertEqual(self.statuses("/api/coupons/claim", "get"), {"200", "404", "503"})
        self.assertEqual(
            self.statuses("/api/redemptions", "post"),
            {"201", "400", "403", "404", "409", "410", "411", "413", "415", "422", "503"},
        )
        self.assertEqual(self.statuses("/api/redemptions/{code}", "get"), {"200", "400", "404", "503"})
        self.assertEqual(
            self.statuses("/api/redemptions/{code}", "delete"),
            {"204", "400", "401", "403", "404", "409", "410", "411", "413", "415", "422", "503"},
        )

    def test_redemption_shapes(self):
        schemas = self.schema["components"]["schemas"]
        self.assertEqual(
            set(schemas["Redemption"]["properties"]),
            {"coupon_name", "user_id", "code", "status", "order_id", "redeemed_at", "claimed_at", "expires_at"},
        )
        self.assertEqual(schemas["ClaimStatus"]["enum"], ["held", "redeemed", "released", "expired"])
        conflict = self.schema["paths"]["/api/redemptions"]["post"]["responses"]["409"]
        self.assertEqual(
            conflict["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/AlreadyRedeemedError"
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


class StaticFilesTests(TestCase):
    def test_swagger_assets_are_served(self):
        response = self.client.get("/api/docs/")
        asset = next(
            line.split('"')[1] for line in response.content.decode().splitlines() if "swagger-ui-bundle.js" in line
        )
        self.assertEqual(self.client.get(asset).status_code, 200)
