from django.urls import path

from delivery import api, views

app_name = "delivery"

urlpatterns = [
    # Inside the admin's URL space (included before the admin's own URLs).
    path("admin/delivery/dashboard/", views.dashboard, name="dashboard"),
    path("admin/delivery/dashboard.json", views.dashboard_json, name="dashboard_json"),
    # The operator REST API (staff tokens).
    path("api/deliveries/", api.DeliveryListApi.as_view(), name="api_delivery_list"),
    path("api/deliveries/stats/", api.DeliveryStatsApi.as_view(), name="api_delivery_stats"),
    path("api/deliveries/retry/", api.DeliveryRetryApi.as_view(), name="api_delivery_retry"),
    path("api/deliveries/cancel/", api.DeliveryCancelApi.as_view(), name="api_delivery_cancel"),
    path("api/deliveries/<int:pk>/", api.DeliveryDetailApi.as_view(), name="api_delivery_detail"),
]
