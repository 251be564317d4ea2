"""Helpers for the drf-spectacular hooks that document, on many operations at once, what a mechanism shared by
them can answer (API keys in coupons/api/key_access.py, Idempotency-Key in coupons/api/idempotency.py)."""

ERROR = {"$ref": "#/components/schemas/Error"}


def add_error_responses(operation, descriptions):
    """Document each {status: description} as an error response of `operation` (a JSON Error body)."""
    for status_code, description in descriptions.items():
        response = operation["responses"].setdefault(status_code, {"content": {"application/json": {"schema": ERROR}}})
        body = response.setdefault("content", {}).setdefault("application/json", {"schema": ERROR})
        if body["schema"] != ERROR:
            # The view's own body for this status (AlreadyRedeemedError's 409), or this mechanism's plain Error:
            # a generated client must read either.
            body["schema"] = {"anyOf": [body["schema"], ERROR]}
        # A status the view documents already gets both reasons.
        response["description"] = " Or: ".join(filter(None, [response.get("description"), description]))
