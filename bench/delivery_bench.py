"""Benchmark: durable pushes (delivery) through the workers to a Bot API that answers late.

afhost's worker runs as in production (`manage.py worker`: django-q2's cluster, ORM broker,
default 2 worker processes, each running its jobs in the worker engine) on a fresh PostgreSQL
database. Telegram's Bot API is tests/fakes/telegram_api.py's fake, in this process on
127.0.0.1, answering every call `--latency` ms (50) after it arrived.

Pushes are scheduled as production schedules them: completed runs whose response target names
a Telegram chat (`telegram:<chat id>`, one chat per run) are stored before the clock starts;
then a scheduler process (this file, `--child schedule`, with a worker process's database
settings) calls `delivery.services.schedule_deliveries(run)` for each, as the finishing
transaction does: the DeliveryTask row and its id queued with it (`enqueue` -> django-q2's
`async_task`: the queue row in the same transaction on this, the database, broker). Two ways,
`--pushes` (2,000) each:

- steady: one run per transaction, at `--rate` (200) runs a second;
- burst: all the runs in one transaction, so all the ids reach the workers at once, on commit.

Each is run with every send accepted, then with `--fail-share` (10 %) of the chats answering
their first sendMessage with a 500 (retried after DELIVERY_BACKOFF = `--backoff`, 0.2 s).

Reported per case: pushes/s (the scheduler's first task created -> the last task sent), p50 /
p99 / max of schedule-to-sent (each task's created_at -> sent_at), split at its first attempt's
start (queue wait, then claim + send + record), exactly once (each chat got one successful
sendMessage, none twice, no stray ones; every task `sent`, attempts as expected), the CPU
each process used (per push), rows and transactions per push from PostgreSQL's statistics.
Next to it, in the same run against the same fake, the same sends without afhost, from as many
client processes as worker processes with a worker's 32 connections each: raw asyncio sockets
(the fake's capacity), a plain httpx client, and python-telegram-bot's `Bot` as the workers
build it. Once per run also: the SQL of one push, and the CPU per push in one process without
the broker (before the worker starts).

    .venv/bin/python bench/delivery_bench.py [--database-url postgresql://...]
        [--pushes 2000] [--rate 200] [--latency 50] [--cases steady,burst,...]

Goals: >= 200 pushes/s, p99 < 1 s at the steady rate, every message delivered exactly once.
This is a benchmark, not a test: it exits 0 whatever the figures (2 when it could not measure,
130 when interrupted). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
BENCH_VENV = ROOT / ".bench-venv"
PY_SPY = "py-spy==0.4.3"
DEFAULT_DATABASE = "postgresql://afhost:afhost@127.0.0.1:5432/afhost_bench"
CASES = ("steady", "burst", "steady-failing", "burst-failing")
GOAL_RATE = 200.0  # pushes/s
GOAL_P99 = 1.0  # s, schedule-to-sent at the steady rate
# The workers' concurrency towards the Bot API: each worker process's engine bot keeps this
# many connections (channels_app.telegram.processing.ENGINE_BOT_CONNECTIONS).
BOT_CONNECTIONS = 32
CHAT_BASE = 700_000_000  # chats of case k: CHAT_BASE + k * CHAT_STRIDE + i
CHAT_STRIDE = 1_000_000
INPROCESS_SEQUENTIAL = 100  # pushes one at a time, in the in-process measure
ANSWER = (
    "Here is the answer to request {i}: the delivery bench checks that every message like this "
    "one reaches its chat exactly once, and how long it took to get there."
)


# ==========================================================================================
# The child processes: run with Django set up (scheduling) or without (the raw client).
# ==========================================================================================


def _django(*, as_worker: bool) -> None:
    if as_worker:
        # afhost.settings gives a worker process (`manage.py worker`) persistent connections
        # and no pool; a run's pushes are scheduled in a worker, where the run ends.
        sys.argv = [sys.argv[0], "worker"]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "afhost.settings")
    import django

    django.setup()


def _cpu_self() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_prepare(spec: dict) -> dict:
    """Store `count` completed runs whose response target is one chat each (before the clock)."""
    _django(as_worker=True)
    from agent_framework import Message
    from django.utils import timezone

    from afhost.models import Run

    now = timezone.now()
    runs = []
    for i in range(spec["count"]):
        chat = spec["chat_base"] + i
        runs.append(
            Run(
                channel="api",
                isolation_key="api:delivery-bench",
                status=Run.Status.COMPLETED,
                is_background=True,
                model="bench",
                response_target={
                    "targets": [f"telegram:{chat}"],
                    "echo_input": False,
                    "from": {"channel": "api", "native_id": "delivery-bench"},
                },
                input_messages=[Message(role="user", contents=[f"question {i}"]).to_dict()],
                output_messages=[
                    Message(role="assistant", contents=[ANSWER.format(i=i)]).to_dict()
                ],
                started_at=now,
                completed_at=now,
            )
        )
    created = Run.objects.bulk_create(runs, batch_size=500)
    pks = [run.pk for run in created]
    return {"first": min(pks), "last": max(pks)}


def child_schedule(spec: dict) -> dict:
    """Schedule the runs' pushes as the finishing transaction does: steady (one run per
    transaction at `rate` a second) or burst (all in one transaction)."""
    _django(as_worker=True)
    from django.db import transaction

    from afhost.models import Run
    from delivery.services import schedule_deliveries

    runs = list(Run.objects.filter(pk__range=(spec["first"], spec["last"])).order_by("pk"))
    # Warm up the connection and the code paths outside the clock.
    list(Run.objects.filter(pk=spec["first"]).values_list("pk"))
    cpu0 = _cpu_self()
    started = time.time()
    late = 0.0
    committed = started
    if spec["mode"] == "burst":
        with transaction.atomic():
            for run in runs:
                schedule_deliveries(run)
            committing = time.time()
        committed = committing  # the commit itself (with every queue row) took the rest
    else:
        interval = 1.0 / spec["rate"]
        clock = time.perf_counter()
        for i, run in enumerate(runs):
            due = clock + i * interval
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            else:
                late = max(late, -wait)
            with transaction.atomic():
                schedule_deliveries(run)
        committed = time.time()
    return {
        "started": started,
        "committed": committed,
        "enqueued": time.time(),
        "max_late": late,
        "cpu": _cpu_self() - cpu0,
    }


def _form(chat: int, text: str) -> dict:
    return {
        "chat_id": str(chat),
        "text": text,
        "parse_mode": "HTML",
        "link_preview_options": '{"is_disabled": true}',
    }


def _pace(spec: dict) -> None:
    """Wait for the common start time, so the clients of one reference start together."""
    time.sleep(max(0.0, spec["start_at"] - time.time()))


async def _sockets_client(spec: dict, url: str, bodies: list[bytes]) -> list[float]:
    """HTTP/1.1 over plain asyncio streams, `connections` keep-alive connections, each request
    in one write: the least a client can cost."""
    import asyncio

    parts = urlsplit(url)
    todo = list(reversed(range(len(bodies))))
    took: list[float] = []

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            while todo:
                body = bodies[todo.pop()]
                t0 = time.perf_counter()
                writer.write(
                    f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                    "Content-Type: application/x-www-form-urlencoded\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(head.split(b"\r\n")[0].decode())
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                took.append(time.perf_counter() - t0)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(spec["connections"])))
    return took


def child_send(spec: dict) -> dict:
    """One client process of a reference: `count` sendMessage calls to the fake,
    `connections` at a time, through raw sockets, a plain httpx client, or a PTB Bot built as
    a worker builds its own."""
    import asyncio
    from urllib.parse import urlencode

    client = spec["client"]
    if client == "ptb":
        _django(as_worker=True)
    chats = range(spec["chat_base"], spec["chat_base"] + spec["count"])
    texts = [ANSWER.format(i=chat - spec["chat_base"]) for chat in chats]
    url = f"{spec['base_url']}/sendMessage"

    async def go() -> dict:
        took: list[float] = []
        gate = asyncio.Semaphore(spec["connections"])
        if client == "sockets":
            bodies = [urlencode(_form(c, t)).encode() for c, t in zip(chats, texts, strict=True)]
            _pace(spec)
            cpu0, t0 = _cpu_self(), time.time()
            took = await _sockets_client(spec, url, bodies)
        elif client == "httpx":
            import httpx

            n = spec["connections"]
            limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
            async with httpx.AsyncClient(limits=limits, timeout=60) as http:

                async def one(chat: int, text: str) -> None:
                    async with gate:  # no queue in httpx's pool (it scans it on every change)
                        t1 = time.perf_counter()
                        (await http.post(url, data=_form(chat, text))).raise_for_status()
                        took.append(time.perf_counter() - t1)

                await http.post(url, data=_form(spec["chat_base"] - 1, "warm-up"))
                _pace(spec)
                cpu0, t0 = _cpu_self(), time.time()
                await asyncio.gather(*(one(c, t) for c, t in zip(chats, texts, strict=True)))
        else:
            from telegram.constants import ParseMode

            from channels_app.telegram.processing import NO_PREVIEW, make_bot
            from channels_app.telegram.rendering import render_reply

            async with make_bot(connections=spec["connections"]) as bot:

                async def one(chat: int, text: str) -> None:
                    async with gate:
                        t1 = time.perf_counter()
                        [part] = render_reply(text)
                        await bot.send_message(
                            chat,
                            part.html,
                            parse_mode=ParseMode.HTML,
                            link_preview_options=NO_PREVIEW,
                        )
                        took.append(time.perf_counter() - t1)

                _pace(spec)
                cpu0, t0 = _cpu_self(), time.time()
                await asyncio.gather(*(one(c, t) for c, t in zip(chats, texts, strict=True)))
        return {"started": t0, "ended": time.time(), "cpu": _cpu_self() - cpu0, "took": took}

    return asyncio.run(go())


def child_queries(spec: dict) -> dict:
    """The SQL one push costs, in this process (no broker, no engine): scheduling one run and
    pushing its task, as the scheduler and a worker's job do."""
    _django(as_worker=True)
    from asgiref.sync import async_to_sync
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from afhost.models import Run
    from delivery import services
    from delivery.models import DeliveryTask

    run = Run.objects.get(pk=spec["first"])
    with CaptureQueriesContext(connection) as scheduled:
        with transaction.atomic():
            [task] = services.schedule_deliveries(run)
    with CaptureQueriesContext(connection) as pushed:
        async_to_sync(services.push_delivery)(task.pk)
    status = DeliveryTask.objects.get(pk=task.pk).status

    def short(queries: list[dict]) -> list[str]:
        return [" ".join(q["sql"].split())[:150] for q in queries]

    return {
        "schedule": short(scheduled.captured_queries),
        "push": short(pushed.captured_queries),
        "status": status,
    }


def child_inprocess(spec: dict) -> dict:
    """CPU per push in one process, no broker: `count` pushes run as a worker's engine runs
    them, `concurrency` at a time (the engine's own limit), then one at a time. A quiet,
    repeatable measure of what a worker spends per push (run before the worker starts)."""
    _django(as_worker=True)
    import threading

    from django.db import transaction
    from django_q.models import OrmQ

    from afhost import engine
    from afhost.models import Run
    from delivery import services

    runs = list(Run.objects.filter(pk__range=(spec["first"], spec["last"])).order_by("pk"))
    cpu0 = _cpu_self()
    tasks = []
    for run in runs:
        with transaction.atomic():
            tasks += services.schedule_deliveries(run)
    schedule_cpu = _cpu_self() - cpu0
    OrmQ.objects.all().delete()  # queued for a worker; pushed here instead
    engine.start_engine()
    done = threading.Semaphore(0)

    def job(pk: int):
        async def push() -> None:
            try:
                await services.push_delivery(pk)
            finally:
                done.release()

        return push

    out = {"schedule_cpu_ms": schedule_cpu / len(runs) * 1e3}
    pks = [task.pk for task in tasks]
    sequential = pks[: spec["sequential"]]
    concurrent = pks[spec["sequential"] :]
    for label, batch, at_once in (
        ("concurrent", concurrent, True),
        ("sequential", sequential, False),
    ):
        cpu0, t0 = _cpu_self(), time.perf_counter()
        for pk in batch:
            engine.run_job(job(pk), name=f"delivery {pk}")
            if not at_once:
                done.acquire()
        if at_once:
            for _ in batch:
                done.acquire()
        seconds = time.perf_counter() - t0
        out[label] = {
            "pushes": len(batch),
            "per_s": len(batch) / seconds,
            "cpu_ms": (_cpu_self() - cpu0) / len(batch) * 1e3,
        }
    OrmQ.objects.all().delete()  # anything the sweepers queued meanwhile
    return out


CHILDREN = {
    "prepare": child_prepare,
    "schedule": child_schedule,
    "send": child_send,
    "queries": child_queries,
    "inprocess": child_inprocess,
}


def child_main(mode: str, spec_json: str) -> int:
    result = CHILDREN[mode](json.loads(spec_json))
    print("RESULT " + json.dumps(result))
    return 0


# ==========================================================================================
# The bench.
# ==========================================================================================


def _bench_imports():
    """Imports the bench itself needs (not the children: they must start light)."""
    global rb, tb, tub, BenchError, FakeTelegramApi, _ApiError
    from bench import responses_bench as rb
    from bench import telegram_bench as tb
    from bench import turns_bench as tub
    from bench.responses_bench import BenchError
    from tests.fakes.telegram_api import FakeTelegramApi, _ApiError


def run_child(mode: str, spec: dict, env: dict[str, str], *, timeout: float = 300) -> dict:
    out = rb.run_checked(
        [str(VENV_PYTHON), __file__, "--child", mode, json.dumps(spec)],
        env=env,
        what=f"the {mode} child",
        timeout=timeout,
    )
    line = next(line for line in reversed(out.splitlines()) if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def make_fake(latency: float):
    class BenchFake(FakeTelegramApi):
        """The fake Bot API; chats in `fail_once` answer their first sendMessage with a 500."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.fail_once: set[int] = set()
            self._failed: set[int] = set()
            self.sent = 0  # successful sendMessage calls so far

        def sent_count(self) -> int:
            with self._cond:
                return self.sent

        def _send_message(self, params):
            chat = params.get("chat_id")
            with self._cond:
                first = chat in self.fail_once and chat not in self._failed
                if first:
                    self._failed.add(chat)
            if first:
                raise _ApiError(500, "Internal Server Error")
            message = super()._send_message(params)
            with self._cond:
                self.sent += 1
            return message

    return BenchFake(tb.TOKEN, latency=latency).start()


# --- CPU, from /proc ---


def _ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return (total - idle) / _ticks(), total / _ticks()


def _stat(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def cpu_of(pid: int) -> float | None:
    """CPU seconds of a process so far (user + system)."""
    fields = _stat(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / _ticks()


class WorkerTree:
    """The worker's processes by role. django-q2 forks a sentinel, which forks the worker
    processes, then the monitor and the pusher (named from that order once, after the warm-up).
    A worker process is recycled after `recycle` tasks (django-q2's default: 500) and replaced,
    so every other child of the sentinel is a worker process. (Not the sentinel's reaped
    children's CPU: that is a recycled worker's whole life, partly counted already.)"""

    def __init__(self, worker: subprocess.Popen, workers: int) -> None:
        table = tub.proc_table()
        procs = [
            tub.ProcPeak(pid, depth, table[pid].started)
            for pid, depth in tub.tree(worker.pid, table).items()
        ]
        names = tub.roles(procs, workers)
        self.root = worker.pid
        self.fixed = {
            pid: name for pid, name in names.items() if name in ("sentinel", "monitor", "pusher")
        }
        self.fixed[worker.pid] = "manage.py worker"
        self.seen: set[int] = set(self.workers())

    def workers(self) -> list[int]:
        table = tub.proc_table()
        return [
            pid
            for pid, depth in tub.tree(self.root, table).items()
            if depth == 2 and pid not in self.fixed
        ]

    def cpu(self) -> dict[int, float]:
        """CPU so far by pid."""
        out = {}
        for pid in (*self.fixed, *self.workers()):
            value = cpu_of(pid)
            if value is not None:
                out[pid] = value
        self.seen.update(pid for pid in out if pid not in self.fixed)
        return out

    def role(self, pid: int) -> str:
        return self.fixed.get(pid, "worker processes")


def database_backends(db) -> list[int]:
    rows = db.rows(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid()",
        [],
    )
    return [pid for (pid,) in rows]


class CpuMeter:
    """CPU used between start() and stop(): the worker's processes by role, this database's
    PostgreSQL backends, this process (the fake Bot API's threads), and the machine in all.
    Sampled every half second meanwhile, so processes that end early (a recycled worker, the
    scheduler's backend) are counted up to their last sample."""

    def __init__(self, tree: WorkerTree, db) -> None:
        self.tree, self.db = tree, db

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.machine0 = machine_busy()
        self.last: dict[tuple[str, int], float] = {}
        self.seen0 = len(self.tree.seen)
        self.self0 = time.process_time()
        self.sample()
        self.first = dict(self.last)

    def sample(self) -> None:
        for pid, value in self.tree.cpu().items():
            self.last["w", pid] = value
        for pid in database_backends(self.db):
            value = cpu_of(pid)
            if value is not None:
                self.last["pg", pid] = value
        self.sampled = time.monotonic()

    def maybe_sample(self) -> None:
        if time.monotonic() - self.sampled >= 0.5:
            self.sample()

    def stop(self) -> dict:
        self.sample()
        busy1, total1 = machine_busy()
        wall = time.monotonic() - self.t0
        out: Counter[str] = Counter()
        for (kind, pid), value in self.last.items():
            used = value - self.first.get((kind, pid), 0.0)
            out["postgres (this database)" if kind == "pg" else self.tree.role(pid)] += used
        out["bench (fake Bot API)"] = time.process_time() - self.self0
        busy0, total0 = self.machine0
        return {
            "wall": wall,
            "by_process": dict(out),
            "machine_busy": busy1 - busy0,
            "machine_share": (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0,
            "worker_processes_started": len(self.tree.seen) - self.seen0,
        }


# --- PostgreSQL statistics ---


TABLES = ("delivery_deliverytask", "delivery_deliveryattempt", "django_q_ormq", "afhost_run")


def pg_stats(db) -> dict:
    rows = db.rows(
        "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables "
        "WHERE relname = ANY(%s)",
        [list(TABLES)],
    )
    out = {
        f"{name}.{kind}": value
        for name, *values in rows
        for kind, value in zip(("ins", "upd", "del"), values, strict=True)
    }
    [(commits, rollbacks)] = db.rows(
        "SELECT xact_commit, xact_rollback FROM pg_stat_database "
        "WHERE datname = current_database()",
        [],
    )
    out["xact"] = commits + rollbacks
    return out


def stats_delta(before: dict, after: dict) -> dict:
    return {key: after.get(key, 0) - before.get(key, 0) for key in after}


# --- one case ---


@dataclass
class Case:
    name: str
    mode: str  # steady | burst
    failing: bool
    pushes: int
    chat_base: int
    rate: float = 0.0
    # results
    seconds: float = 0.0  # first task created -> last task sent
    pushes_per_s: float = 0.0
    e2e: dict = field(default_factory=dict)  # created_at -> sent_at (Stats as dict)
    queue_wait: dict = field(default_factory=dict)  # created_at -> first attempt started
    in_job: dict = field(default_factory=dict)  # last attempt started -> sent_at (1 attempt)
    to_fake: dict = field(default_factory=dict)  # ... started -> sendMessage arrived at the fake
    after_fake: dict = field(default_factory=dict)  # ... sendMessage arrived -> sent_at
    scheduler: dict = field(default_factory=dict)
    statuses: dict = field(default_factory=dict)
    attempts: dict = field(default_factory=dict)
    delivered_once: int = 0
    duplicated: int = 0
    missing: int = 0
    stray: int = 0
    failed_sends: int = 0
    cpu: dict = field(default_factory=dict)
    pg: dict = field(default_factory=dict)
    pg_idle_xact_per_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def exactly_once(self) -> bool:
        return (
            self.delivered_once == self.pushes
            and not (self.duplicated or self.missing or self.stray)
            and self.statuses == {"sent": self.pushes}
        )

    @property
    def verdict(self) -> str:
        """Steady: kept up with a rate >= the goal, p99 under the goal. Burst: drained at >= the
        goal's rate. Both: exactly once."""
        if self.mode == "steady":
            kept_up = self.rate >= GOAL_RATE and self.scheduler.get("max_late", 1e9) < GOAL_P99
            ok = kept_up and self.e2e.get("p99_ms", 1e9) < GOAL_P99 * 1e3
        else:
            ok = self.pushes_per_s >= GOAL_RATE
        return "PASS" if ok and self.exactly_once else "FAIL"


def measure_case(case: Case, ctx: dict, args) -> Case:
    env, fake, db, worker = ctx["env"], ctx["fake"], ctx["db"], ctx["worker"]
    chats = [case.chat_base + i for i in range(case.pushes)]
    wanted = set(chats)
    # Every 1/share-th chat, spread evenly (i * share crosses an integer).
    share = args.fail_share if case.failing else 0.0
    fake.fail_once = {chat for i, chat in enumerate(chats) if int((i + 1) * share) > int(i * share)}
    prepared = run_child("prepare", {"count": case.pushes, "chat_base": case.chat_base}, env)
    wait_queue_empty(db, 60)
    idle0, idle_t0 = pg_stats(db), time.monotonic()
    time.sleep(args.settle)
    before = pg_stats(db)
    idle_rate = (before["xact"] - idle0["xact"]) / (time.monotonic() - idle_t0)
    meter = CpuMeter(ctx["tree"], db)
    spec = {"mode": case.mode, "rate": case.rate, **prepared}
    print(
        f"- {case.name}: {case.pushes} pushes, "
        + (f"{case.rate:g}/s" if case.mode == "steady" else "one transaction")
        + (f", {len(fake.fail_once)} chats fail once" if fake.fail_once else ""),
        flush=True,
    )
    meter.start()
    profiler = (
        start_profiler(ctx, args) if args.profile and case.name == args.profile_case else None
    )
    scheduler = rb.spawn(
        [str(VENV_PYTHON), __file__, "--child", "schedule", json.dumps(spec)],
        env=env,
        log=ctx["workdir"] / f"schedule-{case.name}.log",
    )
    deadline = time.monotonic() + args.timeout
    sent0 = fake.sent_count()
    while True:
        if fake.sent_count() - sent0 >= case.pushes or time.monotonic() > deadline:
            break
        tb.check_alive({"worker": (worker, ctx["worker_log"])})
        meter.maybe_sample()
        time.sleep(0.05)
    if profiler is not None:
        rb.stop_profiler(profiler)
    case.cpu = meter.stop()
    scheduler.wait(timeout=60)
    log = (ctx["workdir"] / f"schedule-{case.name}.log").read_text(errors="replace")
    if scheduler.returncode != 0 or "RESULT " not in log:
        raise BenchError(f"the scheduler failed ({scheduler.returncode}):\n{log[-3000:]}")
    case.scheduler = json.loads(log[log.rindex("RESULT ") + 7 :].splitlines()[0])
    time.sleep(1.0)  # a late duplicate would show up here
    wait_queue_empty(db, 30)
    time.sleep(args.stats_wait)  # PostgreSQL flushes an idle backend's counters within ~10 s
    case.pg = stats_delta(before, pg_stats(db))
    case.pg_idle_xact_per_s = idle_rate
    case.pg["xact_idle_estimate"] = round(idle_rate * (time.monotonic() - meter.t0))
    settle(case, fake, db, prepared, wanted)
    return case


def wait_queue_empty(db, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while db.rows("SELECT COUNT(*) FROM django_q_ormq", [])[0][0]:
        if time.monotonic() > deadline:
            return
        time.sleep(0.1)


def settle(case: Case, fake, db, prepared: dict, wanted: set[int]) -> None:
    """Figures and exactly-once checks, from the database and the fake's recorded calls."""
    rows = db.rows(
        """
        SELECT t.id, (t.locator->>'chat_id')::bigint, t.status, t.attempts,
               extract(epoch FROM t.created_at), extract(epoch FROM t.sent_at),
               extract(epoch FROM min(a.started_at)), extract(epoch FROM max(a.started_at))
        FROM delivery_deliverytask t LEFT JOIN delivery_deliveryattempt a ON a.task_id = t.id
        WHERE t.run_id BETWEEN %s AND %s
        GROUP BY t.id
        """,
        [prepared["first"], prepared["last"]],
    )
    case.statuses = dict(Counter(row[2] for row in rows))
    case.attempts = {str(k): v for k, v in sorted(Counter(row[3] for row in rows).items())}
    created = [float(row[4]) for row in rows]
    sent_rows = [row for row in rows if row[5] is not None]
    once = [r for r in sent_rows if r[3] == 1]  # sent at the first attempt
    if sent_rows:
        first, last = min(created), max(float(row[5]) for row in sent_rows)
        case.seconds = last - first
        case.pushes_per_s = len(sent_rows) / case.seconds if case.seconds else 0.0
        case.e2e = asdict(tb.stats([float(r[5]) - float(r[4]) for r in sent_rows]))
        case.queue_wait = asdict(tb.stats([float(r[6]) - float(r[4]) for r in sent_rows]))
        case.in_job = asdict(tb.stats([float(r[5]) - float(r[7]) for r in once]))
    ok: Counter[int] = Counter()
    arrived: dict[int, float] = {}  # chat -> its successful sendMessage's arrival (epoch)
    to_epoch = time.time() - time.monotonic()
    for call in fake.calls_to("sendMessage"):
        chat = call.params.get("chat_id")
        if call.failed:
            case.failed_sends += chat in wanted
            continue
        if chat in wanted:
            ok[chat] += 1
            arrived.setdefault(chat, call.at + to_epoch)
        elif case.chat_base <= chat < case.chat_base + CHAT_STRIDE:
            case.stray += 1
    # The attempt's start (claimed) -> the fake received its sendMessage -> sent_at recorded.
    split = [
        (arrived[r[1]] - float(r[7]), float(r[5]) - arrived[r[1]]) for r in once if r[1] in arrived
    ]
    case.to_fake = asdict(tb.stats([a for a, _ in split]))
    case.after_fake = asdict(tb.stats([b for _, b in split]))
    case.delivered_once = sum(1 for chat in wanted if ok[chat] == 1)
    case.duplicated = sum(1 for chat in wanted if ok[chat] > 1)
    case.missing = sum(1 for chat in wanted if ok[chat] == 0)
    expected_attempts = {"1": case.pushes - len(fake.fail_once), "2": len(fake.fail_once)}
    if {k: v for k, v in expected_attempts.items() if v} != case.attempts:
        case.problems.append(f"attempts {case.attempts}, expected {expected_attempts}")


# --- references ---


REFERENCES = {
    "sockets": "raw asyncio sockets",
    "httpx": "plain httpx",
    "ptb": "python-telegram-bot",
}


def references(ctx: dict, args) -> dict:
    """The same sends without afhost: as many client processes as worker processes, each with
    a worker's connections to the Bot API, all starting at once."""
    out = {}
    base = f"{ctx['fake'].url}/bot{tb.TOKEN}"
    share = -(-args.pushes // args.workers)
    for k, client in enumerate(REFERENCES):
        chat_base = CHAT_BASE + (len(CASES) + k + 1) * CHAT_STRIDE
        start_at = time.time() + 3.0  # after every client has started and warmed up
        procs = []
        for w in range(args.workers):
            count = min(share, args.pushes - w * share)
            spec = {
                "client": client,
                "count": count,
                "connections": BOT_CONNECTIONS,
                "base_url": base,
                "chat_base": chat_base + w * share,
                "start_at": start_at,
            }
            log = ctx["workdir"] / f"reference-{client}-{w}.log"
            cmd = [str(VENV_PYTHON), __file__, "--child", "send", json.dumps(spec)]
            procs.append((rb.spawn(cmd, env=ctx["env"], log=log), log))
        results = []
        for proc, log in procs:
            proc.wait(timeout=args.timeout)
            text = log.read_text(errors="replace")
            if proc.returncode != 0 or "RESULT " not in text:
                raise BenchError(
                    f"the {client} reference failed ({proc.returncode}):\n{text[-3000:]}"
                )
            results.append(json.loads(text[text.rindex("RESULT ") + 7 :].splitlines()[0]))
        seconds = max(r["ended"] for r in results) - min(r["started"] for r in results)
        took = [t for r in results for t in r["took"]]
        recorded = sum(
            1
            for call in ctx["fake"].calls_to("sendMessage")
            if chat_base <= call.params.get("chat_id", 0) < chat_base + args.pushes
        )
        out[REFERENCES[client]] = {
            "sends_per_s": len(took) / seconds,
            "seconds": seconds,
            "client_cpu_ms": sum(r["cpu"] for r in results) / len(took) * 1e3,
            "per_send": asdict(tb.stats(took)),
            "connections": f"{args.workers} x {BOT_CONNECTIONS}",
            "recorded": recorded,
        }
        ref = out[REFERENCES[client]]
        print(
            f"- reference {REFERENCES[client]}: {ref['sends_per_s']:.0f} sends/s, "
            f"{ref['client_cpu_ms']:.2f} ms client CPU per send",
            flush=True,
        )
    return out


def measure_inprocess(env: dict[str, str], args) -> dict:
    """CPU per push in one process with no broker (before the worker starts)."""
    count = args.inprocess + INPROCESS_SEQUENTIAL
    chat_base = CHAT_BASE - 3 * CHAT_STRIDE
    prepared = run_child("prepare", {"count": count, "chat_base": chat_base}, env)
    spec = {**prepared, "sequential": INPROCESS_SEQUENTIAL}
    result = run_child("inprocess", spec, env)
    print(
        f"- in one process, no broker: {result['concurrent']['cpu_ms']:.2f} ms CPU per push "
        f"with up to {args.concurrency} at once ({result['concurrent']['per_s']:.0f}/s), "
        f"{result['sequential']['cpu_ms']:.2f} one at a time; scheduling "
        f"{result['schedule_cpu_ms']:.2f}",
        flush=True,
    )
    return result


# --- profiling ---


def ensure_py_spy() -> Path:
    py_spy = BENCH_VENV / "bin" / "py-spy"
    if not py_spy.exists():
        python = BENCH_VENV / "bin" / "python"
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
        print(f"  installing {PY_SPY} into {BENCH_VENV.relative_to(ROOT)} ...")
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", PY_SPY], check=True, timeout=600
        )
    return py_spy


def start_profiler(ctx: dict, args) -> subprocess.Popen | None:
    tree: WorkerTree = ctx["tree"]
    wanted = args.profile_process
    if wanted == "worker":
        pids = tree.workers()
    else:
        pids = [pid for pid, name in tree.fixed.items() if name == wanted]
    if not pids:
        print(f"  (no {wanted} process to profile)")
        return None
    out = Path(args.profile).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(ensure_py_spy()),
        "record",
        "--pid",
        str(pids[0]),
        "--format",
        {".json": "speedscope", ".txt": "raw"}.get(out.suffix, "flamegraph"),
        "--output",
        str(out),
        "--duration",
        str(int(args.timeout)),
        "--rate",
        "250",
        "--nonblocking",
        "--gil",
    ]
    print(f"  profiling the {wanted} (pid {pids[0]}) with py-spy into {out}")
    with (ctx["workdir"] / "py-spy.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    rb._children.append(proc)
    time.sleep(0.5)
    return proc


# --- report ---


def ms(stats: dict, key: str) -> str:
    value = stats.get(key)
    return "-" if value is None or value != value else f"{value:.0f}"


def report(cases: list[Case], refs: dict, queries: dict, args) -> None:
    print()
    print(
        f"delivery bench: {args.pushes} pushes per case, {args.workers} worker processes, "
        f"Bot API +{args.latency:g} ms, DELIVERY_BACKOFF={args.backoff:g}s, "
        f"AFHOST_QUEUE_POLL={args.poll:g}s"
    )
    fake_cap = refs.get(REFERENCES["sockets"], {}).get("sends_per_s")
    ptb = refs.get(REFERENCES["ptb"], {}).get("sends_per_s")

    def ratio(rate: float, of: float | None) -> str:
        return f"{rate / of:.2f}x" if of else "-"

    print(
        "| case | pushes/s | / fake's capacity | / PTB alone | p50 ms | p99 ms | max ms "
        "| queue wait p50 / p99 ms | in job p50 / p99 ms | exactly once | goal |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for c in cases:
        once = (
            "yes"
            if c.exactly_once
            else (
                f"NO ({c.delivered_once} once, {c.duplicated} twice+, {c.missing} missing, "
                f"{c.stray} stray, {c.statuses})"
            )
        )
        print(
            f"| {c.name} | {c.pushes_per_s:.0f} | {ratio(c.pushes_per_s, fake_cap)} | "
            f"{ratio(c.pushes_per_s, ptb)} | {ms(c.e2e, 'p50_ms')} | {ms(c.e2e, 'p99_ms')} | "
            f"{ms(c.e2e, 'max_ms')} | {ms(c.queue_wait, 'p50_ms')} / "
            f"{ms(c.queue_wait, 'p99_ms')} | {ms(c.in_job, 'p50_ms')} / {ms(c.in_job, 'p99_ms')} "
            f"| {once} | {c.verdict} |"
        )
    for name, ref in refs.items():
        each = ref["per_send"]
        print(
            f"| reference: {name}, {ref['connections']} connections | {ref['sends_per_s']:.0f} | "
            f"{ratio(ref['sends_per_s'], fake_cap)} | {ratio(ref['sends_per_s'], ptb)} | "
            f"{ms(each, 'p50_ms')} | {ms(each, 'p99_ms')} | {ms(each, 'max_ms')} | | | "
            f"{ref['recorded']}/{args.pushes} recorded; client CPU "
            f"{ref['client_cpu_ms']:.2f} ms/send | |"
        )
    print()
    for c in cases:
        s = c.scheduler
        print(
            f"{c.name}: {c.seconds:.2f}s from the first task created to the last sent; the "
            f"scheduler took {s['enqueued'] - s['started']:.2f}s (committed after "
            f"{s['committed'] - s['started']:.2f}s, max {s['max_late'] * 1e3:.0f} ms behind its "
            f"rate), {s['cpu'] / c.pushes * 1e3:.2f} ms CPU per push; attempts {c.attempts}, "
            f"failed sends {c.failed_sends}" + (f"; PROBLEMS: {c.problems}" if c.problems else "")
        )
        print(
            f"  in job (sent at the first attempt): claimed -> the fake got sendMessage p50 "
            f"{ms(c.to_fake, 'p50_ms')} / p99 {ms(c.to_fake, 'p99_ms')} ms; -> sent_at recorded "
            f"p50 {ms(c.after_fake, 'p50_ms')} / p99 {ms(c.after_fake, 'p99_ms')} ms (the fake "
            f"answers after {args.latency:g} ms); worker processes started meanwhile "
            f"(django-q2 recycles one after 500 tasks): {c.cpu['worker_processes_started']}"
        )
        cpu = c.cpu
        parts = ", ".join(
            f"{role} {sec / c.pushes * 1e3:.2f}"
            for role, sec in sorted(cpu["by_process"].items(), key=lambda kv: -kv[1])
            if sec > 0.005
        )
        other = cpu["machine_busy"] - sum(cpu["by_process"].values()) - s["cpu"]
        print(
            f"  CPU ms per push: {parts}; scheduler {s['cpu'] / c.pushes * 1e3:.2f}; anything "
            f"else on the machine {other / c.pushes * 1e3:.2f}. Machine "
            f"{cpu['machine_share'] * 100:.0f} % busy over {cpu['wall']:.1f}s "
            f"({cpu['machine_busy'] / c.pushes * 1e3:.2f} ms CPU per push in all)"
        )
        per = {key: value / c.pushes for key, value in c.pg.items()}
        busy = max(0, c.pg["xact"] - c.pg["xact_idle_estimate"]) / c.pushes
        task, attempt, queue = "delivery_deliverytask", "delivery_deliveryattempt", "django_q_ormq"
        print(
            f"  PostgreSQL per push: {busy:.1f} transactions (idle polling, "
            f"~{c.pg_idle_xact_per_s:.0f}/s, taken out); rows inserted + / updated ~ / deleted -: "
            f"task +{per[f'{task}.ins']:.2f} ~{per[f'{task}.upd']:.2f}, attempt "
            f"+{per[f'{attempt}.ins']:.2f} ~{per[f'{attempt}.upd']:.2f}, queue "
            f"+{per[f'{queue}.ins']:.2f} ~{per[f'{queue}.upd']:.2f} -{per[f'{queue}.del']:.2f}"
        )
    if queries:
        print()
        print(
            f"SQL of one push, in process: scheduling {len(queries['schedule'])} statements, "
            f"the push {len(queries['push'])} (task ended {queries['status']}):"
        )
        for label in ("schedule", "push"):
            for sql in queries[label]:
                print(f"  {label}: {sql}")


# --- main ---


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE,
        help="a postgres:// URL on this machine: a fresh database is created next to the one "
        "named and dropped at the end",
    )
    parser.add_argument(
        "--reuse-database",
        action="store_true",
        help="use the named database as it is (created if missing)",
    )
    parser.add_argument("--pushes", type=int, default=2000, help="pushes per case (default 2000)")
    parser.add_argument(
        "--rate", type=float, default=200, help="steady: runs scheduled per second (default 200)"
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=50,
        help="ms the fake Bot API takes to answer each call (default 50)",
    )
    parser.add_argument(
        "--fail-share",
        type=float,
        default=0.1,
        help="share of chats whose first sendMessage fails with a 500 in the -failing cases "
        "(default 0.1)",
    )
    parser.add_argument(
        "--backoff", type=float, default=0.2, help="DELIVERY_BACKOFF, seconds (default 0.2)"
    )
    parser.add_argument("--workers", type=int, default=2, help="AFHOST_WORKERS (default 2)")
    parser.add_argument(
        "--poll", type=float, default=0.1, help="AFHOST_QUEUE_POLL (default 0.1, the default)"
    )
    parser.add_argument(
        "--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}"
    )
    parser.add_argument(
        "--no-references", action="store_true", help="skip the references (raw sockets, httpx, PTB)"
    )
    parser.add_argument("--no-queries", action="store_true", help="skip listing one push's SQL")
    parser.add_argument(
        "--inprocess",
        type=int,
        default=500,
        help="pushes for the in-process CPU measure, before the worker starts (0: skip)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=250,
        help="AFHOST_WORKER_CONCURRENCY, jobs per worker process (default 250, the default)",
    )
    parser.add_argument(
        "--timeout", type=float, default=180, help="seconds to wait for one case's pushes"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=2,
        help="idle seconds before each case (idle polling measured)",
    )
    parser.add_argument(
        "--stats-wait",
        type=float,
        default=11,
        help="seconds to wait after a case for PostgreSQL's statistics (an idle backend "
        "flushes them within 10 s)",
    )
    parser.add_argument(
        "--profile",
        metavar="OUT",
        help="py-spy the --profile-process during --profile-case (OUT.svg flamegraph, OUT.json "
        "speedscope, OUT.txt collapsed stacks); that case's figures are not comparable",
    )
    parser.add_argument("--profile-case", default="steady", choices=CASES)
    parser.add_argument(
        "--profile-process", default="worker", choices=("worker", "pusher", "monitor")
    )
    parser.add_argument(
        "--keep-logs", metavar="DIR", help="copy the worker's and scheduler's logs here"
    )
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    args.cases = [c for c in args.cases.split(",") if c]
    if unknown := set(args.cases) - set(CASES):
        parser.error(f"unknown case: {', '.join(sorted(unknown))}")
    if urlsplit(args.database_url).hostname not in (
        "127.0.0.1",
        "localhost",
        "::1",
    ) or not args.database_url.startswith("postgres"):
        parser.error("--database-url must be a postgres:// URL on this machine")
    if args.pushes < 1 or args.rate <= 0 or args.workers < 1 or not 0 <= args.fail_share <= 1:
        parser.error("--pushes, --rate and --workers must be positive, --fail-share within 0..1")
    _bench_imports()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, rb._raise_interrupt)
    print(
        f"delivery bench: cases {','.join(args.cases)}, {args.pushes} pushes each, "
        f"{args.workers} workers; {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="afhost-deliverybench-"))
    fake = make_fake(args.latency / 1e3)
    cases: list[Case] = []
    refs: dict = {}
    queries: dict = {}
    inprocess: dict = {}
    try:
        env = {
            **os.environ,
            "DEBUG": "0",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SECRET_KEY": "bench",
            "LOG_LEVEL": "WARNING",
            "TELEGRAM_BOT_TOKEN": tb.TOKEN,
            "TELEGRAM_WEBHOOK_SECRET": tb.SECRET,
            "TELEGRAM_API_BASE_URL": f"{fake.url}/bot",
            "TELEGRAM_API_FILE_URL": f"{fake.url}/file/bot",
            "AFHOST_WORKERS": str(args.workers),
            "AFHOST_QUEUE_POLL": f"{args.poll:g}",
            "DELIVERY_BACKOFF": f"{args.backoff:g}",
            "AFHOST_WORKER_CONCURRENCY": str(args.concurrency),
            "PYTHONUNBUFFERED": "1",
        }
        env["DATABASE_URL"] = rb.prepare_postgres(args.database_url, env, reuse=args.reuse_database)
        print(
            f"- database {urlsplit(env['DATABASE_URL']).path.lstrip('/')}; migrating ...",
            flush=True,
        )
        rb.run_checked(
            [str(VENV_PYTHON), "manage.py", "migrate", "--verbosity", "0"],
            env=env,
            what="manage.py migrate",
        )
        db = tub.Db(env["DATABASE_URL"])
        if args.inprocess:
            inprocess = measure_inprocess(env, args)
        worker_log = workdir / "worker.log"
        worker = rb.spawn([str(VENV_PYTHON), "manage.py", "worker"], env=env, log=worker_log)
        ctx = {
            "env": env,
            "fake": fake,
            "db": db,
            "worker": worker,
            "worker_log": worker_log,
            "workdir": workdir,
        }
        # Warm-up: a few pushes end to end (worker processes forked, engines and bots built).
        warm = Case("warm-up", "burst", False, 2 * args.workers * 5, CHAT_BASE - CHAT_STRIDE)
        saved = args.stats_wait, args.settle
        args.stats_wait, args.settle = 0, 0
        ctx["tree"] = WorkerTree(worker, args.workers)
        measure_case(warm, ctx, args)
        ctx["tree"] = WorkerTree(worker, args.workers)  # every process forked by now
        args.stats_wait, args.settle = saved
        if not warm.exactly_once:
            raise BenchError(
                f"the warm-up pushes were not delivered: {warm.statuses}, {warm.problems}\n"
                + rb.log_tail(worker_log)
            )
        if not args.no_queries:
            prepared = run_child(
                "prepare", {"count": 1, "chat_base": CHAT_BASE - 2 * CHAT_STRIDE}, env
            )
            queries = run_child("queries", prepared, env)
        if not args.no_references:
            refs = references(ctx, args)
        for k, name in enumerate(CASES):
            if name not in args.cases:
                continue
            mode = name.split("-")[0]
            case = Case(
                name,
                mode,
                name.endswith("-failing"),
                args.pushes,
                CHAT_BASE + k * CHAT_STRIDE,
                rate=args.rate if mode == "steady" else 0.0,
            )
            cases.append(measure_case(case, ctx, args))
            c = cases[-1]
            print(
                f"  {c.pushes_per_s:.0f} pushes/s, p50 {ms(c.e2e, 'p50_ms')} ms, "
                f"p99 {ms(c.e2e, 'p99_ms')} ms, exactly once: {c.exactly_once}",
                flush=True,
            )
        problems = tb.log_problems(worker_log)
        failures = db.rows("SELECT COUNT(*) FROM django_q_task WHERE success = %s", [False])[0][0]
        if args.keep_logs:
            keep = Path(args.keep_logs)
            keep.mkdir(parents=True, exist_ok=True)
            for path in workdir.glob("*.log"):
                (keep / path.name).write_bytes(path.read_bytes())
        rb.stop(worker)
        db.close()
    except BenchError as exc:
        print(f"\nbench aborted: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        rb.clean_up(workdir)
        fake.stop()
    report(cases, refs, queries, args)
    if inprocess:
        print(
            f"in one process, no broker (the worker's engine, {args.concurrency} jobs at most): "
            f"{inprocess['concurrent']['pushes']} pushes at once: "
            f"{inprocess['concurrent']['cpu_ms']:.2f} ms CPU per push, "
            f"{inprocess['concurrent']['per_s']:.0f}/s; one at a time: "
            f"{inprocess['sequential']['cpu_ms']:.2f} ms, {inprocess['sequential']['per_s']:.0f}/s;"
            f" scheduling a run's push: {inprocess['schedule_cpu_ms']:.2f} ms"
        )
    print(f"worker log: {problems} Traceback/ERROR lines; django-q failed tasks: {failures}")
    print(f"(total {time.monotonic() - started:.0f}s)")
    if args.json:
        out = {
            "args": {k: v for k, v in vars(args).items()},
            "cases": [
                {**asdict(c), "exactly_once": c.exactly_once, "verdict": c.verdict} for c in cases
            ],
            "references": refs,
            "queries": queries,
            "inprocess": inprocess,
        }
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(child_main(sys.argv[2], sys.argv[3]))
    sys.exit(main())
