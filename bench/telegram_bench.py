"""Benchmark: the Telegram webhook's acknowledgement latency, and webhook-to-answer time.

afhost's ASGI server and its django-q2 worker (`manage.py qcluster`) run as in production, on
django-q2's ORM broker or, with `--brokers orm,redis`, on each broker in turn (Redis at
`--redis-url`: AFHOST_REDIS_URL); Telegram's Bot API is `tests/fakes/telegram_api.py`'s fake, in
this process, on 127.0.0.1, optionally with a round-trip delay per call (`--telegram-latency`).

First a burst is posted with no worker running (acknowledgements alone; `--no-baseline` skips
it). Then, for each queue poll interval (`--polls`, django-q2's `AFHOST_QUEUE_POLL`; the ORM
broker's only), a worker is started and, once the queue is empty:

1. burst: `--updates` distinct private-chat updates spread over `--chats` chats, posted to
   `POST /telegram/webhook/` as fast as `--connections` keep-alive connections allow. Reported:
   p50/p99/max of the time to the 200 acknowledgement and acks/s; p50/p99/max of the time from
   posting an update to the fake API recording the demo agent's `sendMessage` that quotes it,
   and how long the whole burst took to be answered (and its task queue to empty);
2. idle: `--idle` single updates, one at a time, each waiting for its answer (with a random
   0.1-0.3 s pause between them), which shows the broker's queue latency.

At the end every update must have been acknowledged with 200 and answered exactly once.
Only 127.0.0.1 is ever contacted. See bench/README.md.

    .venv/bin/python bench/telegram_bench.py [--server uvicorn|daphne] [--updates 500]
        [--database-url postgresql://postgres@127.0.0.1:5432/bench] [--brokers orm,redis]

This is a benchmark, not a test: it exits 0 whatever the figures (2 when it could not measure,
130 when interrupted).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import html
import json
import os
import platform
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import responses_bench as rb  # noqa: E402
from bench.responses_bench import (  # noqa: E402
    BenchError,
    clean_up,
    database_label,
    free_port,
    log_tail,
    prepare_postgres,
    run_checked,
    server_cmd,
    spawn,
    stop,
    wait_listening,
)
from tests.fakes.telegram_api import FakeTelegramApi  # noqa: E402

VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
TOKEN = "123456:BENCH"  # noqa: S105 (a fake bot's token)
SECRET = "bench-secret"  # noqa: S105 (the fake webhook's secret)
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header name)
WEBHOOK_PATH = "/telegram/webhook/"
FIXTURE = ROOT / "tests" / "fixtures" / "telegram" / "private_text.json"
# The demo agent's answer starts with this (afhost/demo.py: demo_reply).
ANSWER_RE = re.compile(r'You said: "(.*?)"\.')
REQUEST_TIMEOUT = 30.0
FIRST_CHAT_ID = 5_000_000
FIRST_UPDATE_ID = 1_000_000
# django-q2's queue on Redis: a list named after the cluster (Q_CLUSTER["name"] in settings).
REDIS_QUEUE_KEY = "django_q:afhost:q"

STATS_SCRIPT = """
import json
from collections import Counter
from django.db.models import Max
from django_q.models import Failure, OrmQ
from channels_app.telegram.models import TelegramUpdate
updates = TelegramUpdate.objects.all()
print(json.dumps({
    "updates": dict(Counter(updates.values_list("status", flat=True))),
    "max_attempts": updates.aggregate(m=Max("attempts"))["m"] or 0,
    "task_failures": Failure.objects.count(),
    "queued_tasks": OrmQ.objects.count(),
}))
"""


@dataclass(eq=False)
class Sample:
    """One update posted to the webhook, and what became of it."""

    update_id: int
    chat_id: int
    text: str
    body: bytes
    sent_at: float = 0.0  # time.monotonic(), the clock of the fake's Call.at
    acked_at: float = 0.0
    status: int = 0  # 0: no HTTP answer (see error)
    error: str = ""
    answers: list[float] = field(default_factory=list)  # sendMessage arrival times

    @property
    def ack(self) -> float:
        return self.acked_at - self.sent_at

    @property
    def e2e(self) -> float:
        return self.answers[0] - self.sent_at


@dataclass
class Stats:
    n: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def stats(seconds: list[float]) -> Stats:
    if not seconds:
        return Stats(0, float("nan"), float("nan"), float("nan"))
    ordered = sorted(seconds)

    def rank(p: float) -> float:  # nearest-rank percentile
        return ordered[max(0, min(len(ordered) - 1, -(-len(ordered) * p // 100) - 1))] * 1e3

    return Stats(len(ordered), rank(50), rank(99), ordered[-1] * 1e3)


# --- updates and answers ---


class Updates:
    """Makes distinct updates from the fixture; matches the fake's sendMessage calls to them."""

    def __init__(self, fake: FakeTelegramApi) -> None:
        self.fake = fake
        self.template = json.loads(FIXTURE.read_text())
        self.next_update_id = FIRST_UPDATE_ID
        self.next_chat_id = FIRST_CHAT_ID
        self.samples: dict[tuple[int, str], Sample] = {}
        self.seen = 0  # the fake's calls looked at so far
        self.unmatched: list[str] = []
        self.failed_sends = 0

    def chats(self, count: int) -> list[int]:
        first, self.next_chat_id = self.next_chat_id, self.next_chat_id + count
        return list(range(first, first + count))

    def make(self, chat_id: int, phase: str) -> Sample:
        update_id, self.next_update_id = self.next_update_id, self.next_update_id + 1
        text = f"bench {phase} {update_id}"
        update = copy.deepcopy(self.template)
        message = update["message"]
        update["update_id"] = update_id
        message.update(message_id=update_id, date=int(time.time()), text=text)
        message["from"]["id"] = chat_id
        message["from"]["username"] = f"bench{chat_id}"
        message["chat"].update(id=chat_id, username=f"bench{chat_id}")
        sample = Sample(update_id, chat_id, text, json.dumps(update).encode())
        self.samples[(chat_id, text)] = sample
        return sample

    def collect(self) -> None:
        calls = self.fake.calls_after(self.seen)
        self.seen += len(calls)
        for call in calls:
            if call.method != "sendMessage":
                continue
            if call.failed:
                self.failed_sends += 1
                continue
            text = html.unescape(str(call.params.get("text", "")))
            quoted = ANSWER_RE.match(text)
            sample = self.samples.get((call.params.get("chat_id"), quoted and quoted.group(1)))
            if sample is None:
                self.unmatched.append(text[:120])
            else:
                sample.answers.append(call.at)

    def wait_answered(self, samples: list[Sample], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self.collect()
            if all(s.answers or not s.acked_at for s in samples):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)


# --- the webhook client: keep-alive HTTP/1.1 over raw asyncio sockets ---


def webhook_request(port: int, body: bytes) -> bytes:
    head = (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"{SECRET_HEADER}: {SECRET}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, whether the server closes the connection)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip().lower()
    close = fields.get("connection") == "close"
    if "content-length" in fields:
        body = await reader.readexactly(int(fields["content-length"]))
    elif fields.get("transfer-encoding") == "chunked":
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append((await reader.readexactly(size + 2))[:-2])
        await reader.readuntil(b"\r\n")
        body = b"".join(parts)
    else:
        body, close = await reader.read(), True
    return status, body, close


async def _connection(port: int, todo: deque[Sample], stream) -> None:
    reader, writer = stream
    try:
        while todo:
            sample = todo.popleft()
            sample.acked_at, sample.status, sample.error = 0.0, 0, ""  # a re-post starts afresh
            sample.sent_at = time.monotonic()
            try:
                if writer is None:  # a refused connection is that update's failure, as below
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(webhook_request(port, sample.body))
                status, body, close = await asyncio.wait_for(read_response(reader), REQUEST_TIMEOUT)
            except (OSError, EOFError, ValueError, TimeoutError) as exc:
                sample.error, close = repr(exc), True
            else:
                sample.acked_at, sample.status = time.monotonic(), status
                if status != 200 or json.loads(body or b"{}").get("ok") is not True:
                    sample.error = body[:200].decode(errors="replace")
            if close and writer is not None:
                writer.close()
                reader = writer = None
    finally:
        if writer is not None:
            writer.close()


async def _post_all(port: int, samples: list[Sample], connections: int) -> None:
    # Connect first, so the burst's clock starts with every connection open.
    streams = [
        await asyncio.open_connection("127.0.0.1", port)
        for _ in range(max(1, min(connections, len(samples))))
    ]
    todo = deque(samples)
    await asyncio.gather(*(_connection(port, todo, stream) for stream in streams))


def post_all(port: int, samples: list[Sample], connections: int) -> None:
    asyncio.run(_post_all(port, samples, connections))


# --- processes ---


def start_fake(args) -> FakeTelegramApi:
    """The fake Bot API, with --telegram-latency added to every call."""
    fake = FakeTelegramApi(TOKEN)
    if args.telegram_latency > 0:
        handle, delay = fake._handle, args.telegram_latency / 1e3

        def slow_handle(*call_args):
            response = handle(*call_args)  # records the call (Call.at) on arrival
            time.sleep(delay)  # then answers later, like a far-away API
            return response

        fake._handle = slow_handle
    return fake.start()


def afhost_env(args, workdir: Path, fake: FakeTelegramApi) -> dict[str, str]:
    env = {
        **os.environ,
        "DEBUG": "0",  # as in production
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECRET_KEY": "bench",
        "AFHOST_DEMO_TOKEN_DELAY": "0",
        "LOG_LEVEL": "WARNING",
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_WEBHOOK_SECRET": SECRET,
        "TELEGRAM_API_BASE_URL": f"{fake.url}/bot",
        "TELEGRAM_API_FILE_URL": f"{fake.url}/file/bot",
        "AFHOST_WORKERS": str(args.workers),
        "DATABASE_URL": args.database_url or f"sqlite:///{workdir / 'bench.sqlite3'}",
        "PYTHONUNBUFFERED": "1",
    }
    if database_label(env["DATABASE_URL"]) == "postgres":
        env["DATABASE_URL"] = prepare_postgres(env["DATABASE_URL"], env, reuse=False)
    return env


def broker_env(env: dict[str, str], broker: str, args) -> dict[str, str]:
    """The environment of the server and worker on `broker` (orm or redis), whatever the
    caller's AFHOST_REDIS_URL."""
    env = {name: value for name, value in env.items() if name != "AFHOST_REDIS_URL"}
    return {**env, "AFHOST_REDIS_URL": args.redis_url} if broker == "redis" else env


class QueueDepth:
    """How many django-q2 tasks are queued or running: rows of the ORM broker's table."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.conn = None

    def __call__(self) -> int:
        query = "SELECT COUNT(*) FROM django_q_ormq"
        if database_label(self.url) == "sqlite":
            path = self.url.removeprefix("sqlite:///")  # sqlite:////abs/path
            with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
                return conn.execute(query).fetchone()[0]
        if self.conn is None:
            import psycopg

            self.conn = psycopg.connect(self.url, autocommit=True)
        return self.conn.execute(query).fetchone()[0]

    def wait_empty(self, timeout: float) -> float | None:
        """time.monotonic() when the queue was seen empty, None after the timeout."""
        deadline = time.monotonic() + timeout
        while (depth := self()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return None if depth else time.monotonic()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class RedisQueueDepth(QueueDepth):
    """How many django-q2 tasks wait in Redis. A task leaves the list when the cluster takes it,
    before it runs, so an empty list is followed by a second's pause (SETTLE) for those taken."""

    SETTLE = 1.0

    def __init__(self, redis_url: str) -> None:
        import redis

        self.conn = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=10)

    def __call__(self) -> int:
        return self.conn.llen(REDIS_QUEUE_KEY)

    def wait_empty(self, timeout: float) -> float | None:
        if (empty_at := super().wait_empty(timeout)) is not None:
            time.sleep(self.SETTLE)
        return empty_at

    def clear(self) -> None:
        self.conn.delete(REDIS_QUEUE_KEY)

    def close(self) -> None:
        self.conn.close()


def start_worker(env: dict[str, str], poll: float | None, log: Path) -> subprocess.Popen:
    worker_env = {**env, "AFHOST_QUEUE_POLL": f"{poll:g}"} if poll is not None else env
    return spawn([str(VENV_PYTHON), "manage.py", "qcluster"], env=worker_env, log=log)


def check_alive(procs: dict[str, tuple[subprocess.Popen, Path]]) -> None:
    for name, (proc, log) in procs.items():
        if proc.poll() is not None:
            raise BenchError(f"the {name} exited ({proc.returncode}):\n" + log_tail(log))


def log_problems(log: Path) -> int:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if "Traceback" in line or " ERROR " in line)


# --- the phases ---


@dataclass
class Phase:
    name: str
    broker: str  # orm or redis
    poll: float | None  # the ORM broker's poll; None on Redis
    samples: list[Sample]
    worker: bool = True  # False: no worker was running
    seconds: float = 0.0  # posting (burst: first send to last ack)
    answered_in: float = 0.0  # first send to last first-answer
    drained_in: float | None = None  # first send to an empty task queue
    drains: int = 0  # getMe calls: one per bot a chat's job opens (a worker's engine: one bot)
    # idle: sent -> the worker's sendChatAction ("typing", sent just before the agent runs)
    pickup: list[float] = field(default_factory=list)
    work: list[float] = field(default_factory=list)  # idle: sendChatAction -> sendMessage
    unanswered: int = 0


def warm_up(updates: Updates, port: int, procs, timeout: float) -> None:
    """Three updates end to end, one at a time: the server, the worker and the fake are ready."""
    chat = updates.chats(1)[0]
    for _ in range(3):
        sample = updates.make(chat, "warmup")
        post_all(port, [sample], 1)
        if sample.status != 200:
            raise BenchError(f"warm-up update got {sample.status} {sample.error}")
        if not updates.wait_answered([sample], timeout):
            check_alive(procs)
            raise BenchError(f"the warm-up update was not answered within {timeout:.0f}s")


def burst(
    updates: Updates,
    port: int,
    args,
    broker: str,
    poll: float | None,
    procs,
    queue: QueueDepth | None,
) -> Phase:
    """A burst of updates; without a queue (no worker running) only the acknowledgements."""
    if queue is not None and queue.wait_empty(args.answer_timeout) is None:
        raise BenchError("the task queue did not empty before the burst")
    chats = updates.chats(args.chats)
    samples = [updates.make(chats[i % len(chats)], "burst") for i in range(args.updates)]
    phase = Phase("burst", broker, poll, samples, worker=queue is not None)
    getme_before = len(updates.fake.calls_to("getMe"))
    print(
        f"  burst: {len(samples)} updates over {len(chats)} chats, "
        f"{args.connections} connections ..."
    )
    post_all(port, samples, args.connections)
    first = min(s.sent_at for s in samples)
    phase.seconds = max(s.acked_at or s.sent_at for s in samples) - first
    if queue is None:
        return phase
    complete = updates.wait_answered(samples, args.answer_timeout)
    check_alive(procs)
    answered = [s for s in samples if s.answers]
    phase.unanswered = sum(1 for s in samples if s.acked_at and not s.answers)
    if answered:
        phase.answered_in = max(s.answers[0] for s in answered) - first
    if not complete:
        print(f"  ! {phase.unanswered} updates unanswered after {args.answer_timeout:.0f}s")
    # The tasks of updates answered by an earlier task of their chat are still queued.
    remaining = max(5.0, args.answer_timeout - (time.monotonic() - first))
    if (empty_at := queue.wait_empty(remaining)) is not None:
        phase.drained_in = empty_at - first
    else:
        print(f"  ! the task queue still holds {queue()} tasks")
    phase.drains = len(updates.fake.calls_to("getMe")) - getme_before
    return phase


def idle(
    updates: Updates, port: int, args, broker: str, poll: float | None, procs, queue: QueueDepth
) -> Phase:
    chat = updates.chats(1)[0]
    phase = Phase("idle", broker, poll, [])
    if queue.wait_empty(60) is None:
        raise BenchError("the task queue did not empty: the system is not idle")
    print(f"  idle: {args.idle} single updates, one at a time ...")
    for _ in range(args.idle):
        time.sleep(random.uniform(0.1, 0.3))  # sample every phase of the broker's poll
        sample = updates.make(chat, "idle")
        phase.samples.append(sample)
        post_all(port, [sample], 1)
        if not updates.wait_answered([sample], REQUEST_TIMEOUT):
            check_alive(procs)
            phase.unanswered += 1
            continue
        typing = updates.fake.calls_to("sendChatAction")
        fetched = [c.at for c in typing if c.at >= sample.sent_at]
        if fetched:
            phase.pickup.append(fetched[0] - sample.sent_at)
            phase.work.append(sample.answers[0] - fetched[0])
    return phase


# --- report ---


def setup_label(broker: str, poll: float | None) -> str:
    return f"{broker} poll {poll:g}s" if poll is not None else broker


def report(phases: list[Phase], updates: Updates, db: dict, problems: dict[str, int]) -> None:
    rows: list[tuple[str, Stats, str]] = []
    notes: list[str] = []
    for p in phases:
        acked = [s for s in p.samples if s.status == 200]
        answered = [s for s in p.samples if s.answers]
        setup = setup_label(p.broker, p.poll)
        label = f"{p.name} {setup}" if p.worker else f"{p.name} {p.broker}, no worker"
        if not p.worker:
            rate = len(acked) / p.seconds if p.seconds else 0.0
            rows.append((f"{label}: ack", stats([s.ack for s in acked]), f"{rate:.0f} acks/s"))
        elif p.name == "burst":
            rate = len(acked) / p.seconds if p.seconds else 0.0
            rows.append((f"{label}: ack", stats([s.ack for s in acked]), f"{rate:.0f} acks/s"))
            speed = len(answered) / p.answered_in if p.answered_in else 0.0
            rows.append(
                (
                    f"{label}: webhook -> sendMessage",
                    stats([s.e2e for s in answered]),
                    f"all answered in {p.answered_in:.1f}s ({speed:.0f}/s)",
                )
            )
            drained = f"{p.drained_in:.1f}s" if p.drained_in is not None else "not emptied"
            if p.broker == "redis":
                drained += " (+1s pause: Redis's list empties as tasks are taken, not done)"
            notes.append(
                f"{label}: task queue empty {drained} after the first post; "
                f"{p.drains} getMe calls for {len(p.samples)} updates"
            )
        else:
            rows.append((f"{label}: ack", stats([s.ack for s in acked]), ""))
            rows.append((f"{label}: webhook -> sendMessage", stats([s.e2e for s in answered]), ""))
            rows.append(
                (f"{label}:   webhook -> typing", stats(p.pickup), "queue + the turn's start")
            )
            rows.append((f"{label}:   typing -> sendMessage", stats(p.work), "the run, the send"))
    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'':{width}}  {'n':>4}  {'p50 ms':>8}  {'p99 ms':>8}  {'max ms':>8}")
    for label, s, note in rows:
        line = f"{label:{width}}  {s.n:4d}  {s.p50_ms:8.1f}  {s.p99_ms:8.1f}  {s.max_ms:8.1f}"
        print(f"{line}  {note}".rstrip())
    for note in notes:
        print(note)

    samples = list(updates.samples.values())
    statuses = Counter(s.status for s in samples)
    answers = Counter(len(s.answers) for s in samples)
    print()
    print(
        f"acknowledgements: {len(samples)} posted; "
        + ", ".join(
            f"{count} x {status or 'no answer'}" for status, count in sorted(statuses.items())
        )
    )
    for s in [s for s in samples if s.status != 200][:5]:
        print(f"  update {s.update_id}: {s.status} {s.error}")
    once = answers.get(1, 0)
    verdict = "OK" if once == len(samples) and not updates.unmatched else "NOT OK"
    print(
        f"answers: {once} answered exactly once, {answers.get(0, 0)} not answered, "
        f"{sum(c for n, c in answers.items() if n > 1)} answered more than once, "
        f"{len(updates.unmatched)} unmatched sendMessage, {updates.failed_sends} failed sends: "
        f"{verdict}"
    )
    for text in updates.unmatched[:3]:
        print(f"  unmatched: {text!r}")
    if db:
        redis_left = f", in Redis {db['redis_queued']}" if "redis_queued" in db else ""
        print(
            f"database: updates {db['updates']}, max attempts {db['max_attempts']}, "
            f"django-q failures {db['task_failures']}, still queued {db['queued_tasks']}"
            f"{redis_left}"
        )
    print("log lines with Traceback/ERROR: " + ", ".join(f"{k} {v}" for k, v in problems.items()))


def as_json(phases: list[Phase], args, updates: Updates) -> dict:
    out = {"server": args.server, "database": database_label(args.database_url or "sqlite")}
    out["brokers"] = args.brokers
    out["workers"], out["phases"] = args.workers, []
    out["telegram_latency_ms"] = args.telegram_latency
    for p in phases:
        acked = [s for s in p.samples if s.status == 200]
        answered = [s for s in p.samples if s.answers]
        out["phases"].append(
            {
                "phase": p.name,
                "broker": p.broker,
                "poll": p.poll,  # None on Redis
                "worker": p.worker,  # False: no worker running
                "ack": vars(stats([s.ack for s in acked])),
                "e2e": vars(stats([s.e2e for s in answered])),
                "acks_per_s": len(acked) / p.seconds if p.seconds else None,
                "answered_in_s": p.answered_in,
                "queue_empty_s": p.drained_in,
                "drains": p.drains,
                "pickup": vars(stats(p.pickup)),
                "work": vars(stats(p.work)),
                "unanswered": p.unanswered,
            }
        )
    answers = Counter(len(s.answers) for s in updates.samples.values())
    out["answer_counts"] = {str(k): v for k, v in sorted(answers.items())}
    return out


# --- the run ---


def run(args, workdir: Path, fake: FakeTelegramApi) -> tuple[list[Phase], Updates, dict, dict]:
    env = afhost_env(args, workdir, fake)
    run_checked(
        [str(VENV_PYTHON), "manage.py", "migrate", "--verbosity", "0"],
        env=env,
        what="manage.py migrate",
    )
    updates = Updates(fake)
    orm_queue = QueueDepth(env["DATABASE_URL"])
    rb._cleanups.append(orm_queue.close)
    phases: list[Phase] = []
    logs: dict[str, Path] = {}
    for broker in args.brokers:
        # The server queues the tasks: it runs on the worker's broker, restarted for each.
        benv = broker_env(env, broker, args)
        queue = orm_queue
        if broker == "redis":
            queue = RedisQueueDepth(args.redis_url)
            rb._cleanups.append(queue.close)
            queue.clear()
            rb._cleanups.append(queue.clear)
        port = free_port()
        server_log = logs[f"server ({broker})"] = workdir / f"server-{broker}.log"
        worker_log = logs[f"worker ({broker})"] = workdir / f"worker-{broker}.log"
        print(
            f"- {args.server} on 127.0.0.1:{port}, {database_label(env['DATABASE_URL'])}, {broker}"
        )
        server = spawn(
            server_cmd(args.server, "afhost.asgi:application", port), env=benv, log=server_log
        )
        wait_listening(server, port, server_log)
        if args.baseline and not phases:
            # Acknowledgements alone, with no worker competing; the first worker answers them.
            print("- no worker yet")
            procs = {"server": (server, server_log)}
            post_all(port, [updates.make(updates.chats(1)[0], "warmup") for _ in range(3)], 1)
            phases.append(burst(updates, port, args, broker, None, procs, None))
        for poll in args.polls if broker == "orm" else [None]:
            setup = setup_label(broker, poll)
            print(f"- worker: qcluster, {args.workers} workers, {setup}")
            worker = start_worker(benv, poll, worker_log)
            procs = {"server": (server, server_log), "worker": (worker, worker_log)}
            try:
                warm_up(updates, port, procs, timeout=args.answer_timeout)
                phases.append(burst(updates, port, args, broker, poll, procs, queue))
                if args.idle > 0:
                    phases.append(idle(updates, port, args, broker, poll, procs, queue))
                time.sleep(1)  # a late duplicate answer would show up here
                updates.collect()
            finally:
                stop(worker)
        stop(server)
    db = {}
    try:
        out = run_checked(
            [str(VENV_PYTHON), "manage.py", "shell", "-c", STATS_SCRIPT],
            env=env,
            what="database summary",
        )
        db = json.loads(out.strip().splitlines()[-1])
    except (BenchError, ValueError, IndexError) as exc:
        print(f"(no database summary: {exc})")
    if db and "redis" in args.brokers:
        redis_queue = RedisQueueDepth(args.redis_url)
        db["redis_queued"] = redis_queue()
        redis_queue.close()
    problems = {name: log_problems(log) for name, log in logs.items()}
    for name, log in logs.items():
        if problems[name]:
            print(f"\n{name} log (tail):\n{log_tail(log, 20)}")
    return phases, updates, db, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("uvicorn", "daphne"), default="uvicorn")
    parser.add_argument(
        "--database-url",
        default="",
        help="a postgres:// URL on this machine: a fresh database is created next to the one "
        "named and dropped at the end (default: a fresh SQLite file in a temp dir)",
    )
    parser.add_argument("--updates", type=int, default=500, help="updates in the burst")
    parser.add_argument("--chats", type=int, default=50, help="chats the burst is spread over")
    parser.add_argument("--connections", type=int, default=32, help="burst connections")
    parser.add_argument("--workers", type=int, default=2, help="django-q2 workers")
    parser.add_argument("--idle", type=int, default=20, help="single updates, one at a time")
    parser.add_argument(
        "--polls",
        default="0.1,0.02",
        help="AFHOST_QUEUE_POLL values, one worker run each (default: 0.1,0.02)",
    )
    parser.add_argument(
        "--brokers",
        default="orm",
        help="django-q2 brokers to run on, one after the other: orm, redis or orm,redis "
        "(default: orm)",
    )
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/6",
        help="AFHOST_REDIS_URL for --brokers redis (default: redis://127.0.0.1:6379/6; the bench "
        "empties django-q2's list there before and after)",
    )
    parser.add_argument(
        "--no-baseline",
        dest="baseline",
        action="store_false",
        help="skip the first burst, posted before any worker runs (acknowledgements only)",
    )
    parser.add_argument(
        "--answer-timeout", type=float, default=180, help="seconds to wait for a burst's answers"
    )
    parser.add_argument(
        "--telegram-latency",
        type=float,
        default=0,
        metavar="MS",
        help="the fake Bot API answers every call MS later (a round trip to api.telegram.org; "
        "default 0)",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    try:
        args.polls = [float(p) for p in args.polls.split(",") if p]
    except ValueError:
        parser.error("--polls takes comma-separated seconds, e.g. 0.1,0.02")
    args.brokers = [b for b in args.brokers.split(",") if b]
    if not args.brokers or set(args.brokers) - {"orm", "redis"}:
        parser.error("--brokers takes orm, redis or orm,redis")
    if "redis" in args.brokers:
        if urlsplit(args.redis_url).hostname not in ("127.0.0.1", "localhost", "::1"):
            parser.error("--redis-url must point at this machine (127.0.0.1)")
        import redis

        try:
            redis.Redis.from_url(args.redis_url, socket_connect_timeout=2).ping()
        except redis.RedisError as exc:
            parser.error(f"no Redis at --redis-url {args.redis_url}: {exc}")
    if min(args.updates, args.chats, args.connections, args.workers, len(args.polls)) < 1:
        parser.error("--updates, --chats, --connections, --workers and --polls must be >= 1")
    if args.database_url and urlsplit(args.database_url).hostname not in (
        None,
        "127.0.0.1",
        "localhost",
        "::1",
    ):
        parser.error("--database-url must point at this machine (127.0.0.1)")
    if args.server == "uvicorn" and not (ROOT / ".venv" / "bin" / "uvicorn").exists():
        print("uvicorn is not installed in .venv: using daphne")
        args.server = "daphne"

    # SIGINT too: a bench started in the background by a script inherits it ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, rb._raise_interrupt)
    print(
        f"telegram bench: {args.updates} updates / {args.chats} chats / {args.connections} "
        f"connections, {args.idle} idle updates, {args.workers} workers, brokers "
        f"{', '.join(args.brokers)} (ORM polls {', '.join(f'{p:g}' for p in args.polls)}); "
        f"fake Bot API "
        f"+{args.telegram_latency:g} ms "
        f"per call; {platform.python_implementation()} "
        f"{platform.python_version()}, {os.cpu_count()} CPUs"
    )
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="afhost-tgbench-"))
    fake = start_fake(args)
    try:
        phases, updates, db, problems = run(args, workdir, fake)
    except BenchError as exc:
        print(f"\nbench aborted: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        clean_up(workdir)
        fake.stop()
    report(phases, updates, db, problems)
    print(f"\n(total {time.monotonic() - started:.0f}s)")
    if args.json:
        Path(args.json).write_text(json.dumps(as_json(phases, args, updates), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
