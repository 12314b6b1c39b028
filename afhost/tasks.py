"""django-q2 task functions: each takes a row id and hands its job to the worker engine."""

from __future__ import annotations

from afhost import execution
from afhost.engine import run_job


def execute_run(run_id: int) -> None:
    run_job(lambda: execution.run_background(run_id), name=f"run {run_id}")
