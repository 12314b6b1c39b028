from django.apps import AppConfig


class DeliveryConfig(AppConfig):
    name = "delivery"
    verbose_name = "Delivery"

    def ready(self) -> None:
        from afhost.registry import register_finish_hook, register_sweeper
        from delivery.services import schedule_deliveries, sweep_deliveries

        register_finish_hook(schedule_deliveries)
        register_sweeper(sweep_deliveries)
