from django.apps import AppConfig


class AfhostConfig(AppConfig):
    name = "afhost"
    verbose_name = "Agent host"

    def ready(self) -> None:
        from django_q.signals import post_spawn

        from afhost import checks  # noqa: F401 (registers the system checks)
        from afhost.engine import start_engine
        from afhost.registry import register_sweeper
        from afhost.services import sweep_runs

        register_sweeper(sweep_runs)
        # django-q2 sends it in each worker process it starts: the process's turns run there.
        post_spawn.connect(start_engine, dispatch_uid="afhost.start_engine")
