"""Benchmark: three faults reproduced end to end on PostgreSQL, and what afhost loses to them.

afhost runs as in the other benches (uvicorn, `DEBUG=0`, `manage.py worker` with its default
settings, Telegram's Bot API faked in this process, only 127.0.0.1 contacted), with the slow
target (bench/slow_agent.py, `--seconds` S per turn, its turn log telling which turns ran when and
where) and the production lease (`AFHOST_LEASE_SECONDS=30`, `--lease-seconds`). Each scenario
gets a fresh PostgreSQL database (`--database-url`), dropped at the end.

1. kill-worker: 50 background runs and 60 Telegram updates (60 chats) in flight, then SIGKILL to
   the worker's whole process group; a new worker starts 1 s later (the fault's end) and every
   chat sends its next message.
2. kill-web: 300 Telegram updates (distinct update_ids, 50 chats) posted to the webhook over 40
   connections; SIGKILL to the web server when half are acknowledged; a new one starts on the
   same port 1 s later (the fault's end); every update whose post got no 200 is posted again,
   as Telegram does, until it gets one; a new chat then sends a message.
3. postgres-restart: mixed load (background creates, blocking creates, webhook posts, readiness
   probes; turns running in the worker and the web process) for `--before` s, PostgreSQL stopped
   for `--outage` 3 s (pg_ctlcluster stop, then start: the fault's end), the load going on for
   `--after` s. Every HTTP answer is counted: clean (2xx, or a 5xx with a JSON body) or not.
   The web server and the worker are never restarted.

Per scenario: lost (accepted, then never ended), duplicated (a Telegram update answered twice,
or one turn run twice at the same time), stuck (not ended by `--deadline` s after the fault's
end), turns that failed visibly, and the recovery time from the fault's end until everything
accepted before it has ended (answered or visibly failed) and until the next message is
answered. Goals: 0 lost, 0 duplicated, recovery within 60 s.

Scenario 3 stops the machine's shared PostgreSQL: it first waits (polling every 30 s, up to
20 minutes) until no test run or other bench is running, and checks again just before the stop;
`--dry-run-outage` runs it without stopping anything.

    .venv/bin/python bench/fault_bench.py [--scenarios kill-worker,kill-web,postgres-restart]
        [--database-url postgresql://afhost:afhost@127.0.0.1:5432/faultbench]

This is a benchmark, not a test: it exits 0 whatever the figures (2 when it could not measure,
130 when interrupted). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import responses_bench as rb  # noqa: E402
from bench import telegram_bench as tb  # noqa: E402
from bench.responses_bench import (  # noqa: E402
    BenchError,
    clean_up,
    database_label,
    server_cmd,
    spawn,
    stop,
    wait_listening,
)
from bench.slow_agent import Execution, read_turn_log  # noqa: E402
from bench.telegram_bench import Sample, Updates, check_alive  # noqa: E402
from bench.turns_bench import (  # noqa: E402
    TERMINAL,
    Afhost,
    Db,
    Turn,
    chat_answers,
    client,
    create,
    epoch,
    kill_group,
    proc_table,
    start_afhost,
    tree,
    warm_up,
)
from tests.fakes.telegram_api import FakeTelegramApi  # noqa: E402

SCENARIOS = ("kill-worker", "kill-web", "postgres-restart")
DEFAULT_DATABASE_URL = "postgresql://afhost:afhost@127.0.0.1:5432/faultbench"
RECOVERY_GOAL = 60.0  # seconds from the fault's end
# Processes scenario 3 must not run beside: they use the PostgreSQL it stops.
OTHER_RUNS = re.compile(r"pytest|turns_bench|responses_bench|telegram_bench|fault_bench")
# Telegram retries an unacknowledged update with a growing pause; ours, in seconds.
REPOST_PAUSES = (1, 2, 4, 5)


def to_mono(wall: float | None) -> float | None:
    """A wall-clock time (the database's) on time.monotonic()'s clock (the fake's, ours)."""
    return None if wall is None else wall - (time.time() - time.monotonic())


# --- what became of each accepted turn ---


@dataclass
class Outcome:
    kind: str  # background, blocking, telegram
    label: str  # the turn's text
    verdict: str  # ended, failed visibly, duplicated, lost, stuck
    detail: str
    ended_at: float | None  # time.monotonic()
    counts: bool = True  # accepted before the fault's end: part of "everything ended after"


def judge_runs(db: Db, turns: list[Turn], kind: str) -> list[Outcome]:
    """Runs whose create was accepted (it answered 200 with an id), from the database."""
    accepted = [t for t in turns if t.id]
    rows = db.runs([t.id for t in accepted]) if accepted else {}
    outcomes = []
    for turn in accepted:
        run = rows.get(turn.id)
        if run is None:
            outcomes.append(Outcome(kind, turn.text, "lost", "no run in the database", None))
        elif run["status"] == "completed":
            ended = to_mono(run["completed_at"])
            outcomes.append(Outcome(kind, turn.text, "ended", "completed", ended))
        elif run["status"] in TERMINAL:
            reason = str((run["error"] or {}).get("message", "?"))
            detail = f"{run['status']}: {reason}"
            ended = to_mono(run["completed_at"])
            outcomes.append(Outcome(kind, turn.text, "failed visibly", detail, ended))
        else:
            outcomes.append(Outcome(kind, turn.text, "stuck", run["status"], None))
    return outcomes


def judge_updates(db: Db, fake: FakeTelegramApi, updates: Updates, samples: list[Sample]):
    """Updates acknowledged with 200, from the fake's sendMessage calls and the inbox."""
    updates.collect()
    accepted = sorted((s for s in samples if s.status == 200), key=lambda s: s.update_id)
    state = db.updates([s.update_id for s in accepted]) if accepted else {}
    # Replies that quote nothing: the bot saying it could not answer (a failed run). In a
    # private chat they name no message, so they go to the chat's unanswered updates in order.
    sorry: dict[int, list[float]] = defaultdict(list)
    for chat_id, replies in chat_answers(fake).items():
        sorry[chat_id] = [at for at, text in replies if not tb.ANSWER_RE.match(text)]
    outcomes = []
    for sample in accepted:
        row = state.get(sample.update_id)
        status = row["status"] if row else None
        if len(sample.answers) > 1:
            outcome = Outcome(
                "telegram",
                sample.text,
                "duplicated",
                f"answered {len(sample.answers)} times",
                sample.answers[0],
            )
        elif sample.answers:
            outcome = Outcome("telegram", sample.text, "ended", "answered once", sample.answers[0])
        elif row is None:
            outcome = Outcome("telegram", sample.text, "lost", "not in the inbox", None)
        elif status == "failed":
            detail = f"inbox failed: {row['last_error'][:100]}"
            ended = to_mono(row["updated_at"])
            outcome = Outcome("telegram", sample.text, "failed visibly", detail, ended)
        elif status == "pending":
            detail = f"pending, {row['attempts']} attempts, {row['last_error'][:80]!r}"
            outcome = Outcome("telegram", sample.text, "stuck", detail, None)
        elif sorry[sample.chat_id]:
            ended = sorry[sample.chat_id].pop(0)
            detail = "the bot's 'could not answer' reply"
            outcome = Outcome("telegram", sample.text, "failed visibly", detail, ended)
        else:
            detail = f"inbox {status}, no answer"
            outcome = Outcome("telegram", sample.text, "lost", detail, None)
        outcomes.append(outcome)
    return outcomes


def overlapping_runs(executions: list[Execution], killed: dict[int, float]) -> list[str]:
    """Turns the target ran twice at the same time: two executions of one text whose spans
    overlap. An execution with no end ends when its process was killed (`killed`: pid -> wall
    time), or now if its process still lives (it is still running), else where it started."""
    by_text: dict[str, list[Execution]] = defaultdict(list)
    for execution in executions:
        by_text[execution.text].append(execution)
    now, twice = time.time(), []
    for text, runs in by_text.items():
        if len(runs) < 2:
            continue
        spans = []
        for run in runs:
            end = run.ended
            if end is None:
                end = killed.get(run.pid, now if Path(f"/proc/{run.pid}").exists() else run.started)
            spans.append((run.started, end))
        spans.sort()
        latest_end = spans[0][1]
        for started, ended in spans[1:]:
            if started < latest_end:
                twice.append(text)
                break
            latest_end = max(latest_end, ended)
    return twice


# --- HTTP answers (scenario 3) ---


@dataclass
class Answer:
    kind: str  # background, blocking, webhook, readyz
    sent_at: float
    done_at: float
    status: int  # 0: no HTTP answer
    body: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def clean(self) -> bool:
        """A success, or a 5xx whose body is JSON (OpenAI's error body, the webhook's
        `{"ok": false}`, the readiness probe's status): what a client can act on."""
        if self.ok:
            return True
        if not 500 <= self.status < 600:
            return False
        try:
            data = json.loads(self.body)
        except ValueError:
            return False
        return isinstance(data, dict) and bool(
            isinstance(data.get("error"), dict) or data.get("ok") is False or "status" in data
        )

    @property
    def label(self) -> str:
        if self.ok:
            return str(self.status)
        if self.status == 0:
            return f"no answer ({self.body.split('(')[0][:40]})"
        return f"{self.status}" + (" JSON" if self.clean else f" not JSON {self.body[:60]!r}")


def response_body(response: httpx.Response | None, turn: Turn) -> tuple[int, str]:
    if response is None:
        return 0, turn.error
    return response.status_code, response.text[:300]


# --- results ---


@dataclass
class ScenarioResult:
    name: str
    setup: str = ""
    measured: bool = False
    not_measured: str = ""  # why, when not measured
    outcomes: list[Outcome] = field(default_factory=list)
    ran_twice_at_once: list[str] = field(default_factory=list)
    run_again: int = 0  # turns the target ran more than once (after their first run died)
    events: list[str] = field(default_factory=list)  # the timeline, as printed
    all_ended_after: float | None = None  # fault end -> everything accepted before it ended
    next_answered_after: float | None = None  # fault end -> the next message answered
    next_detail: str = ""
    requests_ok_after: float | None = None  # scenario 3: fault end -> requests succeed again
    http: dict[str, Counter] = field(default_factory=dict)  # scenario 3: window -> answers
    open_rows: dict[str, int] = field(default_factory=dict)  # rows not ended, by table:status
    log_lines: dict[str, Counter] = field(default_factory=dict)  # process -> ERROR patterns
    notes: list[str] = field(default_factory=list)

    def count(self, verdict: str) -> int:
        return sum(1 for o in self.outcomes if o.verdict == verdict)

    @property
    def lost(self) -> int:
        return self.count("lost")

    @property
    def duplicated(self) -> int:
        doubles = {o.label for o in self.outcomes if o.verdict == "duplicated"}
        return len(doubles | set(self.ran_twice_at_once))

    @property
    def stuck(self) -> int:
        return self.count("stuck")

    @property
    def verdict(self) -> str:
        if not self.measured:
            return "NOT MEASURED"
        within = [self.all_ended_after, self.next_answered_after]
        if self.requests_ok_after is not None or self.name == "postgres-restart":
            within.append(self.requests_ok_after)
        in_time = all(t is not None and t <= RECOVERY_GOAL for t in within)
        return "PASS" if in_time and not (self.lost or self.duplicated or self.stuck) else "FAIL"

    def event(self, at: float, start: float, text: str) -> None:
        line = f"  {at - start:6.1f}s  {text}"
        self.events.append(line)
        print(line, flush=True)


def recovery(outcomes: list[Outcome], fault_end: float) -> float | None:
    """Seconds from the fault's end until every counted turn had ended; None if one did not."""
    counted = [o for o in outcomes if o.counts]
    if any(o.ended_at is None or o.verdict in ("lost", "stuck") for o in counted):
        return None
    return max([0.0, *(o.ended_at - fault_end for o in counted)])


def open_rows(db: Db) -> dict[str, int]:
    """Runs and inbox rows not ended yet, whoever started them (also the runs of requests that
    were answered with an error)."""
    found: dict[str, int] = {}
    for label, table, ended in (
        ("runs", "afhost_run", "('completed','failed','cancelled','incomplete')"),
        ("inbox", "channels_app_telegramupdate", "('processed','failed','ignored')"),
    ):
        sql = f"SELECT status, COUNT(*) FROM {table} WHERE status NOT IN {ended} GROUP BY status"  # noqa: S608
        for status, count in db.rows(sql, []):
            found[f"{label} {status}"] = count
    return found


def open_run_details(db: Db) -> list[str]:
    """Each run not ended: since when, and whether its lease is still being renewed (a lease
    that runs out hands the run to the sweepers; one renewed keeps it as it is)."""
    sql = (
        "SELECT public_id, status, started_at, lease_expires_at, lease_owner FROM afhost_run "
        "WHERE status IN ('queued', 'in_progress') ORDER BY id"
    )
    now, details = time.time(), []
    for public_id, status, started_at, expires_at, owner in db.rows(sql, []):
        started, expires = epoch(started_at), epoch(expires_at)
        lease = (
            "no lease"
            if expires is None
            else f"lease of {owner or '?'} expires in {expires - now:+.0f}s"
        )
        since = f"started {now - started:.0f}s ago" if started else "not started"
        details.append(f"run resp_{str(public_id).replace('-', '')}: {status}, {since}, {lease}")
    if not details:
        return details
    # Who holds the conversations and chats: a live lease on one whose turn died keeps every
    # later turn in it waiting.
    for label, table in (
        ("conversation", "afhost_conversation"),
        ("chat", "channels_app_telegramchat"),
    ):
        columns = "id, lease_owner, lease_expires_at"
        sql = f"SELECT {columns} FROM {table} WHERE lease_expires_at IS NOT NULL"  # noqa: S608
        for pk, owner, expires_at in db.rows(sql, []):
            details.append(
                f"{label} {pk}: leased by {owner}, expires in {epoch(expires_at) - now:+.0f}s"
            )
    return details


LOG_NOISE = re.compile(r"[0-9a-f]{8}-[0-9a-f-]{27}|resp_[0-9a-f]{32}|\b\d+\b")


def log_lines(path: Path) -> Counter:
    """ERROR/CRITICAL lines and tracebacks' last lines, ids and numbers blanked, counted."""
    found: Counter = Counter()
    with contextlib.suppress(OSError):
        lines = path.read_text(errors="replace").splitlines()
        for index, line in enumerate(lines):
            if " ERROR " in line or " CRITICAL " in line:
                message = line.split(" ", 2)[-1]  # without the date and time
                found[LOG_NOISE.sub("#", message)[:160]] += 1
            elif line.startswith("Traceback"):
                # The exception: the first unindented line after the traceback.
                tail = next((ln for ln in lines[index + 1 :] if ln and not ln.startswith(" ")), "?")
                found[f"Traceback: {LOG_NOISE.sub('#', tail)[:140]}"] += 1
    return found


def diagnose(afhost: Afhost, result: ScenarioResult, db: Db, args, keep: Path) -> None:
    """Something did not end: what the database sessions of the scenario's database are doing,
    and (--diagnose) every thread's stack in the server and the worker's processes (py-spy)."""
    sql = (
        "SELECT pid, state, wait_event_type, wait_event, "
        "round(extract(epoch from now() - xact_start)), "
        "round(extract(epoch from now() - state_change)), left(query, 90) "
        "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "ORDER BY xact_start NULLS LAST"
    )
    for pid, state, wait_type, wait, in_xact, in_state, query in db.rows(sql, []):
        xact = f", in a transaction for {in_xact:.0f}s" if in_xact is not None else ""
        waits = f", waiting on {wait_type}/{wait}" if wait_type else ""
        result.notes.append(
            f"pg session {pid}: {state} for {in_state:.0f}s{xact}{waits}: {query!r}"
        )
    if not args.diagnose:
        return
    py_spy = rb.ensure_bench_venv(profiler=True).parent / "py-spy"
    keep.mkdir(parents=True, exist_ok=True)
    roots = {"server": afhost.server.pid}
    if afhost.worker is not None:
        roots["worker"] = afhost.worker.pid
    for name, root in roots.items():
        for pid in tree(root, proc_table()):
            out = subprocess.run(
                [str(py_spy), "dump", "--pid", str(pid)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            (keep / f"py-spy-{name}-{pid}.txt").write_text(out.stdout + out.stderr)
    result.notes.append(f"py-spy dumps in {keep}")


def finish_afhost(afhost: Afhost, result: ScenarioResult, db: Db, args, turn_log: Path) -> None:
    """The rows left open, stop the processes, their logs' errors (kept with --keep-logs)."""
    result.open_rows = open_rows(db)
    result.notes += open_run_details(db)[:30]
    if result.open_rows:
        keep = Path(args.keep_logs or turn_log.parent) / result.name
        diagnose(afhost, result, db, args, keep)
    stop(afhost.server)
    if afhost.worker is not None:
        stop(afhost.worker)
    result.log_lines = {"server": log_lines(afhost.server_log)}
    result.log_lines["worker"] = log_lines(afhost.worker_log)
    if args.keep_logs:
        keep = Path(args.keep_logs) / result.name
        keep.mkdir(parents=True, exist_ok=True)
        for path in (afhost.server_log, afhost.worker_log, turn_log):
            with contextlib.suppress(OSError):
                shutil.copy(path, keep / path.name)
        result.notes.append(f"logs kept in {keep}")


def fresh_afhost(args, workdir: Path, fake: FakeTelegramApi, updates: Updates, name: str):
    """The scenario's afhost (fresh database, server, worker) warmed up, and its turn log."""
    log = workdir / name / "turns.log"
    afhost = start_afhost(
        args,
        workdir / name,
        fake,
        args.seconds,
        BENCH_TURN_LOG=str(log),
        AFHOST_LEASE_SECONDS=f"{args.lease_seconds:g}",
    )
    warm_up(afhost, updates, timeout=60 + 2 * args.seconds)
    return afhost, Db(afhost.env["DATABASE_URL"]), log


def wait_until(done, deadline: float, procs=None, every: float = 0.5) -> bool:
    while True:
        if done():
            return True
        if time.monotonic() > deadline:
            return False
        if procs is not None:
            check_alive(procs)
        time.sleep(every)


def ended_or_failed(db: Db, updates: Updates, turns: list[Turn], samples: list[Sample]):
    """A cheap check for the waits: every accepted run terminal, every acknowledged update
    answered or ended in the inbox without one (the final judgement is judge_*)."""

    def check() -> bool:
        updates.collect()
        ids = [t.id for t in turns if t.id]
        runs = db.runs(ids) if ids else {}
        if any(runs.get(i, {}).get("status") not in TERMINAL for i in ids):
            return False
        waiting = [s.update_id for s in samples if s.status == 200 and not s.answers]
        if not waiting:
            return True
        inbox = db.updates(waiting)
        return all(inbox.get(u, {}).get("status") in ("failed", "processed") for u in waiting)

    return check


# --- scenario 1: the worker killed with turns in flight ---


def kill_worker(args, workdir: Path, fake: FakeTelegramApi, updates: Updates) -> ScenarioResult:
    result = ScenarioResult(
        "kill-worker",
        setup=f"{args.kill_runs} background runs + {args.kill_updates} Telegram updates "
        f"({args.kill_updates} chats) in flight, S={args.seconds:g}s; SIGKILL to the worker's "
        f"process group; a new worker {args.restart_after:g}s later; each chat's next message",
    )
    print(f"scenario kill-worker: {result.setup}")
    afhost, db, log = fresh_afhost(args, workdir, fake, updates, "kill-worker")
    chats = updates.chats(args.kill_updates)
    samples = [updates.make(chat, "kill") for chat in chats]
    turns = [Turn(f"fault kill-worker background #{i}") for i in range(args.kill_runs)]
    texts = {s.text for s in samples} | {t.text for t in turns}

    async def fire() -> None:
        async with client(afhost, len(turns), 30) as http:
            await asyncio.gather(
                tb._post_all(afhost.port, samples, len(samples)),
                *(create(http, turn, background=True) for turn in turns),
            )

    start = time.monotonic()
    asyncio.run(fire())
    refused = [t.text for t in turns if not t.id] + [s.text for s in samples if s.status != 200]
    if refused:
        raise BenchError(f"{len(refused)} turns were not accepted, e.g. {refused[:3]}")
    accepted = time.monotonic()
    result.event(accepted, start, f"all {len(texts)} turns accepted")

    def started() -> int:
        return len({e.text for e in read_turn_log(log)} & texts)

    # Kill once every turn is under way, or --kill-after s after the last was accepted.
    wait_until(lambda: started() == len(texts), accepted + args.kill_after, afhost.procs, 0.05)
    pgid = afhost.worker.pid if afhost.worker else 0
    killed_at, killed_wall = time.monotonic(), time.time()
    killed = kill_group(afhost.worker)
    afhost.worker = None
    runs = [e for e in read_turn_log(log) if e.text in texts]
    in_flight = {e.text for e in runs if e.ended is None}
    done = {e.text for e in runs if e.ended is not None}
    result.event(
        killed_at,
        start,
        f"SIGKILL to the worker's group {pgid} ({len(killed)} processes); in flight "
        f"{len(in_flight)} (background {sum(t.text in in_flight for t in turns)}, telegram "
        f"{sum(s.text in in_flight for s in samples)}), done {len(done)}, not started "
        f"{len(texts) - len(in_flight) - len(done)}",
    )
    time.sleep(args.restart_after)
    afhost.start_worker()
    fault_end = afhost.worker_started
    result.event(fault_end, start, "new worker started (the fault's end)")
    after = [updates.make(chat, "next") for chat in chats]
    tb.post_all(afhost.port, after, len(after))
    if bad := [s for s in after if s.status != 200]:
        raise BenchError(f"{len(bad)} next messages were not acknowledged: {bad[0].error}")
    result.event(time.monotonic(), start, f"each of the {len(after)} chats sent its next message")

    check = ended_or_failed(db, updates, turns, samples + after)
    if wait_until(check, fault_end + args.deadline, afhost.procs, 1.0):
        result.event(time.monotonic(), start, "every turn ended")
    else:
        result.event(time.monotonic(), start, f"deadline ({args.deadline:g}s after the fault)")
    time.sleep(1)  # a late duplicate would show up here

    result.outcomes = judge_runs(db, turns, "background")
    result.outcomes += judge_updates(db, fake, updates, samples + after)
    later = {s.text for s in after}
    for outcome in result.outcomes:
        outcome.counts = outcome.label not in later
    executions = [e for e in read_turn_log(log) if e.text in texts]
    result.ran_twice_at_once = overlapping_runs(executions, dict.fromkeys(killed, killed_wall))
    result.run_again = sum(n > 1 for n in Counter(e.text for e in executions).values())
    result.all_ended_after = recovery(result.outcomes, fault_end)
    answered = [s.answers[0] - fault_end for s in after if s.answers]
    if len(answered) == len(after):
        result.next_answered_after = max(answered)
    result.next_detail = (
        f"{len(answered)}/{len(after)} chats answered their next message; median "
        f"{sorted(answered)[len(answered) // 2]:.1f}s, max {max(answered):.1f}s"
        if answered
        else "no chat answered its next message"
    )
    result.notes.append(
        f"in flight at the kill: {len(in_flight)}; of those: "
        + ", ".join(
            f"{n} {v}"
            for v, n in Counter(
                f"{o.kind} {o.verdict} ({o.detail[:60]})"
                for o in result.outcomes
                if o.label in in_flight
            ).items()
        )
    )
    finish_afhost(afhost, result, db, args, log)
    result.measured = True
    return result


# --- scenario 2: the web server killed during a burst of webhook posts ---


def kill_web(args, workdir: Path, fake: FakeTelegramApi, updates: Updates) -> ScenarioResult:
    result = ScenarioResult(
        "kill-web",
        setup=f"{args.web_updates} webhook posts ({args.web_chats} chats, {args.connections} "
        f"connections), S={args.seconds:g}s; SIGKILL to the web server at half acknowledged; "
        f"a new one {args.restart_after:g}s later; unacknowledged updates posted again",
    )
    print(f"scenario kill-web: {result.setup}")
    afhost, db, log = fresh_afhost(args, workdir, fake, updates, "kill-web")
    chats = updates.chats(args.web_chats)
    samples = [updates.make(chats[i % len(chats)], "web") for i in range(args.web_updates)]
    texts = {s.text for s in samples}
    posting = threading.Thread(
        target=tb.post_all, args=(afhost.port, samples, args.connections), daemon=True
    )
    start = time.monotonic()
    posting.start()
    half = len(samples) // 2

    def acked() -> int:
        return sum(s.status == 200 for s in samples)

    if not wait_until(lambda: acked() >= half, start + 60, None, 0.002):
        raise BenchError("half of the updates were not acknowledged within 60 s")
    killed_at, acked_then = time.monotonic(), acked()
    kill_group(afhost.server)
    result.event(killed_at, start, f"SIGKILL to the web server ({acked_then} acknowledged)")
    posting.join(timeout=tb.REQUEST_TIMEOUT + 10)
    unacked = [s for s in samples if s.status != 200]
    errors = Counter(s.error.split("(")[0][:40] or str(s.status) for s in unacked)
    result.event(
        time.monotonic(),
        start,
        f"first pass over: {len(samples) - len(unacked)} acknowledged, {len(unacked)} not "
        f"({dict(errors)})",
    )
    time.sleep(args.restart_after)
    afhost.server = spawn(
        server_cmd("uvicorn", "afhost.asgi:application", afhost.port),
        env=afhost.env,
        log=afhost.server_log,
    )
    wait_listening(afhost.server, afhost.port, afhost.server_log)
    fault_end = time.monotonic()
    result.event(fault_end, start, "new web server listening (the fault's end)")
    stored = db.updates([s.update_id for s in unacked]) if unacked else {}
    result.notes.append(
        f"{len(stored)} of the {len(unacked)} unacknowledged updates had been stored anyway "
        "(their re-post is a duplicate: ignored)"
    )
    probe = updates.make(updates.chats(1)[0], "next")  # a new chat's message, first
    pending, reposts, rounds = [probe, *unacked], 0, 0
    while pending and time.monotonic() < fault_end + args.deadline:
        if rounds:
            time.sleep(REPOST_PAUSES[min(rounds, len(REPOST_PAUSES)) - 1])
        tb.post_all(afhost.port, pending, min(args.connections, len(pending)))
        reposts, rounds = reposts + len(pending), rounds + 1
        pending = [s for s in pending if s.status != 200]
    reposts -= 1  # the probe's first post is no re-post
    never = [s for s in samples if s.status != 200]
    result.event(
        time.monotonic(),
        start,
        f"re-posted {reposts} updates; {len(samples) - len(never)} acknowledged"
        + (f", {len(never)} never" if never else ""),
    )
    check = ended_or_failed(db, updates, [], [*samples, probe])
    if wait_until(check, fault_end + args.deadline, afhost.procs, 1.0):
        result.event(time.monotonic(), start, "every update ended")
    else:
        result.event(time.monotonic(), start, f"deadline ({args.deadline:g}s after the fault)")
    time.sleep(1)
    result.outcomes = judge_updates(db, fake, updates, [*samples, probe])
    for outcome in result.outcomes:
        outcome.counts = outcome.label != probe.text
    result.outcomes += [
        Outcome("telegram", s.text, "lost", f"never acknowledged: {s.error[:60]}", None)
        for s in never
    ]
    executions = [e for e in read_turn_log(log) if e.text in texts]
    result.ran_twice_at_once = overlapping_runs(executions, {})
    result.run_again = sum(n > 1 for n in Counter(e.text for e in executions).values())
    result.all_ended_after = recovery(result.outcomes, fault_end)
    if probe.answers:
        result.next_answered_after = probe.answers[0] - fault_end
        result.next_detail = "a new chat's message, posted at the fault's end"
    else:
        result.next_detail = "a new chat's message was not answered"
    finish_afhost(afhost, result, db, args, log)
    result.measured = True
    return result


# --- scenario 3: PostgreSQL restarted under mixed load ---


def other_runs() -> list[str]:
    """Test runs and benches running now, but this one, what it started and what started it
    (e.g. `timeout ... fault_bench.py`)."""
    table = proc_table()
    mine, pid = set(tree(os.getpid(), table)), os.getpid()
    while pid in table and pid > 1:
        mine.add(pid)
        pid = table[pid].ppid
    found = []
    for pid in table:
        if pid in mine:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if OTHER_RUNS.search(cmdline):
            found.append(f"{pid}: {cmdline.strip()[:120]}")
    return found


def wait_quiet(args, deadline: float) -> list[str]:
    """Wait (polling every --quiet-poll s, up to `deadline`) until no other test run or bench
    runs; returns those still running then (empty: go ahead)."""
    while busy := other_runs():
        if time.monotonic() > deadline:
            return busy
        print(f"  waiting: {len(busy)} other run(s) use PostgreSQL: {busy[0]}", flush=True)
        time.sleep(args.quiet_poll)
    return []


@dataclass
class Cluster:
    version: str
    name: str

    def ctl(self, action: str) -> float:
        """pg_ctlcluster stop/start as the postgres user; returns the seconds it took."""
        started = time.monotonic()
        cmd = ["runuser", "-u", "postgres", "--", "pg_ctlcluster", "--skip-systemctl-redirect"]
        done = subprocess.run(
            [*cmd, self.version, self.name, action],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"pg_ctlcluster {action} failed: {done.stdout}{done.stderr}")
        return time.monotonic() - started

    def online(self) -> bool:
        out = subprocess.run(
            ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False
        ).stdout
        return any(
            line.split()[:2] == [self.version, self.name] and "online" in line
            for line in out.splitlines()
        )


def find_cluster(database_url: str) -> Cluster:
    """The local cluster serving the database URL's port (pg_lsclusters)."""
    port = str(urlsplit(database_url).port or 5432)
    try:
        out = subprocess.run(
            ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BenchError(f"pg_lsclusters failed: {exc}") from exc
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == port:
            return Cluster(fields[0], fields[1])
    raise BenchError(f"no PostgreSQL cluster on port {port} in pg_lsclusters:\n{out}")


class MixedLoad(threading.Thread):
    """Background creates, blocking creates, webhook posts (each re-posted until it gets a
    200, as Telegram does) and readiness probes, at fixed rates, from an event loop in a
    thread of its own, until `stop()`; then the webhook posts still unacknowledged are retried
    until `deliver_until`."""

    def __init__(self, afhost: Afhost, updates: Updates, chats: list[int], args) -> None:
        super().__init__(name="mixed-load", daemon=True)
        self.afhost, self.updates, self.chats, self.args = afhost, updates, chats, args
        self.background: list[Turn] = []
        self.blocking: list[Turn] = []
        self.samples: list[Sample] = []
        self.first_sent: dict[int, float] = {}  # update_id -> its first post
        self.answers: list[Answer] = []
        self._halt = threading.Event()
        self.deliver_until = float("inf")
        self.error: BaseException | None = None

    def stop(self, deliver_until: float) -> None:
        self.deliver_until = deliver_until
        self._halt.set()

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by the scenario
            self.error = exc

    async def _every(self, seconds: float, make) -> None:
        tasks = set()
        next_at = time.monotonic()
        while not self._halt.is_set():
            task = asyncio.ensure_future(make(len(tasks)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += seconds
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if tasks:
            await asyncio.gather(*tasks)

    async def _main(self) -> None:
        rate = self.args.rate
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.afhost.port}",
            headers=self.afhost.headers,
            timeout=30,
            limits=limits,
        ) as http:
            await asyncio.gather(
                self._every(0.5 / rate, lambda n: self._create(http, background=True)),
                self._every(1.0 / rate, lambda n: self._create(http, background=False)),
                self._every(0.5 / rate, lambda n: self._deliver()),
                self._every(0.5, lambda n: self._probe(http)),
            )

    async def _create(self, http: httpx.AsyncClient, *, background: bool) -> None:
        turns = self.background if background else self.blocking
        kind = "background" if background else "blocking"
        turn = Turn(f"fault postgres {kind} #{len(turns)}")
        turns.append(turn)
        response = await create(http, turn, background=background)
        status, body = response_body(response, turn)
        if status != 200:
            turn.id = ""  # not accepted (an error body has no id)
        self.answers.append(Answer(kind, turn.sent_at, time.monotonic(), status, body))

    async def _probe(self, http: httpx.AsyncClient) -> None:
        sent = time.monotonic()
        try:
            response = await http.get("/readyz")
            status, body = response.status_code, response.text[:300]
        except httpx.HTTPError as exc:
            status, body = 0, f"{type(exc).__name__}({exc})"
        self.answers.append(Answer("readyz", sent, time.monotonic(), status, body))

    async def _deliver(self) -> None:
        """One update, posted until it gets a 200 (Telegram's webhook delivery)."""
        chat = self.chats[len(self.samples) % len(self.chats)]
        sample = self.updates.make(chat, "pg")
        self.samples.append(sample)
        self.first_sent[sample.update_id] = time.monotonic()
        for attempt in range(10_000):
            await tb._connection(self.afhost.port, deque([sample]), (None, None))
            self.answers.append(
                Answer("webhook", sample.sent_at, time.monotonic(), sample.status, sample.error)
            )
            if sample.status == 200 or time.monotonic() > self.deliver_until:
                return
            await asyncio.sleep(REPOST_PAUSES[min(attempt, len(REPOST_PAUSES) - 1)])


def http_windows(
    answers: list[Answer], stopped: float, fault_end: float
) -> tuple[dict[str, Counter], list[str]]:
    """Answers by the window their request was sent in, and kind: status (JSON or not); and
    the time they took (blocking creates, which also wait for their turn, aside)."""
    windows: dict[str, Counter] = {}
    took: dict[str, list[float]] = {}
    for answer in answers:
        if answer.sent_at < stopped:
            window = "before the stop"
        elif answer.sent_at < fault_end:
            window = "PostgreSQL down"
        else:
            window = "after its start"
        windows.setdefault(window, Counter())[f"{answer.kind} {answer.label}"] += 1
        if answer.kind != "blocking":
            took.setdefault(window, []).append(answer.done_at - answer.sent_at)
    notes = []
    for window, seconds in took.items():
        seconds.sort()
        notes.append(
            f"requests sent {window} (blocking creates aside) took p50 "
            f"{seconds[len(seconds) // 2]:.2f}s, max {seconds[-1]:.2f}s"
        )
    return windows, notes


def requests_ok_after(answers: list[Answer], fault_end: float) -> float:
    """Seconds from the fault's end until requests of every kind succeed: the end of the last
    failed request sent after it (0 if none failed)."""
    failed = [a.done_at for a in answers if a.sent_at >= fault_end and not a.ok]
    return max([0.0, *(at - fault_end for at in failed)])


def postgres_restart(
    args, workdir: Path, fake: FakeTelegramApi, updates: Updates
) -> ScenarioResult:
    outage = "dry run: PostgreSQL is NOT stopped" if args.dry_run_outage else "stopped"
    result = ScenarioResult(
        "postgres-restart",
        setup=f"mixed load x{args.rate:g} (background + blocking creates, webhook posts, "
        f"readiness probes), S={args.seconds:g}s; PostgreSQL {outage} for {args.outage:g}s "
        f"after {args.before:g}s, load for {args.after:g}s more",
    )
    print(f"scenario postgres-restart: {result.setup}")
    cluster = find_cluster(args.database_url)
    if not args.dry_run_outage and not cluster.online():
        raise BenchError(f"PostgreSQL {cluster.version}/{cluster.name} is not online")
    quiet_deadline = time.monotonic() + args.quiet_wait
    for attempt in range(1, 1000):
        if not args.dry_run_outage and (busy := wait_quiet(args, quiet_deadline)):
            result.not_measured = f"other runs used PostgreSQL for {args.quiet_wait:g}s: {busy}"
            print(f"  not measured: {result.not_measured}")
            return result
        name = "postgres-restart" + (f"-{attempt}" if attempt > 1 else "")
        afhost, db, log = fresh_afhost(args, workdir, fake, updates, name)
        worker_pids = set(tree(afhost.worker.pid, proc_table()))
        load = MixedLoad(afhost, updates, updates.chats(args.pg_chats), args)
        start = time.monotonic()
        load.start()
        result.events.clear()
        result.event(start, start, "load started")
        time.sleep(args.before)
        if args.dry_run_outage or not (busy := other_runs()):
            break
        # A test run started meanwhile: leave PostgreSQL alone, start over once it has ended.
        print(f"  a test run started meanwhile ({busy[0]}): starting over once it ends")
        load.stop(time.monotonic())
        load.join(timeout=60)
        stop(afhost.server)
        stop(afhost.worker)
    check_alive(afhost.procs)

    def start_postgres() -> None:
        if not cluster.online():
            cluster.ctl("start")

    stopped = time.monotonic()
    if args.dry_run_outage:
        result.event(stopped, start, f"(dry run) PostgreSQL {cluster.version}/main left running")
        time.sleep(args.outage)
    else:
        rb._cleanups.append(start_postgres)  # whatever happens next, it is started again
        try:
            took = cluster.ctl("stop")
            result.event(stopped, start, f"pg_ctlcluster stop (took {took:.1f}s)")
            time.sleep(args.outage)
        finally:
            restarting = time.monotonic()
            took = cluster.ctl("start")
        result.event(restarting, start, f"pg_ctlcluster start (took {took:.1f}s)")
    fault_end = time.monotonic()
    result.event(fault_end, start, "PostgreSQL accepts connections (the fault's end)")
    time.sleep(args.after)
    load.stop(fault_end + args.deadline)
    result.event(time.monotonic(), start, "load stopped (unacknowledged updates still re-posted)")
    load.join(timeout=args.deadline + 60)
    if load.error is not None:
        raise BenchError(f"the load failed: {load.error!r}")
    alive = {name: proc.poll() is None for name, (proc, _) in afhost.procs.items()}
    if not all(alive.values()):
        result.notes.append(f"processes that exited: {[n for n, a in alive.items() if not a]}")
    check = ended_or_failed(db, updates, load.background + load.blocking, load.samples)
    if wait_until(check, fault_end + args.deadline, None, 1.0):
        result.event(time.monotonic(), start, "every accepted turn ended")
    else:
        result.event(time.monotonic(), start, f"deadline ({args.deadline:g}s after the fault)")
    time.sleep(1)
    result.outcomes = (
        judge_runs(db, load.background, "background")
        + judge_runs(db, load.blocking, "blocking")
        + judge_updates(db, fake, updates, load.samples)
    )
    sent_at = {t.text: t.sent_at for t in load.background + load.blocking}
    sent_at |= {s.text: load.first_sent[s.update_id] for s in load.samples}
    for outcome in result.outcomes:
        outcome.counts = sent_at[outcome.label] < fault_end
    executions = [e for e in read_turn_log(log) if e.text in sent_at]
    result.ran_twice_at_once = overlapping_runs(executions, {})
    result.run_again = sum(n > 1 for n in Counter(e.text for e in executions).values())
    result.all_ended_after = recovery(result.outcomes, fault_end)
    result.http, took = http_windows(load.answers, stopped, fault_end)
    result.notes += took
    target_done = {e.text for e in executions if e.ended is not None}
    unsaved = Counter(
        f"{o.kind} {o.verdict}"
        for o in result.outcomes
        if o.verdict in ("failed visibly", "stuck") and o.label in target_done
    )
    if unsaved:
        result.notes.append(f"the target had answered, the run did not end completed: {unsaved}")
    result.requests_ok_after = requests_ok_after(load.answers, fault_end)
    later = [s for s in load.samples if load.first_sent[s.update_id] >= fault_end]
    first = min(later, key=lambda s: load.first_sent[s.update_id], default=None)
    if first is not None and first.answers:
        result.next_answered_after = first.answers[0] - fault_end
        result.next_detail = (
            f"the first update posted after the fault's end "
            f"({load.first_sent[first.update_id] - fault_end:.1f}s after) answered "
            f"{result.next_answered_after:.1f}s after the fault's end"
        )
    else:
        result.next_detail = "the first update posted after the fault's end was not answered"
    unclean = [a for a in load.answers if not a.clean]
    result.notes.append(
        f"HTTP answers: {len(load.answers)}, not OK {sum(not a.ok for a in load.answers)}, "
        f"not clean (no answer, a 4xx, or a 5xx without JSON) {len(unclean)}"
    )
    for answer in unclean[:5]:
        result.notes.append(
            f"  not clean: {answer.kind} sent {answer.sent_at - fault_end:+.1f}s from the fault's "
            f"end: {answer.status} {answer.body[:120]!r}"
        )
    respawned = set(tree(afhost.worker.pid, proc_table())) - worker_pids
    result.notes.append(
        f"web server restarted: no (pid {afhost.server.pid}, alive: {alive.get('server')}); "
        f"worker processes respawned by django-q2 during the run: {len(respawned)}"
    )
    finish_afhost(afhost, result, db, args, log)
    result.measured = True
    return result


# --- report ---


def report(results: list[ScenarioResult], args) -> None:
    print()
    print(
        f"fault bench: PostgreSQL, AFHOST_LEASE_SECONDS={args.lease_seconds:g}, "
        f"{args.workers} worker processes, S={args.seconds:g}s; goal: 0 lost, 0 duplicated, "
        f"recovery <= {RECOVERY_GOAL:g}s after the fault's end"
    )
    for r in results:
        print()
        print(f"== {r.name}: {r.setup}")
        if not r.measured:
            print(f"  NOT MEASURED: {r.not_measured}")
            continue
        for line in r.events:
            print(line)
        by_kind = Counter(f"{o.kind}: {o.verdict}" for o in r.outcomes if o.counts)
        later = Counter(f"{o.kind}: {o.verdict}" for o in r.outcomes if not o.counts)
        print(f"  accepted before the fault's end: {dict(sorted(by_kind.items()))}")
        if later:
            print(f"  accepted after it: {dict(sorted(later.items()))}")
        failures = Counter(f"{o.kind} {o.detail[:90]}" for o in r.outcomes if o.verdict != "ended")
        for reason, count in failures.most_common(8):
            print(f"    {count} x {reason}")
        if r.run_again:
            print(f"  turns the target ran again (after their first run died): {r.run_again}")
        for note in r.notes:
            print(f"  {note}")
        for window, answers in r.http.items():
            print(f"  HTTP, sent {window}: " + ", ".join(f"{k} x{n}" for k, n in answers.items()))
        print(f"  rows not ended at the end: {r.open_rows or 'none'}")
        for name, lines in r.log_lines.items():
            total = sum(lines.values())
            print(f"  {name} log: {total} ERROR/Traceback lines")
            for line, count in lines.most_common(6):
                print(f"    {count} x {line}")

        def secs(value: float | None) -> str:
            return "not within the deadline" if value is None else f"{value:.1f}s"

        print(
            f"  lost {r.lost}, duplicated {r.duplicated} (run twice at once: "
            f"{len(r.ran_twice_at_once)}), stuck {r.stuck}, failed visibly "
            f"{r.count('failed visibly')}"
        )
        print(f"  recovery: everything accepted before the fault ended {secs(r.all_ended_after)}")
        print(
            f"            the next message answered {secs(r.next_answered_after)} ({r.next_detail})"
        )
        if r.name == "postgres-restart":
            print(f"            requests succeed again {secs(r.requests_ok_after)}")
    print()
    print(
        f"{'scenario':18}  {'accepted':>8}  {'lost':>4}  {'dup.':>4}  {'stuck':>5}  "
        f"{'failed':>6}  {'all ended':>9}  {'next':>7}  {'requests':>8}  verdict"
    )
    for r in results:
        if not r.measured:
            print(f"{r.name:18}  {'-':>8}  NOT MEASURED")
            continue

        def cell(value: float | None, width: int) -> str:
            return f"{'-' if value is None else f'{value:.1f}s':>{width}}"

        print(
            f"{r.name:18}  {len(r.outcomes):8d}  {r.lost:4d}  {r.duplicated:4d}  {r.stuck:5d}  "
            f"{r.count('failed visibly'):6d}  {cell(r.all_ended_after, 9)}  "
            f"{cell(r.next_answered_after, 7)}  {cell(r.requests_ok_after, 8)}  {r.verdict}"
        )
    print(
        "(recovery columns: seconds after the fault's end; all ended: every turn accepted "
        "before it; next: the next message answered; requests: new requests succeed; "
        "- : not within the deadline, or not applicable)"
    )


def as_json(results: list[ScenarioResult], args) -> dict:
    return {
        "lease_seconds": args.lease_seconds,
        "workers": args.workers,
        "seconds": args.seconds,
        "scenarios": [
            {
                "name": r.name,
                "setup": r.setup,
                "measured": r.measured,
                "not_measured": r.not_measured,
                "accepted": len(r.outcomes),
                "lost": r.lost,
                "duplicated": r.duplicated,
                "stuck": r.stuck,
                "failed_visibly": r.count("failed visibly"),
                "all_ended_after": r.all_ended_after,
                "next_answered_after": r.next_answered_after,
                "requests_ok_after": r.requests_ok_after,
                "verdict": r.verdict,
                "events": r.events,
                "notes": r.notes,
                "http": {k: dict(v) for k, v in r.http.items()},
                "open_rows": r.open_rows,
                "log_lines": {k: dict(v) for k, v in r.log_lines.items()},
                "outcomes": [vars(o) for o in r.outcomes],
            }
            for r in results
        ],
    }


def quiet_resets(fake: FakeTelegramApi) -> None:
    """The fake Bot API prints a traceback for each connection a killed process leaves reset;
    those are the scenario, not news."""
    server = fake._server
    default = server.handle_error

    def handle_error(request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            default(request, client_address)

    server.handle_error = handle_error


# --- main ---


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all, in that order)",
    )
    parser.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="a postgres:// URL on this machine: each scenario gets a fresh database next to "
        "the one named (faultbench_<pid>_<time>), dropped at the end (default %(default)s)",
    )
    parser.add_argument("--seconds", type=float, default=4, help="S: seconds per turn (4)")
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=30,
        help="AFHOST_LEASE_SECONDS for the server and the worker (default 30, production's)",
    )
    parser.add_argument("--workers", type=int, default=2, help="AFHOST_WORKERS (default 2)")
    parser.add_argument(
        "--deadline",
        type=float,
        default=180,
        help="seconds after the fault's end to wait for everything to end; later is stuck",
    )
    parser.add_argument(
        "--restart-after",
        type=float,
        default=1,
        help="kill-worker, kill-web: seconds between the SIGKILL and the new process",
    )
    parser.add_argument("--kill-runs", type=int, default=50, help="kill-worker: background runs")
    parser.add_argument(
        "--kill-updates", type=int, default=60, help="kill-worker: Telegram updates (one a chat)"
    )
    parser.add_argument(
        "--kill-after",
        type=float,
        default=None,
        help="kill-worker: SIGKILL once every turn has started, or this many seconds after the "
        "last was accepted (default S/2)",
    )
    parser.add_argument("--web-updates", type=int, default=300, help="kill-web: updates posted")
    parser.add_argument("--web-chats", type=int, default=50, help="kill-web: chats")
    parser.add_argument(
        "--connections",
        type=int,
        default=40,
        help="kill-web: webhook connections (Telegram's default max_connections, 40)",
    )
    parser.add_argument("--before", type=float, default=10, help="postgres-restart: load first")
    parser.add_argument(
        "--outage", type=float, default=3, help="postgres-restart: seconds PostgreSQL is down"
    )
    parser.add_argument("--after", type=float, default=30, help="postgres-restart: load after")
    parser.add_argument(
        "--rate",
        type=float,
        default=1,
        help="postgres-restart: load multiplier (1: a background create and a webhook post "
        "every 0.5 s, a blocking create every 1 s)",
    )
    parser.add_argument("--pg-chats", type=int, default=10, help="postgres-restart: chats")
    parser.add_argument(
        "--dry-run-outage",
        action="store_true",
        help="postgres-restart: everything but the stop (PostgreSQL keeps running)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=1200,
        help="postgres-restart: longest wait for other test runs and benches to end (1200 s)",
    )
    parser.add_argument("--quiet-poll", type=float, default=30, help=argparse.SUPPRESS)
    parser.add_argument(
        "--keep-logs", metavar="DIR", help="copy each scenario's server, worker and turn logs here"
    )
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="when something did not end: dump every thread's stack of the server and the "
        "worker with py-spy (installed into .bench-venv on first use); see also --keep-logs",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    if unknown := set(args.scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenario: {', '.join(sorted(unknown))}")
    if database_label(args.database_url) != "postgres":
        parser.error("--database-url must be a postgres:// URL")
    if urlsplit(args.database_url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--database-url must point at this machine (127.0.0.1)")
    if min(args.kill_runs, args.kill_updates, args.web_updates, args.web_chats) < 1:
        parser.error("--kill-runs, --kill-updates, --web-updates and --web-chats must be >= 1")
    if min(args.seconds, args.lease_seconds, args.rate, args.workers, args.pg_chats) <= 0:
        parser.error("--seconds, --lease-seconds, --rate, --workers, --pg-chats must be > 0")
    if args.kill_after is None:
        args.kill_after = args.seconds / 2

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, rb._raise_interrupt)
    print(
        f"fault bench: {', '.join(args.scenarios)}; S={args.seconds:g}s, "
        f"AFHOST_LEASE_SECONDS={args.lease_seconds:g}, {args.workers} workers; "
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="afhost-faultbench-"))
    fake = FakeTelegramApi(tb.TOKEN).start()
    quiet_resets(fake)
    updates = Updates(fake)
    results: list[ScenarioResult] = []
    run = {"kill-worker": kill_worker, "kill-web": kill_web, "postgres-restart": postgres_restart}
    try:
        for name in SCENARIOS:
            if name in args.scenarios:
                results.append(run[name](args, workdir, fake, updates))
    except BenchError as exc:
        print(f"\nbench aborted: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        clean_up(workdir)
        fake.stop()
    report(results, args)
    print(f"\n(total {time.monotonic() - started:.0f}s)")
    if args.json:
        Path(args.json).write_text(json.dumps(as_json(results, args), indent=2) + "\n")
    return 0 if all(r.measured for r in results) else 2


if __name__ == "__main__":
    sys.exit(main())
