"""Events for subscribers: webhook subscriptions (`/api/webhooks`) and the event log itself (`GET /api/events`)."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from coupons.api.idempotency import idempotent
from coupons.api.permissions import StaffOrKeyWithScope, operator_name
from coupons.api.serializers import (
    EventsPageSerializer,
    EventsQuerySerializer,
    WebhookCreatedSerializer,
    WebhookCreateInputSerializer,
    WebhookSerializer,
)
from coupons.api.views import BODY_ERRORS, COMMON_ERRORS, error_response_schema
from coupons.outbox import as_message, events_after, log_position_of
from coupons.webhooks import create_subscription, delete_subscription, list_subscriptions


def never_anonymous(scope):
    return {
        401: error_response_schema("No valid token, session or API key was sent."),
        403: error_response_schema(
            f"The user is not staff, the session's CSRF token is missing, or the key lacks `{scope}`."
        ),
    }


NEVER_ANONYMOUS = never_anonymous("webhooks")
# Explicit on each operation: without it the schema shows the permission mixin's docstring (for maintainers).
NEVER_ANONYMOUS_DESCRIPTION = "Staff, or an API key with the `webhooks` scope: never anonymous."


class WebhooksApi(StaffOrKeyWithScope, APIView):
    required_scope = "webhooks"

    @extend_schema(
        operation_id="webhooks_list",
        description=NEVER_ANONYMOUS_DESCRIPTION,
        summary="List the webhook subscriptions",
        responses={200: WebhookSerializer(many=True), **NEVER_ANONYMOUS, **COMMON_ERRORS},
    )
    def get(self, request):
        return Response(WebhookSerializer(list_subscriptions(), many=True).data)

    @extend_schema(
        operation_id="webhooks_create",
        summary="Subscribe a URL to events",
        description="Events are POSTed to the URL as JSON, signed the Standard Webhooks way with the secret this"
        " answer shows once. The subscription gets the events committed from now on.",
        request=WebhookCreateInputSerializer,
        responses={
            201: WebhookCreatedSerializer,
            400: error_response_schema(
                "Invalid input (code invalid), or a URL that is not http(s), holds credentials, cannot be"
                " resolved or resolves to a non-public address (code unsafe_webhook_url)."
            ),
            **NEVER_ANONYMOUS,
            **BODY_ERRORS,
            **COMMON_ERRORS,
        },
    )
    @idempotent
    def post(self, request):
        serializer = WebhookCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        subscription = create_subscription(**serializer.validated_data, created_by=operator_name(request))
        return Response(WebhookCreatedSerializer(subscription).data, status=status.HTTP_201_CREATED)


class WebhookDetailApi(StaffOrKeyWithScope, APIView):
    required_scope = "webhooks"

    @extend_schema(
        operation_id="webhooks_delete",
        description=NEVER_ANONYMOUS_DESCRIPTION,
        summary="Delete a webhook subscription",
        responses={
            204: OpenApiResponse(description="Deleted: nothing more is sent to it."),
            404: error_response_schema("No subscription has this id."),
            **NEVER_ANONYMOUS,
            **COMMON_ERRORS,
        },
    )
    @idempotent
    def delete(self, request, subscription_id):
        delete_subscription(subscription_id=subscription_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class EventsApi(StaffOrKeyWithScope, APIView):
    """Never anonymous, whether or not API_KEYS_REQUIRED is on: the log names every claimer and carries every
    claim's code (a bearer secret), so it is read by staff or a key with the `read` scope."""

    required_scope = "read"

    @extend_schema(
        operation_id="events_list",
        summary="The event log, for pull consumers",
        description="Events in commit order, from just after `after` (keyset pagination): pass the `next` of a"
        " page as `after` to get the events that follow. An event is listed once every transaction older than"
        " its own has ended, so a consumer following `next` never misses one. Staff, or an API key with the `read`"
        " scope: never anonymous (events carry claim codes).",
        parameters=[EventsQuerySerializer],
        responses={
            200: EventsPageSerializer,
            400: error_response_schema(
                "`limit` is not an integer from 1 to 1000, `after` is no event's id (events are kept"
                " EVENT_RETENTION_DAYS), or a parameter is sent empty (`?after=`): leave it out instead."
            ),
            **never_anonymous("read"),
            **COMMON_ERRORS,
        },
    )
    def get(self, request):
        query = EventsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        after = query.validated_data.get("after")
        position = None
        if after is not None:
            position = log_position_of(event_id=after)
            if position is None:
                raise ValidationError({"after": "No event has this id (events are kept EVENT_RETENTION_DAYS)."})
        events = [as_message(event) for event in events_after(after=position, limit=query.validated_data["limit"])]
        next_id = events[-1]["id"] if events else (str(after) if after is not None else None)
        return Response({"events": events, "next": next_id})
