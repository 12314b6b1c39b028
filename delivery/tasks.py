"""django-q2 task functions: each takes a row id and hands its job to the worker engine."""

from __future__ import annotations

from afhost.engine import run_job
from delivery import services


def push_delivery(task_pk: int) -> None:
    run_job(lambda: services.push_delivery(task_pk), name=f"delivery {task_pk}")
