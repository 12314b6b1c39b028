"""Benchmark: how many slow agent turns afhost runs at once, and a worker killed mid-turn.

The hosted target is bench/slow_agent.py: every turn awaits `--seconds` S and uses no CPU, like
an agent waiting on a remote model. afhost runs as in production: uvicorn, `DEBUG=0`, a
django-q2 cluster (`manage.py worker`, ORM broker, default settings: 2 worker processes),
`setup_schedules` run, Telegram's Bot API faked in this process (tests/fakes/telegram_api.py).
Only 127.0.0.1 is ever contacted.

`--scenario parallelism` (default): for each size N (`--sizes 40,200`) and each path
(`--paths foreground,background,telegram`), N turns are fired at once:

- foreground: N concurrent blocking `POST /v1/responses`; wall = first sent -> last answered;
- background: N concurrent creates with `"background": true`, then `GET /v1/responses/{id}`
  polled until all are terminal; wall = first create sent -> last run completed (the run's
  `completed_at` in the database);
- telegram: one message in each of N new private chats, posted to the webhook at once;
  wall = first post -> the fake Bot API received the last chat's answer.

Reported per path: parallelism = N x S / wall (goal: >= 20 at N=40, >= 100 at N=200), failures,
exactly-once answers, and the resident memory (VmRSS) of the worker process tree; for Telegram,
also when the turns' updates were stored, their runs started and ended, and their answers came.

`--scenario kill`: 20 Telegram turns (20 chats) and 20 background runs in flight, the whole
worker process group is killed with SIGKILL, a new worker is started, and each of the 20
chats sends a new message: every turn must end answered exactly once or visibly failed, and the
chats must answer their new message within 60 s of the new worker's start.

    .venv/bin/python bench/turns_bench.py [--sizes 40,200] [--seconds 2]
        [--paths foreground,background,telegram] [--scenario parallelism|kill|all]
        [--database-url postgresql://postgres@127.0.0.1:5432/turnsbench]

This is a benchmark, not a test: it exits 0 whatever the figures (2 when it could not measure,
130 when interrupted). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import responses_bench as rb  # noqa: E402
from bench import telegram_bench as tb  # noqa: E402
from bench.responses_bench import (  # noqa: E402
    BenchError,
    clean_up,
    database_label,
    free_port,
    log_tail,
    run_checked,
    server_cmd,
    spawn,
    stop,
    wait_listening,
)
from bench.slow_agent import read_turn_log  # noqa: E402
from bench.telegram_bench import (  # noqa: E402
    ANSWER_RE,
    QueueDepth,
    Updates,
    afhost_env,
    check_alive,
    log_problems,
)
from tests.fakes.telegram_api import FakeTelegramApi  # noqa: E402

VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
TARGET = "bench.slow_agent:answer"
PATHS = ("foreground", "background", "telegram")
SCENARIOS = ("parallelism", "kill", "all")
# The goals: parallelism >= goal at these N (with S = 2).
GOALS = {40: 20.0, 200: 100.0}
RECOVERY_GOAL = 60.0  # seconds from the new worker's start to each chat's next answer
TERMINAL = ("completed", "failed", "cancelled", "incomplete")
# Background runs are polled in rounds of at most this many GET /v1/responses/{id}, `--poll`
# seconds apart: a bounded load on the server (the wall comes from the database anyway).
POLL_BATCH = 16


# --- the afhost under test ---


@dataclass
class Afhost:
    env: dict[str, str]
    port: int
    key: str
    server: subprocess.Popen
    server_log: Path
    worker_log: Path
    worker: subprocess.Popen | None = None
    worker_started: float = 0.0  # time.monotonic()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def procs(self) -> dict[str, tuple[subprocess.Popen, Path]]:
        procs = {"server": (self.server, self.server_log)}
        if self.worker is not None:
            procs["worker"] = (self.worker, self.worker_log)
        return procs

    def start_worker(self) -> None:
        manage = [str(VENV_PYTHON), "manage.py", "worker"]
        self.worker = spawn(manage, env=self.env, log=self.worker_log)
        self.worker_started = time.monotonic()

    def kill_worker(self) -> int:
        """SIGKILL the worker's whole process group; returns how many processes it held."""
        if self.worker is None:
            return 0
        killed = kill_group(self.worker)
        self.worker = None
        return len(killed)


def kill_group(proc: subprocess.Popen) -> list[int]:
    """SIGKILL the whole process group of a process started by `spawn` (its own session) and
    wait until none of the group is left; returns the pids the group held."""
    pgid = proc.pid

    def members() -> list[int]:
        # A killed child may linger as a zombie until its new parent reaps it: it is dead.
        return [
            pid for pid, info in proc_table().items() if info.pgid == pgid and info.state != "Z"
        ]

    held = members()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while members():
        if time.monotonic() > deadline:
            raise BenchError(f"processes of group {pgid} survived SIGKILL")
        time.sleep(0.05)
    stop(proc)  # already dead: only forgets it
    return held


def start_afhost(args, workdir: Path, fake: FakeTelegramApi, seconds: float, **extra) -> Afhost:
    """A fresh database (migrated, schedules installed, an API key), the server and a worker."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = afhost_env(args, workdir, fake)  # DEBUG=0, the fake Bot API, a fresh database
    env.pop("AFHOST_DEMO_TOKEN_DELAY", None)
    env.update(AFHOST_TARGET=TARGET, BENCH_TURN_SECONDS=f"{seconds:g}", **extra)
    manage = [str(VENV_PYTHON), "manage.py"]
    run_checked([*manage, "migrate", "--verbosity", "0"], env=env, what="manage.py migrate")
    run_checked([*manage, "setup_schedules"], env=env, what="manage.py setup_schedules")
    key_out = run_checked(
        [*manage, "create_api_key", "turns-bench"], env=env, what="manage.py create_api_key"
    )
    port = free_port()
    server_log, worker_log = workdir / "server.log", workdir / "worker.log"
    print(
        f"- uvicorn on 127.0.0.1:{port} + worker ({args.workers} workers), "
        f"{database_label(env['DATABASE_URL'])}, target {TARGET}, S={seconds:g}s"
    )
    server = spawn(server_cmd("uvicorn", "afhost.asgi:application", port), env=env, log=server_log)
    wait_listening(server, port, server_log)
    afhost = Afhost(
        env, port, key_out.strip().splitlines()[-1].strip(), server, server_log, worker_log
    )
    afhost.start_worker()
    return afhost


# --- the database, read with plain SQL (the bench may run beside a schema being rewritten) ---


class Db:
    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = None
        rb._cleanups.append(self.close)

    def rows(self, sql: str, params: list) -> list[tuple]:
        """Rows of a query with %s placeholders (only ever our own constant SQL)."""
        if database_label(self.url) == "sqlite":
            path = self.url.removeprefix("sqlite:///")
            with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
                return conn.execute(sql.replace("%s", "?"), params).fetchall()
        import psycopg

        for attempt in (1, 2):
            if self.conn is None:
                self.conn = psycopg.connect(self.url, autocommit=True)
            try:
                return self.conn.execute(sql, params).fetchall()
            except psycopg.OperationalError:
                self.close()  # broken by a database restart: reconnect once
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def runs(self, public_ids: list[str]) -> dict[str, dict]:
        """Background runs by their API id: status, completed_at (epoch seconds), error."""
        found: dict[str, dict] = {}
        for chunk in range(0, len(public_ids), 500):
            ids = public_ids[chunk : chunk + 500]
            marks = ",".join(["%s"] * len(ids))
            raw = [resp_id.removeprefix("resp_") for resp_id in ids]
            if database_label(self.url) != "sqlite":
                raw = [f"{r[:8]}-{r[8:12]}-{r[12:16]}-{r[16:20]}-{r[20:]}" for r in raw]
            columns = "public_id, status, completed_at, updated_at, error"
            sql = f"SELECT {columns} FROM afhost_run WHERE public_id IN ({marks})"  # noqa: S608
            rows = self.rows(sql, raw)
            for public_id, status, completed_at, updated_at, error in rows:
                key = "resp_" + str(public_id).replace("-", "")
                found[key] = {
                    "status": status,
                    "completed_at": epoch(completed_at) or epoch(updated_at),
                    "error": error if isinstance(error, dict) else json.loads(error or "null"),
                }
        return found

    def updates(self, update_ids: list[int]) -> dict[int, dict]:
        marks = ",".join(["%s"] * len(update_ids))
        columns = "update_id, status, attempts, last_error, updated_at"
        table = "channels_app_telegramupdate"
        sql = f"SELECT {columns} FROM {table} WHERE update_id IN ({marks})"  # noqa: S608
        rows = self.rows(sql, update_ids)
        return {
            update_id: {
                "status": status,
                "attempts": attempts,
                "last_error": last_error,
                "updated_at": epoch(updated_at),
            }
            for update_id, status, attempts, last_error, updated_at in rows
        }

    def stage_times(self, update_ids: list[int], since: float) -> dict[str, list[float]]:
        """Seconds from `since` (epoch) to each update's storing, its run's start and end."""
        marks = ",".join(["%s"] * len(update_ids))
        joined = "channels_app_telegramupdate u JOIN afhost_run r ON r.id = u.run_id"
        columns = "u.created_at, r.started_at, r.completed_at"
        sql = f"SELECT {columns} FROM {joined} WHERE u.update_id IN ({marks})"  # noqa: S608
        stages: dict[str, list[float]] = {"stored": [], "run started": [], "run completed": []}
        for row in self.rows(sql, update_ids):
            for times, value in zip(stages.values(), row, strict=True):
                if (at := epoch(value)) is not None:
                    times.append(at - since)
        return stages

    def task_failures(self) -> int:
        return self.rows("SELECT COUNT(*) FROM django_q_task WHERE success = %s", [False])[0][0]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def spread(values: list[float]) -> tuple[float, float, float]:
    """p50, p90 and max."""
    ordered = sorted(values)
    return ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.9)], ordered[-1]


def epoch(value) -> float | None:
    """A datetime column (SQLite: naive UTC text; Postgres: aware) as epoch seconds."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


# --- resident memory of process trees, from /proc ---


@dataclass
class ProcInfo:
    state: str  # R, S, D, Z (zombie), ...
    ppid: int
    pgid: int
    started: int  # clock ticks after boot
    cpu: int  # utime + stime, clock ticks


def proc_table() -> dict[int, ProcInfo]:
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = ProcInfo(
            state=fields[0],
            ppid=int(fields[1]),
            pgid=int(fields[2]),
            started=int(fields[19]),
            cpu=int(fields[11]) + int(fields[12]),
        )
    return table


def memory_kib(pid: int, *, pss: bool) -> tuple[int, int]:
    """(VmRSS, Pss) in KiB (Pss 0 unless asked for). RSS counts the pages a forked worker
    shares with its parent in full, in every process; Pss divides each shared page among the
    processes sharing it."""
    rss = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
                break
    if not pss:
        return rss, 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
                break
    return rss, pss


def tree(root: int, table: dict[int, ProcInfo]) -> dict[int, int]:
    """The root and its descendants: pid -> depth."""
    children: dict[int, list[int]] = {}
    for pid, info in table.items():
        children.setdefault(info.ppid, []).append(pid)
    found, todo = {}, [(root, 0)]
    while todo:
        pid, depth = todo.pop()
        if pid in table and pid not in found:
            found[pid] = depth
            todo += [(child, depth + 1) for child in children.get(pid, [])]
    return found


@dataclass
class ProcPeak:
    pid: int
    depth: int
    started: int
    rss_kib: int = 0
    pss_kib: int = 0
    cpu_s: float = 0.0


@dataclass
class TreeMemory:
    """Peaks over a process tree while it was sampled."""

    rss_kib: int = 0  # peak of the sum of VmRSS
    pss_kib: int = 0  # peak of the sum of Pss
    procs: dict[int, ProcPeak] = field(default_factory=dict)


class MemorySampler(threading.Thread):
    """Samples the memory of process trees in a thread: RSS every `interval` s, Pss every
    `pss_every`th time (reading it walks the process's page tables: ~1.6 ms of kernel CPU per
    worker process here, taken from the machine being measured)."""

    def __init__(self, roots: dict[str, int], interval: float = 0.2, pss_every: int = 5) -> None:
        super().__init__(name="memory-sampler", daemon=True)
        self.roots = roots
        self.interval = interval
        self.pss_every = pss_every
        self.samples = 0
        self.trees = {name: TreeMemory() for name in roots}
        self._done = threading.Event()
        self.ticks = os.sysconf("SC_CLK_TCK")

    def sample(self) -> None:
        table = proc_table()
        with_pss, self.samples = self.samples % self.pss_every == 0, self.samples + 1
        for name, root in self.roots.items():
            seen, rss_sum, pss_sum = self.trees[name], 0, 0
            for pid, depth in tree(root, table).items():
                rss, pss = memory_kib(pid, pss=with_pss)
                rss_sum, pss_sum = rss_sum + rss, pss_sum + pss
                peak = seen.procs.setdefault(pid, ProcPeak(pid, depth, table[pid].started))
                peak.rss_kib, peak.pss_kib = max(peak.rss_kib, rss), max(peak.pss_kib, pss)
                peak.cpu_s = table[pid].cpu / self.ticks
            seen.rss_kib, seen.pss_kib = max(seen.rss_kib, rss_sum), max(seen.pss_kib, pss_sum)

    def run(self) -> None:
        while not self._done.wait(self.interval):
            with contextlib.suppress(Exception):  # a process may vanish mid-read
                self.sample()

    def finish(self) -> MemorySampler:
        self._done.set()
        self.join(timeout=5)
        return self


def roles(procs: list[ProcPeak], workers: int) -> dict[int, str]:
    """Names for a worker's processes: django-q2 forks a sentinel, which forks the workers,
    then the monitor and the pusher (a guess from the start order; respawned workers come later).
    """
    top = {0: "manage.py worker", 1: "sentinel"}
    names = {p.pid: top.get(p.depth, f"depth {p.depth}") for p in procs}
    children = sorted((p for p in procs if p.depth == 2), key=lambda p: (p.started, p.pid))
    if len(children) >= workers + 2:
        guesses = ["worker"] * workers + ["monitor", "pusher"]
        guesses += ["worker (respawned)"] * (len(children) - len(guesses))
        names.update({p.pid: guess for p, guess in zip(children, guesses, strict=True)})
    return names


# --- turns ---


@dataclass
class Turn:
    """One request on the Responses API and what became of it."""

    text: str
    sent_at: float = 0.0  # time.monotonic()
    sent_wall: float = 0.0  # time.time(), to compare with the database's timestamps
    acked_at: float = 0.0  # the create's HTTP answer
    done_at: float = 0.0  # answered (foreground) or seen terminal (background)
    done_wall: float | None = None  # background: the run's completed_at in the database
    id: str = ""
    status: str = ""  # the response's status; "" when the request itself failed
    answer: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        quoted = ANSWER_RE.match(self.answer)
        return self.status == "completed" and bool(quoted) and quoted.group(1) == self.text


def output_text(body: dict) -> str:
    return "".join(
        part.get("text", "")
        for item in body.get("output") or []
        if item.get("type") == "message"
        for part in item.get("content") or []
        if part.get("type") == "output_text"
    )


class ClientError(Exception):
    """A request that got no HTTP response (refused, reset, timed out)."""


class Client:
    """Keep-alive HTTP/1.1 connections to afhost, all opened before the first request.

    Not httpx: httpcore walks its whole pool on every request and every response
    (`_assign_requests_to_connections`), which with 200 connections made this process spend more
    CPU than the server spent taking the creates, on the same two cores.
    """

    def __init__(self, afhost: Afhost, connections: int, timeout: float) -> None:
        self.port, self.connections, self.timeout = afhost.port, connections, timeout
        fields = {"Host": f"127.0.0.1:{afhost.port}", **afhost.headers}
        self.fields = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
        # A connection, or None where one failed: the next request on it connects again.
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]

    async def __aenter__(self) -> Client:
        self.idle = asyncio.Queue()
        opened = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", self.port) for _ in range(self.connections))
        )
        for stream in opened:
            self.idle.put_nowait(stream)
        return self

    async def __aexit__(self, *exc_info) -> None:
        while not self.idle.empty():
            if (stream := self.idle.get_nowait()) is not None:
                stream[1].close()

    async def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        """(status, body) of one request on an idle connection."""
        data = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\n{self.fields}"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        stream = await self.idle.get()
        try:
            if stream is None:
                stream = await asyncio.open_connection("127.0.0.1", self.port)
            reader, writer = stream
            writer.write(head.encode() + data)
            status, raw, close = await asyncio.wait_for(tb.read_response(reader), self.timeout)
        except (OSError, EOFError, ValueError, TimeoutError) as exc:
            if stream is not None:
                stream[1].close()
            self.idle.put_nowait(None)
            raise ClientError(f"{type(exc).__name__}: {exc}") from None
        if close:
            writer.close()
        self.idle.put_nowait(None if close else stream)
        return status, raw


async def create(http: Client, turn: Turn, *, background: bool) -> None:
    """POST the turn's create and read its answer."""
    body = {"model": "bench", "input": turn.text, **({"background": True} if background else {})}
    turn.sent_at, turn.sent_wall = time.monotonic(), time.time()
    try:
        status, raw = await http.request("POST", "/v1/responses", body)
    except ClientError as exc:
        turn.error = str(exc)
        return
    turn.acked_at = time.monotonic()
    if not background:
        turn.done_at = turn.acked_at
    read(turn, status, raw)


def read(turn: Turn, status: int, raw: bytes) -> None:
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    if status != 200:
        turn.error = f"HTTP {status}: {raw[:200].decode(errors='replace')}"
        return
    turn.id, turn.status = body.get("id", turn.id), body.get("status", "")
    turn.answer = output_text(body)
    if turn.status == "failed":
        turn.error = str((body.get("error") or {}).get("message", "failed"))


async def poll(http: Client, turns: list[Turn], deadline: float, every: float) -> None:
    """GET the unfinished background runs, POLL_BATCH at a time in turn, until all are
    terminal (or the deadline)."""

    async def one(turn: Turn) -> None:
        try:
            status, raw = await http.request("GET", f"/v1/responses/{turn.id}")
        except ClientError as exc:
            turn.error = str(exc)
            return
        turn.error = ""
        read(turn, status, raw)
        if turn.status in TERMINAL:
            turn.done_at = time.monotonic()

    cursor = 0
    while pending := [t for t in turns if t.id and t.status not in TERMINAL]:
        if time.monotonic() > deadline:
            return
        cursor = cursor if cursor < len(pending) else 0
        await asyncio.gather(*(one(t) for t in pending[cursor : cursor + POLL_BATCH]))
        cursor += POLL_BATCH
        await asyncio.sleep(every)


def fire_foreground(afhost: Afhost, turns: list[Turn], timeout: float) -> None:
    async def go() -> None:
        async with Client(afhost, len(turns), timeout) as http:
            await asyncio.gather(*(create(http, t, background=False) for t in turns))

    asyncio.run(go())


def fire_background(afhost: Afhost, turns: list[Turn], timeout: float, every: float) -> None:
    async def go() -> None:
        async with Client(afhost, len(turns), 30) as http:
            await asyncio.gather(*(create(http, t, background=True) for t in turns))
            await poll(http, turns, time.monotonic() + timeout, every)

    asyncio.run(go())


def settle_background(db: Db, turns: list[Turn]) -> None:
    """The runs' completed_at from the database: a precise end, whatever the poll interval."""
    runs = db.runs([t.id for t in turns if t.id])
    for turn in turns:
        if (run := runs.get(turn.id)) is not None and run["status"] in TERMINAL:
            turn.done_wall = run["completed_at"]


def chat_answers(fake: FakeTelegramApi) -> dict[int, list[tuple[float, str]]]:
    """Every sendMessage the fake accepted, by chat: (arrival, text)."""
    answers: dict[int, list[tuple[float, str]]] = {}
    for call in fake.calls_to("sendMessage"):
        if not call.failed:
            text = html.unescape(str(call.params.get("text", "")))
            answers.setdefault(call.params.get("chat_id"), []).append((call.at, text))
    return answers


# --- scenario: parallelism ---


@dataclass
class PathResult:
    path: str
    n: int
    seconds: float
    wall: float = 0.0
    ok: int = 0
    failed: int = 0  # answered with a failure, or the request failed
    unfinished: int = 0  # no answer before the timeout
    duplicated: int = 0  # telegram: answered more than once
    unmatched: int = 0  # telegram: answers that match no update
    sent_in: float = 0.0  # first request sent -> last acknowledged (creates / webhook posts)
    # telegram: seconds from the first post to each stage of the turns, (p50, p90, max) each
    stages: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    worker: TreeMemory = field(default_factory=TreeMemory)  # peaks during this path
    server: TreeMemory = field(default_factory=TreeMemory)

    @property
    def parallelism(self) -> float:
        return self.n * self.seconds / self.wall if self.wall else 0.0

    @property
    def verdict(self) -> str:
        goal = GOALS.get(self.n)
        if goal is None:
            return ""
        complete = self.ok == self.n
        return "PASS" if complete and self.parallelism >= goal else "FAIL"


def warm_up(afhost: Afhost, updates: Updates, timeout: float) -> None:
    """One turn of each kind, end to end: server, worker and target are loaded and ready."""
    fg, bg = [Turn("warm-up foreground")], [Turn("warm-up background")]
    sample = updates.make(updates.chats(1)[0], "warmup")
    tb.post_all(afhost.port, [sample], 1)
    fire_foreground(afhost, fg, timeout)
    fire_background(afhost, bg, timeout, 0.2)
    if not updates.wait_answered([sample], timeout):
        check_alive(afhost.procs)
        raise BenchError(f"the warm-up Telegram update was not answered within {timeout:.0f}s")
    for turn in (*fg, *bg):
        if not turn.ok:
            check_alive(afhost.procs)
            raise BenchError(
                f"the warm-up {turn.text!r} got status {turn.status!r}, answer {turn.answer!r}, "
                f"error {turn.error!r}\nserver log:\n{log_tail(afhost.server_log)}"
                f"\nworker log:\n{log_tail(afhost.worker_log)}"
            )


def measure_path(path: str, n: int, afhost: Afhost, updates: Updates, db: Db, args) -> PathResult:
    result = PathResult(path, n, args.seconds)
    if path == "telegram":
        samples = [updates.make(chat, f"n{n}") for chat in updates.chats(n)]
        tb.post_all(afhost.port, samples, n)
        first = min(s.sent_at for s in samples)
        result.sent_in = max(s.acked_at or s.sent_at for s in samples) - first
        updates.wait_answered(samples, args.timeout)
        time.sleep(1)  # a late second answer would show up here
        updates.collect()
        answered = [s for s in samples if s.answers]
        result.wall = max((s.answers[0] for s in answered), default=first) - first
        result.ok = len(answered)
        result.failed = sum(1 for s in samples if not s.acked_at or s.status != 200)
        result.unfinished = sum(1 for s in samples if s.acked_at and not s.answers)
        result.duplicated = sum(1 for s in samples if len(s.answers) > 1)
        result.unmatched = len(updates.unmatched)
        result.errors = [f"update {s.update_id}: {s.status} {s.error}" for s in samples if s.error]
        # The database's clock is the wall clock; the samples' is the monotonic one.
        since = db.stage_times(
            [s.update_id for s in samples], first + time.time() - time.monotonic()
        )
        since["answered"] = [s.answers[0] - first for s in answered]
        result.stages = {name: spread(times) for name, times in since.items() if times}
        return result
    turns = [Turn(f"bench {path} n{n} #{i}") for i in range(n)]
    if path == "foreground":
        fire_foreground(afhost, turns, args.timeout)
        first = min(t.sent_at for t in turns)
        result.wall = max(t.done_at or t.sent_at for t in turns) - first
    else:
        fire_background(afhost, turns, args.timeout, args.poll)
        settle_background(db, turns)
        first_wall = min(t.sent_wall for t in turns)
        ends = [t.done_wall for t in turns if t.done_wall is not None]
        result.wall = max(ends) - first_wall if ends else 0.0
    result.sent_in = max(t.acked_at or t.sent_at for t in turns) - min(t.sent_at for t in turns)
    result.ok = sum(1 for t in turns if t.ok)
    result.unfinished = sum(1 for t in turns if t.id and t.status not in TERMINAL)
    result.failed = n - result.ok - result.unfinished
    result.errors = [
        f"{t.text}: {t.status or 'no response'} {t.error or repr(t.answer[:80])}"
        for t in turns
        if not t.ok and t.status in (*TERMINAL, "")
    ]
    return result


def parallelism(args, workdir: Path, fake: FakeTelegramApi) -> tuple[list[PathResult], dict]:
    afhost = start_afhost(args, workdir / "parallelism", fake, args.seconds)
    db = Db(afhost.env["DATABASE_URL"])
    queue = QueueDepth(afhost.env["DATABASE_URL"])
    rb._cleanups.append(queue.close)
    updates = Updates(fake)
    warm_up(afhost, updates, timeout=60 + 2 * args.seconds)
    results: list[PathResult] = []
    roots = {"worker": afhost.worker.pid, "server": afhost.server.pid}
    idle = MemorySampler(roots)
    idle.sample()
    for n in args.sizes:
        for path in args.paths:
            if queue.wait_empty(args.timeout) is None:
                raise BenchError(f"the task queue still holds {queue()} tasks before {path}")
            print(f"  {path:10} N={n:<4} S={args.seconds:g}s ...", end="", flush=True)
            sampler = MemorySampler(roots)
            sampler.start()
            try:
                result = measure_path(path, n, afhost, updates, db, args)
            finally:
                sampler.finish()
            check_alive(afhost.procs)
            result.worker, result.server = sampler.trees["worker"], sampler.trees["server"]
            results.append(result)
            print(
                f" wall {result.wall:7.2f}s  parallelism {result.parallelism:6.1f}  "
                f"ok {result.ok}/{n}"
            )
    stop(afhost.server)
    if afhost.worker is not None:
        stop(afhost.worker)
    extra = {
        "task_failures": db.task_failures(),
        "log_problems": {
            "server": log_problems(afhost.server_log),
            "worker": log_problems(afhost.worker_log),
        },
        "idle": idle.trees,
        "logs": (afhost.server_log, afhost.worker_log),
    }
    return results, extra


def report_parallelism(results: list[PathResult], extra: dict, args) -> None:
    print()
    print(
        f"{'path':10}  {'N':>4}  {'S':>3}  {'wall s':>7}  {'parallelism':>11}  {'goal':>5}  "
        f"{'verdict':7}  {'ok':>4}  {'failed':>6}  {'unfin.':>6}  {'dup.':>4}  {'sent in s':>9}  "
        f"{'worker RSS':>12}  {'PSS':>5}  {'server RSS':>10}"
    )
    for r in results:
        goal = GOALS.get(r.n)
        sent_in = f"{r.sent_in:9.2f}" if r.path != "foreground" else f"{'-':>9}"
        print(
            f"{r.path:10}  {r.n:4d}  {r.seconds:3g}  {r.wall:7.2f}  {r.parallelism:11.1f}  "
            f"{f'>={goal:g}' if goal else '':>5}  {r.verdict:7}  {r.ok:4d}  {r.failed:6d}  "
            f"{r.unfinished:6d}  {r.duplicated:4d}  {sent_in}  "
            f"{mib(r.worker.rss_kib):>12}  {mib(r.worker.pss_kib):>5}  "
            f"{mib(r.server.rss_kib):>10}"
        )
    for r in results:
        if r.stages:
            stages = ", ".join(
                f"{name} {'/'.join(f'{v:.2f}' for v in at)}" for name, at in r.stages.items()
            )
            print(f"  {r.path} N={r.n}, s after the first post (p50/p90/max): {stages}")
    for r in results:
        for error in r.errors[:3]:
            print(f"  {r.path} N={r.n}: {error}")
        if r.unmatched:
            print(f"  {r.path} N={r.n}: {r.unmatched} sendMessage calls matched no update")
    idle = extra["idle"]
    print(
        "(wall: first request sent -> last turn answered; sent in: first request sent -> last one "
        "acknowledged; memory in MiB: peak of the sum over the process tree during the path; "
        f"idle after the warm-up: worker {mib(idle['worker'].rss_kib)} RSS / "
        f"{mib(idle['worker'].pss_kib)} PSS, server {mib(idle['server'].rss_kib)} RSS)"
    )
    largest = max(args.sizes)
    at_largest = [r for r in results if r.n == largest]
    if at_largest:
        print(f"\nworker processes at N={largest}: peak RSS / PSS in MiB during each path")
        procs: dict[int, ProcPeak] = {}
        for r in at_largest:
            procs.update({pid: p for pid, p in r.worker.procs.items() if pid not in procs})
        names = roles(list(procs.values()), args.workers)
        print(f"  {'pid':>7}  {'process':18}" + "".join(f"  {r.path:>15}" for r in at_largest))
        for p in sorted(procs.values(), key=lambda p: (p.depth, p.started, p.pid)):
            cells = []
            for r in at_largest:
                seen = r.worker.procs.get(p.pid)
                cell = f"{mib(seen.rss_kib)} / {mib(seen.pss_kib)}" if seen else "-"
                cells.append(f"  {cell:>15}")
            print(f"  {p.pid:7d}  {names[p.pid]:18}" + "".join(cells))
        print(
            f"  {'':7}  {'sum (peak)':18}"
            + "".join(
                f"  {mib(r.worker.rss_kib) + ' / ' + mib(r.worker.pss_kib):>15}" for r in at_largest
            )
        )
    print(
        f"\ndjango-q task failures: {extra['task_failures']}; log lines with Traceback/ERROR: "
        + ", ".join(f"{k} {v}" for k, v in extra["log_problems"].items())
    )
    for name, log in zip(("server", "worker"), extra["logs"], strict=True):
        if extra["log_problems"][name]:
            print(f"\n{name} log (tail):\n{log_tail(log, 15)}")


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f}"


# --- scenario: a worker killed mid-turn ---


@dataclass
class KillResult:
    killed_processes: int = 0
    fired_in: float = 0.0  # seconds from the first turn sent to the last one accepted
    kill_at: float = 0.0  # seconds after the last turn was accepted
    in_flight: dict[str, int] = field(default_factory=dict)  # per kind, from the turn log
    answered_before_kill: dict[str, int] = field(default_factory=dict)
    background: Counter = field(default_factory=Counter)
    background_failures: Counter = field(default_factory=Counter)
    telegram: Counter = field(default_factory=Counter)
    telegram_failures: Counter = field(default_factory=Counter)
    interrupted: Counter = field(default_factory=Counter)  # outcomes of the turns in flight
    log_problems: dict[str, list[str]] = field(default_factory=dict)  # Traceback/ERROR lines
    reexecuted: dict[str, int] = field(default_factory=dict)
    next_answers: list[float | None] = field(default_factory=list)  # per chat, s after restart
    # The last of the interrupted turns to end (answered, completed or failed), s after restart.
    last_ended: dict[str, float] = field(default_factory=dict)
    waited: float = 0.0


def turn_log(path: Path) -> tuple[Counter, Counter]:
    """(starts, ends) per turn text, from bench/slow_agent.py's BENCH_TURN_LOG."""
    starts, ends = Counter(), Counter()
    for execution in read_turn_log(path):
        starts[execution.text] += 1
        ends[execution.text] += execution.ended is not None
    return starts, ends


def kill_scenario(args, workdir: Path, fake: FakeTelegramApi) -> KillResult:
    log = workdir / "kill" / "turns.log"
    afhost = start_afhost(args, workdir / "kill", fake, args.kill_seconds, BENCH_TURN_LOG=str(log))
    db = Db(afhost.env["DATABASE_URL"])
    updates = Updates(fake)
    warm_up(afhost, updates, timeout=60 + 2 * args.kill_seconds)
    result = KillResult()
    chats = updates.chats(args.kill_turns)
    samples = [updates.make(chat, "kill") for chat in chats]
    turns = [Turn(f"bench kill background #{i}") for i in range(args.kill_turns)]
    print(
        f"  {len(samples)} Telegram turns and {len(turns)} background runs, alternating, S="
        f"{args.kill_seconds:g}s; SIGKILL to the worker {args.kill_after:g}s after the last ..."
    )

    async def fire() -> None:
        # One after the other, alternating kinds: the task queue holds both kinds in turn, so
        # even workers that take one turn at a time are killed in the middle of both kinds.
        async with Client(afhost, 1, 30) as http:
            for sample, turn in zip(samples, turns, strict=True):
                await tb._post_all(afhost.port, [sample], 1)
                await create(http, turn, background=True)

    asyncio.run(fire())
    fired = time.monotonic()
    result.fired_in = fired - samples[0].sent_at
    bad = [t.text for t in turns if not t.id] + [s.text for s in samples if s.status != 200]
    if bad:
        raise BenchError(f"{len(bad)} of the turns were not accepted: {bad[:3]}")
    time.sleep(args.kill_after)
    check_alive(afhost.procs)
    result.kill_at = time.monotonic() - fired
    result.killed_processes = afhost.kill_worker()
    starts, ends = turn_log(log)  # as the dead workers left it
    updates.collect()
    interrupted = {text for text in starts if starts[text] > ends[text]}
    result.in_flight = {
        "telegram": sum(1 for s in samples if s.text in interrupted),
        "background": sum(1 for t in turns if t.text in interrupted),
    }
    result.answered_before_kill = {
        "telegram": sum(1 for s in samples if s.answers),
        "background": sum(1 for t in turns if ends[t.text]),
    }
    print(
        f"  sent in {result.fired_in:.1f}s; killed {result.killed_processes} processes "
        f"{result.kill_at:.1f}s after the last; in flight: {result.in_flight}; "
        f"done before the kill: {result.answered_before_kill}"
    )
    time.sleep(args.restart_after)
    afhost.start_worker()
    restarted, restarted_wall = afhost.worker_started, time.time()
    after = [updates.make(chat, "after") for chat in chats]
    tb.post_all(afhost.port, after, len(after))
    print(
        f"  new worker started; each chat sent a new message; waiting up to "
        f"{args.recovery_timeout:g}s for everything to end ..."
    )

    async def wait_background() -> None:
        async with Client(afhost, POLL_BATCH, 30) as http:
            await poll(http, turns, restarted + args.recovery_timeout, 0.5)

    deadline = restarted + args.recovery_timeout
    waiter = threading.Thread(target=lambda: asyncio.run(wait_background()), daemon=True)
    waiter.start()
    while time.monotonic() < deadline:
        updates.collect()
        tg_state = db.updates([s.update_id for s in samples])
        settled = all(
            s.answers or tg_state.get(s.update_id, {}).get("status") in ("failed", "ignored")
            for s in samples
        )
        if settled and all(s.answers for s in after) and not waiter.is_alive():
            break
        check_alive(afhost.procs)
        time.sleep(0.5)
    waiter.join(timeout=max(1.0, deadline - time.monotonic() + 5))
    result.waited = time.monotonic() - restarted
    time.sleep(1)  # a late duplicate would show up here
    updates.collect()

    # Every turn: answered once, failed visibly, duplicated, lost, or stuck (not ended yet).
    runs = db.runs([t.id for t in turns])
    for turn in turns:
        run = runs.get(turn.id)
        if run is None:
            outcome = "lost (no run in the database)"
        elif turn.ok:
            outcome = "completed"
        elif run["status"] == "failed":
            outcome = "failed visibly"
            result.background_failures[str((run["error"] or {}).get("message", "?"))] += 1
        elif run["status"] in TERMINAL:
            outcome = f"{run['status']} (answer {turn.answer[:40]!r})"
        else:
            outcome = f"stuck ({run['status']})"
        result.background[outcome] += 1
        if turn.text in interrupted:
            result.interrupted[f"background: {outcome}"] += 1
    tg_state = db.updates([s.update_id for s in samples])
    by_chat = chat_answers(fake)
    for sample in samples:
        state = tg_state.get(sample.update_id, {})
        status = state.get("status")
        # A reply that quotes nothing: the bot telling the person it could not answer.
        sorry = [text for _, text in by_chat.get(sample.chat_id, []) if not ANSWER_RE.match(text)]
        if len(sample.answers) > 1:
            outcome = "answered more than once"
        elif sample.answers:
            outcome = "answered once"
        elif status == "failed" or sorry:
            outcome = "failed visibly"
            reason = state.get("last_error") or (sorry[0][:80] if sorry else "?")
            result.telegram_failures[str(reason)[:120]] += 1
        elif status == "pending":
            outcome = f"stuck (pending, {state.get('attempts', 0)} attempts)"
        else:
            outcome = f"lost (inbox: {status}, no answer)"
        result.telegram[outcome] += 1
        if sample.text in interrupted:
            result.interrupted[f"telegram: {outcome}"] += 1

    starts, _ = turn_log(log)
    result.reexecuted = {
        "telegram": sum(1 for s in samples if starts[s.text] > 1),
        "background": sum(1 for t in turns if starts[t.text] > 1),
    }
    result.next_answers = [s.answers[0] - restarted if s.answers else None for s in after]
    ended = [run["completed_at"] for run in runs.values() if run["status"] in TERMINAL]
    if ended:
        result.last_ended["background"] = max(ended) - restarted_wall
    if answered := [s.answers[0] for s in samples if s.answers]:
        result.last_ended["telegram"] = max(answered) - restarted
    stop(afhost.server)
    if afhost.worker is not None:
        stop(afhost.worker)
    for name, path in (("server", afhost.server_log), ("worker", afhost.worker_log)):
        with contextlib.suppress(OSError):
            lines = path.read_text(errors="replace").splitlines()
            result.log_problems[name] = [
                line[:200] for line in lines if "Traceback" in line or " ERROR " in line
            ]
    return result


def report_kill(r: KillResult, args) -> None:
    print()
    print(
        f"kill scenario: {args.kill_turns} Telegram turns + {args.kill_turns} background runs, "
        f"S={args.kill_seconds:g}s, {args.workers} workers; SIGKILL to {r.killed_processes} "
        f"processes {r.kill_at:.1f}s after the last turn was accepted (all {r.fired_in:.1f}s "
        f"after the first); new worker {args.restart_after:g}s later; "
        f"watched for {r.waited:.0f}s"
    )
    print(f"  in flight at the kill (the agent had started, not finished): {r.in_flight}")
    print(f"    what became of them: {dict(r.interrupted) or '-'}")
    print(f"  finished before the kill: {r.answered_before_kill}")
    print(f"  agent ran the same turn again after the kill: {r.reexecuted}")
    last = ", ".join(f"{kind} {at:.1f}s" for kind, at in r.last_ended.items())
    print(f"  the last to end (new worker start -> its end): {last or '-'}")
    print(f"  background runs: {dict(r.background)}")
    for reason, count in r.background_failures.items():
        print(f"    failed {count} x: {reason}")
    print(f"  telegram turns: {dict(r.telegram)}")
    for reason, count in r.telegram_failures.items():
        print(f"    failed {count} x: {reason}")
    stuck = sum(c for k, c in (*r.background.items(), *r.telegram.items()) if k.startswith("stuck"))
    lost = sum(c for k, c in (*r.background.items(), *r.telegram.items()) if k.startswith("lost"))
    duplicated = r.telegram["answered more than once"]
    ended = "OK" if not (stuck or lost or duplicated) else "NOT OK"
    print(
        f"  lost {lost}, duplicated {duplicated}, stuck {stuck} (not ended {r.waited:.0f}s after "
        f"the new worker's start): {ended}"
    )
    answered = sorted(t for t in r.next_answers if t is not None)
    missing = sum(1 for t in r.next_answers if t is None)
    slowest = f"{answered[-1]:.1f}s" if answered else "-"
    median = f"{answered[len(answered) // 2]:.1f}s" if answered else "-"
    within = missing == 0 and answered and answered[-1] <= RECOVERY_GOAL
    in_time = sum(1 for t in answered if t <= RECOVERY_GOAL)
    print(
        f"  next message after the restart: {len(answered)}/{len(r.next_answers)} chats answered, "
        f"{in_time} within {RECOVERY_GOAL:g}s (new worker start -> answer: median {median}, "
        f"max {slowest}"
        + (f"; {missing} not answered within {r.waited:.0f}s" if missing else "")
        + f"); goal <= {RECOVERY_GOAL:g}s: {'PASS' if within else 'FAIL'}"
    )
    print(
        "  log lines with Traceback/ERROR: "
        + ", ".join(f"{name} {len(lines)}" for name, lines in r.log_problems.items())
    )
    for name, lines in r.log_problems.items():
        for line in lines[:5]:
            print(f"    {name}: {line}")


# --- main ---


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default="parallelism",
        help="parallelism (default): N turns at once per path; kill: a worker SIGKILLed "
        "mid-turn; all: both, each on its own fresh database",
    )
    parser.add_argument("--sizes", default="40,200", help="N values (default 40,200)")
    parser.add_argument(
        "--seconds", type=float, default=2, help="S: seconds the target awaits per turn"
    )
    parser.add_argument(
        "--paths", default=",".join(PATHS), help=f"comma-separated subset of {','.join(PATHS)}"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="AFHOST_WORKERS (default 2, the default)"
    )
    parser.add_argument(
        "--database-url",
        default="",
        help="a postgres:// URL on this machine: a fresh database is created next to the one "
        "named (e.g. .../turnsbench -> turnsbench_<pid>_<time>) and dropped at the end "
        "(default: a fresh SQLite file in a temp dir)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds to wait for one path's N turns"
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=0.25,
        help=f"seconds between rounds of (at most {POLL_BATCH}) GETs of background runs",
    )
    parser.add_argument("--kill-turns", type=int, default=20, help="kill: turns of each kind")
    parser.add_argument(
        "--kill-seconds", type=float, default=5, help="kill: S, seconds per turn (default 5)"
    )
    parser.add_argument(
        "--kill-after",
        type=float,
        default=None,
        help="kill: SIGKILL this many seconds after the last turn was accepted (default S/2)",
    )
    parser.add_argument(
        "--restart-after", type=float, default=1, help="kill: seconds before the new worker"
    )
    parser.add_argument(
        "--recovery-timeout",
        type=float,
        default=120,
        help="kill: seconds after the new worker's start to wait for every turn to end",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(n) for n in args.sizes.split(",") if n]
    except ValueError:
        parser.error("--sizes takes comma-separated integers, e.g. 40,200")
    args.paths = [p for p in args.paths.split(",") if p]
    if unknown := set(args.paths) - set(PATHS):
        parser.error(f"unknown path: {', '.join(sorted(unknown))}")
    if not args.sizes or min(args.sizes) < 1 or args.workers < 1 or args.kill_turns < 1:
        parser.error("--sizes, --workers and --kill-turns must be >= 1")
    if args.seconds <= 0 or args.kill_seconds <= 0:
        parser.error("--seconds and --kill-seconds must be > 0")
    if args.kill_after is None:
        args.kill_after = args.kill_seconds / 2
    if args.database_url and urlsplit(args.database_url).hostname not in (
        None,
        "127.0.0.1",
        "localhost",
        "::1",
    ):
        parser.error("--database-url must point at this machine (127.0.0.1)")

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, rb._raise_interrupt)
    print(
        f"turns bench: scenario {args.scenario}, sizes {args.sizes}, S={args.seconds:g}s, "
        f"paths {','.join(args.paths)}, {args.workers} workers; "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs"
    )
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="afhost-turnsbench-"))
    fake = FakeTelegramApi(tb.TOKEN).start()
    results: list[PathResult] = []
    extra: dict = {}
    killed: KillResult | None = None
    try:
        if args.scenario in ("parallelism", "all"):
            print("parallelism:")
            results, extra = parallelism(args, workdir, fake)
        if args.scenario in ("kill", "all"):
            print("worker killed mid-turn:")
            killed = kill_scenario(args, workdir, fake)
    except BenchError as exc:
        print(f"\nbench aborted: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        clean_up(workdir)
        fake.stop()
    if results:
        report_parallelism(results, extra, args)
    if killed is not None:
        report_kill(killed, args)
    print(f"\n(total {time.monotonic() - started:.0f}s)")
    if args.json:
        out = {
            "database": database_label(args.database_url or "sqlite"),
            "workers": args.workers,
            "parallelism": [
                {**asdict(r), "parallelism": r.parallelism, "verdict": r.verdict} for r in results
            ],
        }
        if extra:
            out["task_failures"] = extra["task_failures"]
            out["idle_memory"] = {name: asdict(t) for name, t in extra["idle"].items()}
        if killed is not None:
            # vars(), not asdict(): asdict rebuilds a Counter from its (key, count) pairs.
            out["kill"] = vars(killed)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
