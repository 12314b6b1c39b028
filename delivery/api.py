"""The operator REST API for deliveries (Django REST framework), for staff with a token.

Authentication and the staff check come from settings.REST_FRAMEWORK (a token from the admin's
"Tokens" page, or the admin session); on top, reading needs the view permission on deliveries
and retrying or cancelling the change permission, as in the admin.
"""

from __future__ import annotations

from django.http import Http404
from rest_framework import serializers
from rest_framework.pagination import CursorPagination
from rest_framework.permissions import BasePermission, IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from delivery import selectors, services
from delivery.models import DeliveryTask

MAX_IDS = 1000


class CanViewDeliveries(BasePermission):
    def has_permission(self, request, view) -> bool:
        return request.user.has_perm("delivery.view_deliverytask")


class CanOperateDeliveries(BasePermission):
    def has_permission(self, request, view) -> bool:
        return request.user.has_perm("delivery.change_deliverytask")


class DeliveryOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="pk")
    status = serializers.CharField()
    channel = serializers.CharField()
    phase = serializers.CharField()
    destination = serializers.CharField()
    locator = serializers.JSONField()
    identity = serializers.SerializerMethodField()
    response_id = serializers.SerializerMethodField()
    attempts = serializers.IntegerField()
    max_attempts = serializers.IntegerField()
    next_attempt_at = serializers.DateTimeField()
    sent_parts = serializers.IntegerField()
    last_error = serializers.CharField()
    sent_at = serializers.DateTimeField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_identity(self, task: DeliveryTask) -> dict | None:
        identity = task.identity
        if identity is None:
            return None
        return {
            "channel": identity.channel,
            "native_id": identity.native_id,
            "username": identity.username,
        }

    def get_response_id(self, task: DeliveryTask) -> str:
        return task.run.response_id


class DeliveryListApi(APIView):
    permission_classes = [IsAdminUser, CanViewDeliveries]

    class Pagination(CursorPagination):
        # Newest first: the created_at indexes (with status or channel when filtered).
        ordering = ("-created_at", "-pk")
        page_size = 50
        page_size_query_param = "limit"
        max_page_size = 500

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=DeliveryTask.Status.choices, required=False)
        channel = serializers.CharField(required=False, max_length=32)
        phase = serializers.ChoiceField(choices=DeliveryTask.Phase.choices, required=False)

    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        deliveries = selectors.list_deliveries(**filters.validated_data)
        paginator = self.Pagination()
        page = paginator.paginate_queryset(deliveries, request, view=self)
        return paginator.get_paginated_response(DeliveryOutputSerializer(page, many=True).data)


class AttemptOutputSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    outcome = serializers.CharField()
    error = serializers.CharField()
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField()


class DeliveryDetailApi(APIView):
    permission_classes = [IsAdminUser, CanViewDeliveries]

    class OutputSerializer(DeliveryOutputSerializer):
        text = serializers.CharField()
        # Every try, in order, with how it ended and its error.
        attempt_log = AttemptOutputSerializer(many=True)

    def get(self, request: Request, pk: int) -> Response:
        task = selectors.get_delivery(pk=pk)
        if task is None:
            raise Http404
        return Response(self.OutputSerializer(task).data)


class _BulkApi(APIView):
    """POST {"ids": [...]}: the deliveries to act on; answers how many it changed."""

    permission_classes = [IsAdminUser, CanOperateDeliveries]
    result = ""

    class InputSerializer(serializers.Serializer):
        ids = serializers.ListField(
            child=serializers.IntegerField(min_value=1), min_length=1, max_length=MAX_IDS
        )

    def act(self, tasks) -> int:
        raise NotImplementedError

    def post(self, request: Request) -> Response:
        given = self.InputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        count = self.act(DeliveryTask.objects.filter(pk__in=given.validated_data["ids"]))
        return Response({self.result: count})


class DeliveryRetryApi(_BulkApi):
    result = "retried"

    def act(self, tasks) -> int:
        return services.retry_deliveries(tasks=tasks)


class DeliveryCancelApi(_BulkApi):
    result = "cancelled"

    def act(self, tasks) -> int:
        return services.cancel_deliveries(tasks=tasks)


class DeliveryStatsApi(APIView):
    permission_classes = [IsAdminUser, CanViewDeliveries]

    def get(self, request: Request) -> Response:
        return Response(selectors.delivery_stats().as_dict())
