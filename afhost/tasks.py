"""django-q2 task functions: each takes a row id and calls one service."""

from __future__ import annotations

from afhost import services


def execute_run(run_id: int) -> None:
    services.execute_background_run(run_id=run_id)


def sweep_runs() -> None:
    services.sweep_runs()
