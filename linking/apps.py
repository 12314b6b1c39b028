from django.apps import AppConfig


class LinkingConfig(AppConfig):
    name = "linking"
    verbose_name = "Identities and linking"

    def ready(self) -> None:
        from linking import checks  # noqa: F401 (registers the system checks)
