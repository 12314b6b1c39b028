from django.apps import AppConfig


class AfhostConfig(AppConfig):
    name = "afhost"
    verbose_name = "Agent host"

    def ready(self) -> None:
        from afhost import checks  # noqa: F401 (registers the system checks)
