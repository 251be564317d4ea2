"""A client generated from the served schema by openapi-python-client drives the served app, as a shop's would.

The client is generated at test time, into a temporary directory, from
/api/schema/ as the server serves it (API keys required, so the generated
client's authentication is exercised too): a schema change that breaks
generated clients (a renamed operation or field, a body the declared model
cannot read, a status the client does not expect) fails here. docs/client-guide.md
runs the same generator in an example (tests/docs).
"""

import importlib
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from django.test import TransactionTestCase

from coupons.api_keys import create_api_key
from coupons.models import API_KEY_SCOPES
from tests.faults.service import Service
from tests.helpers import ROOT, subprocess_database_url

VENV_BIN = Path(sys.executable).parent
PACKAGE = "coupon_client"


def generate_client(schema_url, directory):
    """openapi-python-client's package for the schema at `schema_url`, generated into `directory` and imported."""
    # The generator formats its output with ruff: the venv's, first on PATH.
    environment = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}
    generated = subprocess.run(
        [VENV_BIN / "openapi-python-client", "generate", "--url", schema_url, "--meta", "none"]
        # The repository's configuration: a code import's CSV or JSON lines body sent as a file's bytes.
        + ["--config", str(ROOT / "openapi-python-client.yaml"), "--output-path", str(directory / PACKAGE)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    # Any warning means a part of the schema the generator could not turn into code: a client missing pieces.
    printed = generated.stdout + generated.stderr
    if generated.returncode != 0 or "Warning" in printed:
        raise AssertionError(f"openapi-python-client could not generate the whole client:\n{printed}")
    sys.path.insert(0, str(directory))
    try:
        return importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(directory))


class GeneratedClientTests(TransactionTestCase):
    def setUp(self):
        self.directory = Path(self.enterContext(tempfile.TemporaryDirectory()))
        self.addCleanup(lambda: [sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] == PACKAGE])

    def test_create_claim_redeem_and_a_keyed_retry(self):
        _, key = create_api_key(name="shop", scopes=set(API_KEY_SCOPES))
        with Service(subprocess_database_url(), WEB_CONCURRENCY="1", API_KEYS_REQUIRED="1") as service:
            base_url = f"http://127.0.0.1:{service.port}"
            generate_client(f"{base_url}/api/schema/", self.directory)
            from coupon_client import AuthenticatedClient
            from coupon_client.api.coupons import coupons_claim, coupons_create, coupons_retrieve
            from coupon_client.api.redemptions import redemptions_create, redemptions_retrieve
            from coupon_client.models import (
                AlreadyRedeemedError,
                Claim,
                ClaimInput,
                ClaimStatus,
                Coupon,
                CouponCreateInput,
                CouponDetail,
                Error,
                ErrorCode,
                Redemption,
                RedemptionInput,
            )

            with AuthenticatedClient(
                base_url=base_url, token=key, prefix="Api-Key", raise_on_unexpected_status=True
            ) as client:
                created = coupons_create.sync(
                    client=client,
                    body=CouponCreateInput(name="PROMO_SUPER", amount=2, hold_seconds=600),
                    idempotency_key=str(uuid.uuid4()),
                )
                self.assertIsInstance(created, Coupon)
                self.assertEqual(
                    (created.name, created.remaining_amount, created.hold_seconds), ("PROMO_SUPER", 2, 600)
                )

                # A claim sent with a key, then the same claim again (its answer lost, say): one unit, one code.
                key_of_the_claim = str(uuid.uuid4())
                claim_input = ClaimInput(user_id="user_12345", coupon_name="PROMO_SUPER")
                first = coupons_claim.sync_detailed(client=client, body=claim_input, idempotency_key=key_of_the_claim)
                retry = coupons_claim.sync_detailed(client=client, body=claim_input, idempotency_key=key_of_the_claim)
                self.assertEqual((first.status_code, retry.status_code), (201, 201))
                self.assertIsInstance(retry.parsed, Claim)
                self.assertEqual(retry.parsed.code, first.parsed.code)
                self.assertEqual(first.parsed.status, ClaimStatus.HELD)
                self.assertEqual(retry.headers["Idempotent-Replayed"], "true")
                self.assertIsNotNone(first.parsed.expires_at)  # a datetime: the hold's end

                # Without the key, the same user again: a 409 the client reads as an Error with its code.
                again = coupons_claim.sync(client=client, body=claim_input)
                self.assertIsInstance(again, Error)
                self.assertEqual(again.code, ErrorCode.ALREADY_CLAIMED)

                detail = coupons_retrieve.sync("PROMO_SUPER", client=client)
                self.assertIsInstance(detail, CouponDetail)
                self.assertEqual(
                    (detail.remaining_amount, detail.held_amount, detail.claimed_by), (1, 1, ["user_12345"])
                )

                redeemed = redemptions_create.sync(
                    client=client,
                    body=RedemptionInput(code=first.parsed.code.lower(), order_id="order-1001"),
                    idempotency_key=str(uuid.uuid4()),
                )
                self.assertIsInstance(redeemed, Redemption)
                self.assertEqual((redeemed.status, redeemed.order_id), (ClaimStatus.REDEEMED, "order-1001"))
                self.assertEqual(
                    redemptions_retrieve.sync(first.parsed.code, client=client).status, ClaimStatus.REDEEMED
                )

                twice = redemptions_create.sync(client=client, body=RedemptionInput(code=first.parsed.code))
                self.assertIsInstance(twice, AlreadyRedeemedError)
                self.assertEqual((twice.code, twice.order_id), (ErrorCode.ALREADY_REDEEMED, "order-1001"))
