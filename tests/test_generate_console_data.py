"""manage.py generate_console_data: a console's worth of generated history, for the console
bench (bench/console_bench.py). It needs PostgreSQL; on SQLite it refuses."""

import io

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import Sum

from afhost.models import Run
from delivery.models import DeliveryAttempt, DeliveryTask
from linking.models import Identity

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="generate_console_data needs PostgreSQL"
)


@pytest.mark.skipif(connection.vendor == "postgresql", reason="the SQLite refusal")
def test_generate_console_data_refuses_sqlite(db):
    with pytest.raises(CommandError, match="needs PostgreSQL"):
        call_command("generate_console_data", runs=10, deliveries=5)


@postgres_only
def test_generate_console_data_fills_runs_deliveries_and_their_attempts(db):
    # when
    call_command(
        "generate_console_data", runs=300, deliveries=200, identities=40, stdout=io.StringIO()
    )

    # then: marked rows, one delivery per run for the first 200 runs, one row per ended attempt
    runs = Run.objects.filter(metadata__generated="console")
    tasks = DeliveryTask.objects.filter(idempotency_key__startswith="generated:")
    assert (runs.count(), tasks.count()) == (300, 200)
    assert Identity.objects.filter(native_id__startswith="generated:").count() == 40
    assert tasks.values("run").distinct().count() == 200
    assert set(tasks.values_list("run__metadata__generated", flat=True)) == {"console"}
    # An attempt is recorded when it ends: a task being sent has none yet for its current one.
    made = tasks.aggregate(total=Sum("attempts"))["total"]
    in_flight = tasks.filter(status=DeliveryTask.Status.SENDING).count()
    assert DeliveryAttempt.objects.filter(task__in=tasks).count() == made - in_flight
    assert set(runs.values_list("status", flat=True)) <= set(Run.Status.values)
    assert set(tasks.values_list("status", flat=True)) <= set(DeliveryTask.Status.values)
    assert not tasks.filter(status=DeliveryTask.Status.SENT, sent_at__isnull=True).exists()
    assert not tasks.exclude(status=DeliveryTask.Status.SENT).filter(sent_at__isnull=False)


@postgres_only
def test_generate_console_data_refuses_more_deliveries_than_runs(db):
    with pytest.raises(CommandError, match="cannot exceed"):
        call_command("generate_console_data", runs=5, deliveries=6)
