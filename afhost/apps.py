from django.apps import AppConfig


class AfhostConfig(AppConfig):
    name = "afhost"
    verbose_name = "Agent host"

    def ready(self) -> None:
        import os

        from django_q.signals import post_spawn

        from afhost import checks  # noqa: F401 (registers the system checks)
        from afhost.db import forget_inherited_connections
        from afhost.engine import start_engine
        from afhost.registry import register_sweeper
        from afhost.services import sweep_runs

        register_sweeper(sweep_runs)
        # django-q2 sends it in each worker process it starts: the process's turns run there.
        post_spawn.connect(start_engine, dispatch_uid="afhost.start_engine")
        # django-q2 forks its processes from processes that may hold connections.
        os.register_at_fork(after_in_child=forget_inherited_connections)
