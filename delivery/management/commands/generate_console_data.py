"""Fill a PostgreSQL database with a console's worth of history, for timing the admin pages.

    manage.py generate_console_data [--runs 1000000] [--deliveries 1000000] [--days 7]

Everything is generated inside PostgreSQL, one INSERT ... SELECT over generate_series per
table (no rows travel through Python): people's identities, runs (mostly completed, some failed
or still running, over the API and Telegram), one delivery per run for the first `--deliveries`
runs (statuses, channels and phases mixed, some overdue, some retried up to six times), and one
DeliveryAttempt per attempt made. Ages are spread evenly over the last `--days` days, so the
last hour holds its share, as on a live system. Every generated row is marked (runs' metadata
`{"generated": "console"}`, deliveries' idempotency keys `generated:...`) and appended to what
is there; run it on a database of its own.

Columns the command does not know (added later to a model) get their field's default, or NULL
when the field allows it; a required column without either stops it, naming the column.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.core.management.base import BaseCommand, CommandError
from django.db import connection, models, transaction

from afhost.models import Run
from delivery.models import DeliveryAttempt, DeliveryTask
from linking.models import Identity

GENERATED = "generated"

# One row's random draws, made once per row in the inner SELECT of each statement.
IDENTITIES_SQL = """
SELECT g,
       CASE WHEN g %% 4 = 0 THEN 'api' ELSE 'telegram' END AS channel,
       CASE WHEN g %% 4 = 0 THEN 'key.' || md5('key' || g)::uuid::text
            ELSE (100000000 + g)::text END AS native_id
FROM generate_series(1, %(identities)s) AS g
"""

IDENTITY_COLUMNS = {
    "created_at": "now() - interval '30 days'",
    "updated_at": "now() - interval '1 day'",
    "public_id": "gen_random_uuid()",
    "channel": "channel",
    "native_id": "'" + GENERATED + ":' || native_id",
    "display_name": "'Person ' || g",
    "username": "'person_' || g",
    "attributes": "'{}'::jsonb",
    "isolation_key": "channel || ':" + GENERATED + ":' || native_id",
    "last_seen_at": "now() - random() * interval '7 days'",
}

RUNS_SQL = """
SELECT g, u, v, created_at, person,
       CASE WHEN person %% 4 = 0 THEN 'api' ELSE 'telegram' END AS channel,
       CASE WHEN v < 0.93 THEN 'completed' WHEN v < 0.97 THEN 'failed'
            WHEN v < 0.98 THEN 'cancelled' WHEN v < 0.99 THEN 'incomplete'
            WHEN v < 0.995 THEN 'in_progress' ELSE 'queued' END AS status
FROM (
    SELECT g, random() AS u, random() AS v, 1 + (g::bigint * 7919) %% %(identities)s AS person,
           now() - random() * (%(days)s * interval '1 day') AS created_at
    FROM generate_series(1, %(runs)s) AS g
) AS draws
"""


def _message(role: str, text: str) -> str:
    return (
        "jsonb_build_array(jsonb_build_object('type', 'message', 'role', '" + role + "', "
        "'contents', jsonb_build_array(jsonb_build_object('type', 'text', 'text', " + text + ", "
        "'additional_properties', '{}'::jsonb)), 'additional_properties', '{}'::jsonb))"
    )


ANSWER = "'Answer ' || g || ': here is what I found, in a few sentences of plain text that an "
ANSWER += "operator may want to read when a delivery failed.'"
TERMINAL = "status IN ('completed', 'failed', 'cancelled', 'incomplete')"

RUN_COLUMNS = {
    "created_at": "created_at",
    "updated_at": f"CASE WHEN {TERMINAL} THEN created_at + interval '3 seconds' "
    "ELSE created_at END",
    "lease_owner": "CASE WHEN status = 'in_progress' THEN substr(md5(g::text), 1, 16) ELSE '' END",
    "lease_expires_at": "CASE WHEN status = 'in_progress' THEN now() + interval '20 seconds' END",
    "public_id": "gen_random_uuid()",
    "channel": "channel",
    "isolation_key": "channel || ':" + GENERATED + ":' || "
    "CASE WHEN channel = 'api' THEN 'key.' || md5('key' || person)::uuid::text "
    "ELSE (100000000 + person)::text END",
    "status": "status",
    "is_background": "u < 0.2",
    "is_streamed": "u >= 0.2 AND u < 0.5",
    "is_stored": "true",
    "model": "CASE WHEN v < 0.5 THEN 'gpt-4.1' ELSE 'gpt-4.1-mini' END",
    "instructions": "''",
    "options": "'{}'::jsonb",
    "metadata": "'{\"" + GENERATED + '": "console"}\'::jsonb',
    "response_target": "CASE WHEN g <= %(deliveries)s THEN jsonb_build_object("
    "'targets', jsonb_build_array('all_linked'), 'echo_input', false, "
    "'from', jsonb_build_object('channel', channel, 'native_id', 'person ' || person)) END",
    "attributes": "'{}'::jsonb",
    "input_messages": _message("user", "'Question ' || g || ': what is new today?'"),
    "output_messages": f"CASE WHEN status IN ('completed', 'incomplete') THEN "
    f"{_message('assistant', ANSWER)} ELSE '[]'::jsonb END",
    "truncation": "'auto'",
    "output_items": "CASE WHEN status IN ('completed', 'incomplete') THEN jsonb_build_array("
    "jsonb_build_object('id', 'msg_' || md5(g::text), 'type', 'message', 'role', 'assistant', "
    "'status', 'completed', 'content', jsonb_build_array(jsonb_build_object("
    f"'type', 'output_text', 'text', {ANSWER}, 'annotations', '[]'::jsonb)))) "
    "ELSE '[]'::jsonb END",
    "finish_reason": "CASE WHEN status = 'completed' THEN 'stop' "
    "WHEN status = 'incomplete' THEN 'length' ELSE '' END",
    "usage": f"CASE WHEN {TERMINAL} THEN jsonb_build_object('input_tokens', 20 + g %% 50, "
    "'output_tokens', 40 + g %% 200, 'total_tokens', 60 + g %% 50 + g %% 200) END",
    "error": "CASE WHEN status = 'failed' THEN jsonb_build_object('code', 'server_error', "
    "'message', 'The agent failed to answer.') END",
    "error_detail": "CASE WHEN status = 'failed' THEN 'TimeoutError: the model did not answer "
    "within 600 s' ELSE '' END",
    "enqueued_at": "CASE WHEN u < 0.2 THEN created_at END",
    "started_at": "CASE WHEN status <> 'queued' THEN created_at + interval '50 milliseconds' END",
    "completed_at": f"CASE WHEN {TERMINAL} THEN created_at + interval '3 seconds' END",
}

# The first `deliveries` generated runs, numbered 1.. in id order, get one delivery each.
DELIVERIES_SQL = """
SELECT n AS g, run_id, public_id, created_at, u, v, w, x,
       CASE WHEN u < 0.90 THEN 'sent' WHEN u < 0.94 THEN 'failed'
            WHEN u < 0.95 THEN 'overdue' WHEN u < 0.96 THEN 'pending'
            WHEN u < 0.965 THEN 'sending' WHEN u < 0.98 THEN 'cancelled'
            ELSE 'interrupted' END AS state,
       CASE WHEN x < 0.8 THEN 'telegram' WHEN x < 0.95 THEN 'msteams' ELSE 'slack' END
           AS channel
FROM (
    SELECT row_number() OVER (ORDER BY id) AS n, id AS run_id, public_id,
           created_at + interval '3 seconds' AS created_at,
           random() AS u, random() AS v, random() AS w, random() AS x
    FROM afhost_run WHERE id BETWEEN %(first_run)s AND %(last_run)s
) AS runs
WHERE n <= %(deliveries)s
"""

ATTEMPTS = (
    "CASE state WHEN 'sent' THEN CASE WHEN v < 0.9 THEN 1 WHEN v < 0.97 THEN 2 "
    "ELSE 3 + floor(w * 3)::int END "
    "WHEN 'failed' THEN 6 WHEN 'overdue' THEN 1 + floor(v * 5)::int "
    "WHEN 'pending' THEN floor(v * 5)::int WHEN 'sending' THEN 1 + floor(v * 3)::int "
    "WHEN 'cancelled' THEN floor(v * 3)::int ELSE 1 + floor(v * 2)::int END"
)
ERRORS = (
    "CASE WHEN state = 'failed' THEN CASE WHEN v < 0.5 THEN "
    "'Telegram refused: Forbidden: bot was blocked by the user' WHEN v < 0.8 THEN "
    "'Telegram unreachable: NetworkError: httpx.ConnectTimeout' ELSE "
    "'Telegram rejected the message: Chat not found' END "
    "WHEN state = 'interrupted' THEN 'The worker stopped while the channel was receiving this "
    "message: it may have arrived, so it was not sent again. Retry it if the person did not get "
    "it.' WHEN state IN ('overdue', 'pending') AND v > 0.2 THEN "
    "'Telegram unreachable: NetworkError: Bad Gateway' ELSE '' END"
)

DELIVERY_COLUMNS = {
    "created_at": "created_at",
    "updated_at": "created_at + interval '1 second'",
    "lease_owner": "CASE WHEN state = 'sending' THEN substr(md5(g::text), 1, 16) ELSE '' END",
    "lease_expires_at": "CASE WHEN state = 'sending' THEN now() + interval '20 seconds' END",
    "run_id": "run_id",
    "channel": "channel",
    # A third reach a person through their identity (the others name a chat).
    "identity_id": "CASE WHEN w < 0.33 THEN "
    "%(first_identity)s + (g::bigint * 7919) %% %(identities)s END",
    "locator": "jsonb_build_object('chat_id', 100000000 + g %% 50000, 'thread_id', null)",
    "phase": "CASE WHEN g %% 10 = 0 THEN 'echo' ELSE 'answer' END",
    "text": ANSWER,
    "after_id": "NULL",
    "idempotency_key": "'" + GENERATED + ":' || public_id || ':' || g",
    "status": "CASE WHEN state = 'overdue' THEN 'pending' ELSE state END",
    "attempts": ATTEMPTS,
    "max_attempts": "6",
    "next_attempt_at": "CASE state WHEN 'overdue' THEN now() - interval '1 minute' "
    "- v * interval '2 hours' WHEN 'pending' THEN now() + v * interval '5 minutes' "
    "ELSE created_at END",
    "sent_parts": "CASE WHEN state = 'sent' THEN 1 ELSE 0 END",
    "last_error": ERRORS,
    "sent_at": "CASE WHEN state = 'sent' THEN created_at + interval '200 milliseconds' "
    "+ w * interval '3 seconds' END",
}

ATTEMPTS_SQL = """
SELECT t.id AS task_id, n, t.status, t.attempts, t.last_error,
       t.created_at + (n - 1) * interval '4 seconds' AS started_at
FROM delivery_deliverytask AS t,
     generate_series(1, t.attempts - CASE WHEN t.status = 'sending' THEN 1 ELSE 0 END) AS n
WHERE t.id BETWEEN %(first_task)s AND %(last_task)s
"""

ATTEMPT_COLUMNS = {
    "task_id": "task_id",
    "number": "n",
    "started_at": "started_at",
    # An attempt is recorded when it ends: a task being sent has none for its current one.
    "finished_at": "started_at + interval '150 milliseconds'",
    "outcome": "CASE WHEN n < attempts THEN 'retry' WHEN status = 'sent' THEN 'sent' "
    "WHEN status = 'failed' THEN 'failed' WHEN status = 'interrupted' THEN 'interrupted' "
    "ELSE 'retry' END",
    "error": "CASE WHEN n < attempts OR status <> 'sent' THEN "
    "coalesce(nullif(last_error, ''), 'Telegram unreachable: NetworkError: Bad Gateway') "
    "ELSE '' END",
}


def _insert(model: type[models.Model], columns: dict[str, str], source: str) -> str:
    """INSERT INTO the model's table SELECT one expression per column FROM (source).

    Columns not in `columns` get their field's default as a literal, or NULL when allowed."""
    names, values = [], []
    for field in model._meta.concrete_fields:
        if field.primary_key or getattr(field, "generated", False):
            continue
        column = field.column
        if column in columns:
            expression = columns[column]
        elif field.null and not field.has_default():
            expression = "NULL"
        elif (field.has_default() or field.empty_strings_allowed) and not (
            callable(field.default) and field.unique
        ):
            # One value for every row ("" for text without a default; a callable default is
            # called once).
            expression = _literal(field.get_db_prep_save(field.get_default(), connection))
        else:
            raise CommandError(
                f"{model._meta.label}.{field.name}: no value to generate (no default, not null)"
            )
        names.append(connection.ops.quote_name(column))
        values.append(expression)
    table = connection.ops.quote_name(model._meta.db_table)
    return (
        f"INSERT INTO {table} ({', '.join(names)}) "  # noqa: S608 (names from the models)
        f"SELECT {', '.join(values)} FROM ({source}) AS source"
    )


def _literal(value) -> str:
    """A value as an SQL literal (psycopg's own quoting), safe inside a statement that takes
    %(name)s parameters."""
    return connection.ops.compose_sql("%s", [value]).replace("%", "%%")  # type: ignore[attr-defined]


class Command(BaseCommand):
    help = "Append generated runs, deliveries and attempts to a PostgreSQL database (fast)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--runs", type=int, default=1_000_000)
        parser.add_argument("--deliveries", type=int, default=1_000_000)
        parser.add_argument("--identities", type=int, default=20_000)
        parser.add_argument("--days", type=float, default=7, help="ages spread over this many")

    def handle(self, *args, runs: int, deliveries: int, identities: int, days: float, **options):
        if connection.vendor != "postgresql":
            raise CommandError("generate_console_data needs PostgreSQL (DATABASE_URL=postgres://)")
        if deliveries > runs:
            raise CommandError("--deliveries cannot exceed --runs (one delivery per run)")
        if min(runs, identities) < 1 or deliveries < 0 or days <= 0:
            raise CommandError("--runs and --identities must be >= 1, --days > 0")
        params = {
            "runs": runs,
            "deliveries": deliveries,
            "identities": identities,
            "days": days,
        }
        started = time.monotonic()
        with transaction.atomic():
            params["first_identity"] = self._step(
                "identities",
                Identity,
                lambda: _insert(Identity, IDENTITY_COLUMNS, IDENTITIES_SQL),
                params,
            )[0]
            params["first_run"], params["last_run"] = self._step(
                "runs", Run, lambda: _insert(Run, RUN_COLUMNS, RUNS_SQL), params
            )
            params["first_task"], params["last_task"] = self._step(
                "deliveries",
                DeliveryTask,
                lambda: _insert(DeliveryTask, DELIVERY_COLUMNS, DELIVERIES_SQL),
                params,
            )
            self._step(
                "attempts",
                DeliveryAttempt,
                lambda: _insert(DeliveryAttempt, ATTEMPT_COLUMNS, ATTEMPTS_SQL),
                params,
            )
        with connection.cursor() as cursor:
            for model in (Identity, Run, DeliveryTask, DeliveryAttempt):
                cursor.execute(f"ANALYZE {connection.ops.quote_name(model._meta.db_table)}")
        self.stdout.write(f"done in {time.monotonic() - started:.1f}s (tables analysed)")

    def _step(
        self, label: str, model: type[models.Model], sql: Callable[[], str], params: dict
    ) -> tuple[int, int]:
        """Run one INSERT ... SELECT; the first and last id it added (contiguous: the next
        step refers to them by range)."""
        t0 = time.monotonic()
        table = connection.ops.quote_name(model._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT coalesce(max(id), 0) FROM {table}")  # noqa: S608
            before = cursor.fetchone()[0]
            cursor.execute(sql(), params)
            added = cursor.rowcount
            cursor.execute(
                f"SELECT min(id), max(id) FROM {table} WHERE id > %s",  # noqa: S608
                [before],
            )
            first, last = cursor.fetchone()
        if added and last - first + 1 != added:
            raise CommandError(
                f"{label}: ids {first}..{last} for {added} rows (someone else inserted meanwhile?)"
            )
        self.stdout.write(f"{label}: {added} rows in {time.monotonic() - t0:.1f}s")
        return first or before + 1, last or before
