"""Webhook subscriptions: where events are POSTed, which ones, signed with which secret.

Created through the API (`POST /api/webhooks`) or the admin; delivered by
the worker in coupons/webhook_delivery.py. A subscription starts at the end
of the event log: it gets the events committed from its creation on.

Server-side request forgery: the service POSTs to URLs that its clients
choose, from inside the network it runs in. Unless WEBHOOK_ALLOW_PRIVATE is
on, a URL must be http(s) and its host must resolve only to public
addresses (not loopback, private, link-local — cloud metadata at
169.254.169.254 —, carrier-grade NAT, multicast, reserved...). It is
checked when the subscription is made and again at every delivery, where
the request then goes to the address that was checked, so that a DNS
answer that changes in between (DNS rebinding) cannot redirect it.
"""

import base64
import ipaddress
import secrets
import socket
import uuid
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection
from django.db.models import OuterRef, Q
from django.db.models.expressions import RawSQL

from coupons.exceptions import UnsafeWebhookUrl, WebhookNotFound
from coupons.models import Event, WebhookSubscription
from coupons.outbox import EVENT_TYPES, HORIZON_SQL, log_end

SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks form: "whsec_" + base64 of the key
SECRET_BYTES = 32


def create_subscription(
    *, url: str, event_types: list[str], created_by: str, description: str = ""
) -> WebhookSubscription:
    """A new subscription, with a new secret (on the returned object: shown once, never logged)."""
    check_url(url)
    unknown = set(event_types) - set(EVENT_TYPES)
    if unknown:
        raise ValueError(f"Unknown event types: {', '.join(sorted(unknown))}.")
    transaction_id, position = log_end()
    return WebhookSubscription.objects.create(
        url=url,
        event_types=sorted(set(event_types)),
        description=description,
        created_by=created_by,
        secret=new_secret(),
        start_transaction_id=transaction_id,
        start_position=position,
        cursor_transaction_id=transaction_id,
        cursor_position=position,
    )


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def delete_subscription(*, subscription_id: uuid.UUID) -> None:
    """Delete the subscription and its delivery history; nothing more is sent to it."""
    deleted, _ = WebhookSubscription.objects.filter(pk=subscription_id).delete()
    if not deleted:
        raise WebhookNotFound()


def list_subscriptions():
    return WebhookSubscription.objects.order_by("-created_at")


def waiting_events():
    """The events after the cursor of the subscription of the outer query (OuterRef), behind the log's horizon."""
    waiting = Event.objects.filter(
        Q(transaction_id__gt=OuterRef("cursor_transaction_id"))
        | Q(transaction_id=OuterRef("cursor_transaction_id"), position__gt=OuterRef("cursor_position"))
    )
    if connection.vendor == "postgresql":
        waiting = waiting.filter(transaction_id__lt=RawSQL(HORIZON_SQL, []))  # noqa: S611 - a constant
    return waiting.order_by("transaction_id", "position")


def check_url(url: str) -> None:
    """Raise UnsafeWebhookUrl unless `url` is an http(s) URL of a public host (any host with WEBHOOK_ALLOW_PRIVATE)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeWebhookUrl("Webhook URLs must start with http:// or https:// and name a host.")
    if parts.username is not None or parts.password is not None:
        # They would be sent, stored and shown in clear: put a secret in the path, or verify the signature.
        raise UnsafeWebhookUrl("Webhook URLs cannot hold credentials (user:password@).")
    try:
        port = parts.port
    except ValueError:
        raise UnsafeWebhookUrl("The URL's port is not a number from 0 to 65535.") from None
    safe_address(parts.hostname, port or (443 if parts.scheme == "https" else 80))


def safe_address(host: str, port: int) -> str:
    """The address to connect to for `host`: one it resolves to, all of which must be public (see the module)."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise UnsafeWebhookUrl(f"The webhook's host {host!r} cannot be resolved.") from None
    addresses = [info[4][0] for info in found]
    if not settings.WEBHOOK_ALLOW_PRIVATE:
        for address in addresses:
            if not is_public(address):
                raise UnsafeWebhookUrl(
                    f"The webhook's host resolves to {address}, which is not a public address"
                    " (set WEBHOOK_ALLOW_PRIVATE=1 for receivers on a private network)."
                )
    return addresses[0]


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])  # an IPv6 zone ("fe80::1%eth0") is never public anyway
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return ip.is_global and not ip.is_multicast
