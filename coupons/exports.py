"""Claims as CSV, streamed to the client row by row: never built in memory."""

import csv

from django.http import StreamingHttpResponse
from django.utils.http import content_disposition_header

from coupons.claim_codes import format_code
from coupons.selectors import iter_claims_for_export

# The first three columns as they always were; the claim's code and status after.
CSV_HEADER = ("coupon", "user_id", "claimed_at", "code", "status", "redeemed_at", "order_id")
# A cell starting with one of these is a formula to a spreadsheet; user ids
# come from the public API, so such cells are prefixed with a quote.
FORMULA_PREFIXES = ("=", "+", "-", "@")


class _Echo:
    """A file-like object whose write() hands back the line csv.writer formatted."""

    def write(self, line):
        return line


def spreadsheet_safe(text):
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def claims_csv_response(coupons, *, filename):
    """A streamed CSV of the coupons' claims, whatever their status: coupon, user_id, claimed_at, code, status,
    redeemed_at, order_id (times ISO 8601, UTC; empty when not redeemed)."""
    writer = csv.writer(_Echo())
    rows = iter_claims_for_export(coupon_ids=[coupon.pk for coupon in coupons])

    def lines():
        yield writer.writerow(CSV_HEADER)
        for coupon_name, user_id, claimed_at, code, status, redeemed_at, order_id in rows:
            yield writer.writerow(
                [
                    spreadsheet_safe(coupon_name),
                    spreadsheet_safe(user_id),
                    claimed_at.isoformat(),
                    format_code(code),
                    status,
                    redeemed_at.isoformat() if redeemed_at else "",
                    spreadsheet_safe(order_id),
                ]
            )

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = content_disposition_header(as_attachment=True, filename=filename)
    return response
