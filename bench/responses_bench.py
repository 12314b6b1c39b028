"""Benchmark: creates per second and latency of POST /v1/responses (or, with --protocol
invocations, of POST /invocations), against two yardsticks.

Three servers, started together in this one run and loaded one at a time, in rounds:

1. afhost (this project) with its built-in demo agent, storing every run in the database;
2. a bare ASGI endpoint (bench/bare_app.py) behind the same ASGI server as afhost;
3. Microsoft's `azure-ai-agentserver-responses` host (bench/ms_host.py) behind the same ASGI
   server as afhost (or, with --microsoft-server own, its own `.run()`, Hypercorn), from a
   separate virtualenv (.bench-venv, created here if missing); for Invocations, its Agent
   Framework host (`agent-framework-foundry-hosting`, bench/ms_invocations_host.py) around
   afhost's own demo agent.

Each is measured for blocking creates and for streaming (SSE) creates, with `wrk` (or a small
asyncio client when wrk is missing), once per round; figures are medians over the rounds, and
each ratio is the median of the ratios within a round. Before the first round, every server is
warmed up for --first-warmup seconds per mode (Microsoft's host answers its first few thousand
creates several times slower than later ones). Only 127.0.0.1 is ever contacted. See
bench/README.md.

    .venv/bin/python bench/responses_bench.py [--protocol responses|invocations]
        [--server uvicorn|daphne] [--microsoft-server same|own] [--rounds 3]
        [--database-url postgresql://postgres@127.0.0.1:5432/bench]

This is a benchmark, not a test: it exits 0 whatever the figures (non-zero only when it could
not measure, e.g. a server failed its sanity check).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
BENCH_VENV = ROOT / ".bench-venv"
# Microsoft's host and its server, pinned; never a dependency of the project itself.
MS_PACKAGES = ["azure-ai-agentserver-responses==2.3.0", "hypercorn==0.18.0"]
PROFILER_PACKAGES = ["py-spy==0.4.3"]

EXPECTED_TEXT = "That is the first thing you told me."
MODES = ("blocking", "streaming")
TARGETS = ("afhost", "bare", "microsoft")


@dataclass(frozen=True)
class Protocol:
    """What one protocol's creates look like, and Microsoft's host of it."""

    name: str
    path: str  # afhost's (and the bare app's) create path
    blocking_body: str
    streaming_body: str
    blocking_marker: str  # in every good blocking answer
    streaming_marker: str  # in every good streamed answer
    microsoft_path: str
    microsoft_script: str
    # (module to probe, packages) for Microsoft's host in .bench-venv
    microsoft_packages: tuple[tuple[str, tuple[str, ...]], ...]
    target_vs_microsoft: float  # the issues' target for stored blocking creates on one process


PROTOCOLS = {
    "responses": Protocol(
        name="responses",
        path="/v1/responses",
        blocking_body='{"model":"bench","input":"hello"}',
        streaming_body='{"model":"bench","input":"hello","stream":true}',
        blocking_marker='"completed"',
        streaming_marker="response.completed",
        microsoft_path="/responses",
        microsoft_script="ms_host.py",
        microsoft_packages=(
            ("azure.ai.agentserver.responses", tuple(MS_PACKAGES)),
            ("hypercorn", tuple(MS_PACKAGES)),
        ),
        # (the bare endpoint's, a third of its rate, was withdrawn: it does no work; its ratio
        # is still shown)
        target_vs_microsoft=2.5,
    ),
    "invocations": Protocol(
        name="invocations",
        path="/invocations",
        blocking_body='{"message":"hello"}',
        streaming_body='{"message":"hello","stream":true}',
        blocking_marker='"response"',
        streaming_marker="event: done",
        microsoft_path="/invocations",
        microsoft_script="ms_invocations_host.py",
        microsoft_packages=(
            (
                "agent_framework_foundry_hosting",
                (
                    "azure-ai-agentserver-invocations==1.2.0",
                    "azure-ai-agentserver-core==2.2.0",
                    "agent-framework-foundry-hosting==1.0.0b261022",
                    "hypercorn==0.18.0",
                ),
            ),
            # The demo agent, imported from this checkout, needs Django's settings.
            ("django", ("Django==5.2.19",)),
        ),
        target_vs_microsoft=2.0,
    ),
}
LABEL_WIDTH = 34


class BenchError(Exception):
    """The bench cannot measure (a server did not start or answered wrongly)."""


@dataclass
class Result:
    target: str
    mode: str
    round: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx answers, timeouts and socket errors


# --- processes ---

_children: list[subprocess.Popen] = []
_cleanups: list = []  # callables run at the end, e.g. dropping a temporary database


def spawn(cmd: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a server in its own process group, so stopping it stops all its processes."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    with contextlib.suppress(ValueError):
        _children.remove(proc)


def stop_all() -> None:
    for proc in list(_children):
        stop(proc)


def clean_up(workdir: Path) -> None:
    """Stop every process started, run the clean-ups, remove the temp dir; a second Ctrl-C
    must not cut this short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stop_all()
    for cleanup in reversed(_cleanups):
        try:
            cleanup()
        except Exception as exc:  # report it and go on cleaning up
            print(f"cleanup failed: {exc}", file=sys.stderr)
    shutil.rmtree(workdir, ignore_errors=True)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_checked(cmd: list[str], *, env: dict[str, str], what: str, timeout: float = 120) -> str:
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def log_tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- HTTP helpers ---


def post(port: int, path: str, body: str, headers: dict[str, str]) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            "POST", path, body=body, headers={"Content-Type": "application/json", **headers}
        )
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def wait_listening(proc: subprocess.Popen, port: int, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(
                f"the server exited ({proc.returncode}) while starting:\n" + log_tail(log)
            )
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise BenchError(
        f"the server did not listen on port {port} within {timeout:.0f}s:\n" + log_tail(log)
    )


def sanity_check(
    name: str, port: int, path: str, headers: dict[str, str], modes: list[str], protocol: Protocol
) -> None:
    """A create of each mode must succeed, with the expected answer, before anything is measured."""
    for mode, body, marker in (
        ("blocking", protocol.blocking_body, protocol.blocking_marker),
        ("streaming", protocol.streaming_body, protocol.streaming_marker),
    ):
        if mode not in modes:
            continue
        status, text = post(port, path, body, headers)
        if status != 200 or EXPECTED_TEXT not in _shown_text(text) or marker not in text:
            raise BenchError(
                f"{name}: the {mode} sanity request got {status}, expected 200 with "
                f"{EXPECTED_TEXT!r} and {marker!r}; body starts:\n{text[:800]}"
            )


def _shown_text(body: str) -> str:
    """A body, and the text its Invocations `delta` frames spell out, if it has any."""
    deltas = [
        json.loads(line.removeprefix("data: ")).get("text", "")
        for line in body.splitlines()
        if line.startswith('data: {"text"')
    ]
    return body + "".join(deltas)


# --- load generators ---

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{auth}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT {{\\"requests\\":%d,\\"duration_us\\":%d,\\"p50_us\\":%d,\\"p99_us\\":%d,"
    .. "\\"errors\\":%d}}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def lua_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk_load(
    *,
    port: int,
    path: str,
    body: str,
    headers: dict[str, str],
    connections: int,
    seconds: float,
    workdir: Path,
) -> dict:
    auth = "\n".join(f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in headers.items())
    script = workdir / "load.lua"
    script.write_text(WRK_SCRIPT.format(body=lua_string(body), auth=auth))
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{path}",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _children.append(proc)
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    finally:
        stop(proc)
    for line in out.splitlines():
        if line.startswith("BENCH_RESULT "):
            raw = json.loads(line.removeprefix("BENCH_RESULT "))
            return {
                "requests": raw["requests"],
                "seconds": raw["duration_us"] / 1e6,
                "p50_ms": raw["p50_us"] / 1e3,
                "p99_ms": raw["p99_us"] / 1e3,
                "errors": raw["errors"],
            }
    raise BenchError(f"wrk printed no result:\n{out}")


async def _one_connection(port: int, request: bytes, deadline: float, stats: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
            fields = {k.strip().lower(): v.strip().lower() for k, v in fields.items()}
            if b"content-length" in fields:
                await reader.readexactly(int(fields[b"content-length"]))
            elif fields.get(b"transfer-encoding") == b"chunked":
                while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                    await reader.readexactly(size + 2)
                await reader.readuntil(b"\r\n")
            else:  # the server closes the connection to end the body
                await reader.read()
                stats["latencies"].append(time.perf_counter() - started)
                return
            stats["latencies"].append(time.perf_counter() - started)
            if not 200 <= status < 300:
                stats["errors"] += 1
            if fields.get(b"connection") == b"close":
                return
    finally:
        writer.close()


async def _python_load(port: int, request: bytes, connections: int, seconds: float) -> dict:
    stats: dict = {"latencies": [], "errors": 0}
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        tasks = [_one_connection(port, request, deadline, stats) for _ in range(connections)]
        results = await asyncio.wait_for(
            asyncio.gather(*tasks, return_exceptions=True), timeout=seconds + 30
        )
        stats["errors"] += sum(isinstance(result, Exception) for result in results)
    stats["seconds"] = time.perf_counter() - started
    return stats


def python_load(
    *,
    port: int,
    path: str,
    body: str,
    headers: dict[str, str],
    connections: int,
    seconds: float,
    workdir: Path,
) -> dict:
    """The fallback client: keep-alive HTTP/1.1 over raw asyncio sockets."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body.encode())}",
    ]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n" + body).encode()
    stats = asyncio.run(_python_load(port, request, connections, seconds))
    latencies = sorted(stats["latencies"]) or [0.0]

    def percentile(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] * 1e3

    return {
        "requests": len(stats["latencies"]),
        "seconds": stats["seconds"],
        "p50_ms": percentile(50),
        "p99_ms": percentile(99),
        "errors": stats["errors"],
    }


# --- the three servers ---


@dataclass
class Target:
    name: str
    label: str
    path: str
    headers: dict[str, str]
    cmd: list[str]
    env: dict[str, str]
    port: int


def pinned(*names: str) -> list[str]:
    """The project's pins (requirements.txt) of these packages, to install them elsewhere."""
    pins = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    return [pin for pin in pins if pin.split("==")[0].lower() in names]


SERVER_PACKAGES = {
    "uvicorn": pinned("uvicorn", "httptools", "uvloop"),
    "daphne": pinned("daphne", "twisted"),
}


def server_cmd(server: str, app: str, port: int, *, venv: Path = ROOT / ".venv") -> list[str]:
    bindir = venv / "bin"
    if server == "uvicorn":
        return [
            str(bindir / "uvicorn"),
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    return [str(bindir / "daphne"), "-v", "0", "-b", "127.0.0.1", "-p", str(port), app]


PG_ADMIN = """
import sys, psycopg
from psycopg import sql
url, action, name = sys.argv[1:4]
with psycopg.connect(url, autocommit=True) as conn:
    exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if action == "create" and not exists:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        print("created database", name)
    elif action == "drop" and exists:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
"""


def postgres_admin(url: str, action: str, name: str, env: dict[str, str]) -> str:
    """Create (if missing) or drop a database on the server of a postgres URL."""
    admin_url = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    out = run_checked(
        [str(VENV_PYTHON), "-c", PG_ADMIN, admin_url, action, name],
        env=env,
        what=f"{action} Postgres database {name}",
    )
    return out.strip()


def prepare_postgres(url: str, env: dict[str, str], *, reuse: bool) -> str:
    """The URL to benchmark on: a fresh database next to the named one, dropped afterwards
    (or, with reuse, the named database itself, created if missing)."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/") or "bench"
    if not reuse:
        name = f"{name}_{os.getpid()}_{int(time.time())}"
        _cleanups.append(lambda: postgres_admin(url, "drop", name, env))
    if out := postgres_admin(url, "create", name, env):
        print(f"  {out}")
    return urlunsplit(parts._replace(path="/" + name))


def afhost_target(args, workdir: Path) -> Target:
    database_url = args.database_url or f"sqlite:///{workdir / 'bench.sqlite3'}"
    env = {
        **os.environ,
        "DEBUG": "0",  # as in production
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECRET_KEY": "bench",
        "AFHOST_DEMO_TOKEN_DELAY": "0",
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    if database_label(database_url) == "postgres":
        database_url = prepare_postgres(database_url, env, reuse=args.reuse_database)
        env["DATABASE_URL"] = database_url
    manage = [str(VENV_PYTHON), "manage.py"]
    run_checked([*manage, "migrate", "--verbosity", "0"], env=env, what="manage.py migrate")
    key_out = run_checked(
        [*manage, "create_api_key", "bench"], env=env, what="manage.py create_api_key"
    )
    key = key_out.strip().splitlines()[-1].strip()
    port = free_port()
    return Target(
        name="afhost",
        label=f"afhost ({args.server}, {database_label(database_url)})",
        path=args.protocol.path,
        headers={"Authorization": f"Bearer {key}"},
        cmd=server_cmd(args.server, "afhost.asgi:application", port),
        env=env,
        port=port,
    )


def bare_target(args, workdir: Path) -> Target:
    port = free_port()
    return Target(
        name="bare",
        label=f"bare ASGI ({args.server})",
        path=args.protocol.path,
        headers={},
        cmd=server_cmd(args.server, "bench.bare_app:app", port),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        port=port,
    )


def ensure_bench_venv(
    *,
    profiler: bool = False,
    protocol: Protocol = PROTOCOLS["responses"],
    server: str | None = None,
) -> Path:
    """The separate venv for Microsoft's host of `protocol` (with the ASGI `server` afhost runs
    under, at the project's pins, if it is to serve it too) and py-spy: created and filled
    when missing."""
    python = BENCH_VENV / "bin" / "python"
    if not python.exists():
        print(f"  creating {BENCH_VENV.relative_to(ROOT)} ...")
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    probes = protocol.microsoft_packages
    if server is not None:
        probes += ((server, tuple(SERVER_PACKAGES[server])),)
    missing: list[str] = []
    for module, packages in probes:
        found = (
            subprocess.run(
                [str(python), "-c", f"import {module}"], capture_output=True, check=False
            ).returncode
            == 0
        )
        if not found:
            missing += [p for p in packages if p not in missing]
    if profiler and not (BENCH_VENV / "bin" / "py-spy").exists():
        missing += PROFILER_PACKAGES
    if missing:
        print(f"  installing {' '.join(missing)} into {BENCH_VENV.relative_to(ROOT)} ...")
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *missing], check=True, timeout=600
        )
    return python


def microsoft_target(args, workdir: Path) -> Target:
    own = args.microsoft_server == "own"
    python = ensure_bench_venv(protocol=args.protocol, server=None if own else args.server)
    port = free_port()
    state = workdir / "agentserver-state"
    state.mkdir(exist_ok=True)
    # Its own environment: none of the project's variables, its state in our temp dir.
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "PORT": str(port),
        "AGENTSERVER_STATE_ROOT": str(state),
        # afhost's demo agent (in Microsoft's Invocations host) streams without a delay, as
        # afhost's does here.
        "AFHOST_DEMO_TOKEN_DELAY": "0",
        "PYTHONUNBUFFERED": "1",
    }
    script = ROOT / "bench" / args.protocol.microsoft_script
    if own:  # its own .run(): Hypercorn, on the PORT of its environment
        cmd = [str(python), str(script)]
    else:
        cmd = server_cmd(args.server, f"bench.{script.stem}:app", port, venv=BENCH_VENV)
    return Target(
        name="microsoft",
        label=f"microsoft ({'hypercorn' if own else args.server}, file store)",
        path=args.protocol.microsoft_path,
        headers={},
        cmd=cmd,
        env=env,
        port=port,
    )


def database_label(url: str) -> str:
    return "postgres" if url.startswith(("postgres://", "postgresql://")) else "sqlite"


# --- the run ---


@dataclass
class Running:
    target: Target
    proc: subprocess.Popen
    log: Path


def start(target: Target, workdir: Path, modes: list[str], protocol: Protocol) -> Running:
    """Start a server, wait until it listens, and check one create of each mode."""
    log = workdir / f"{target.name}.log"
    print(f"- {target.label}: starting on 127.0.0.1:{target.port}")
    proc = spawn(target.cmd, env=target.env, log=log)
    wait_listening(proc, target.port, log)
    try:
        sanity_check(target.label, target.port, target.path, target.headers, modes, protocol)
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(
            f"{target.label}: sanity request failed: {exc!r}\n" + log_tail(log)
        ) from exc
    except BenchError as exc:
        raise BenchError(f"{exc}\nserver log:\n{log_tail(log)}") from None
    return Running(target=target, proc=proc, log=log)


def measure(server: Running, mode: str, round_: int, args, workdir: Path, load) -> Result:
    target, protocol = server.target, args.protocol
    common = {
        "port": target.port,
        "path": target.path,
        "body": protocol.streaming_body if mode == "streaming" else protocol.blocking_body,
        "headers": target.headers,
        "connections": args.connections,
        "workdir": workdir,
    }
    warmup = args.first_warmup if round_ == 1 else args.warmup
    if warmup > 0:
        load(seconds=warmup, **common)
    raw = load(seconds=args.duration, **common)
    result = Result(
        target=target.name, mode=mode, round=round_, rps=raw["requests"] / raw["seconds"], **raw
    )
    print(
        f"  {target.label:{LABEL_WIDTH}} {mode:9} {result.rps:8.1f} req/s  "
        f"p50 {result.p50_ms:7.1f} ms  p99 {result.p99_ms:7.1f} ms  errors {result.errors}"
    )
    if server.proc.poll() is not None:
        raise BenchError(f"{target.label} died during the run:\n" + log_tail(server.log))
    return result


def start_profiler(pid: int, args, workdir: Path) -> subprocess.Popen:
    ensure_bench_venv(profiler=True)
    out = Path(args.profile).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    # It samples only while afhost holds the GIL, so the other servers' turns add nothing.
    per_round = len(args.modes) * len(args.targets)
    first_round_extra = per_round * max(0, args.first_warmup - args.warmup)
    seconds = per_round * args.rounds * (args.warmup + args.duration) + first_round_extra + 10
    cmd = [
        str(BENCH_VENV / "bin" / "py-spy"),
        "record",
        "--pid",
        str(pid),
        "--format",
        "speedscope" if out.suffix == ".json" else "flamegraph",
        "--output",
        str(out),
        "--duration",
        str(int(seconds)),
        "--rate",
        "200",
        "--nonblocking",
        "--gil",
    ]
    print(f"  profiling pid {pid} with py-spy into {out}")
    with workdir.joinpath("py-spy.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    _children.append(proc)
    return proc


def stop_profiler(proc: subprocess.Popen) -> None:
    # SIGINT makes py-spy write what it sampled so far.
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
    stop(proc)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def report(results: list[Result], labels: dict[str, str], protocol: Protocol) -> dict:
    """Print medians over the rounds and the ratios; returns the summary for --json."""
    print()
    width = max(len(label) for label in labels.values())
    print(
        f"{'server (median of rounds)':{width}}  {'mode':9}  {'req/s':>8}  {'p50 ms':>8}  "
        f"{'p99 ms':>8}  {'requests':>8}  {'errors':>6}"
    )
    summary: dict = {"medians": [], "ratios": []}
    for target in labels:
        for mode in MODES:
            runs = [r for r in results if (r.target, r.mode) == (target, mode)]
            if not runs:
                continue
            row = {
                "target": target,
                "mode": mode,
                "rps": median([r.rps for r in runs]),
                "p50_ms": median([r.p50_ms for r in runs]),
                "p99_ms": median([r.p99_ms for r in runs]),
                "requests": sum(r.requests for r in runs),
                "errors": sum(r.errors for r in runs),
            }
            summary["medians"].append(row)
            print(
                f"{labels[target]:{width}}  {mode:9}  {row['rps']:8.1f}  {row['p50_ms']:8.1f}  "
                f"{row['p99_ms']:8.1f}  {row['requests']:8d}  {row['errors']:6d}"
            )
    print()
    # A ratio is taken within each round, between cases measured back to back, so that a
    # machine whose speed drifts over the run (a shared VM) moves both sides alike.
    by_key = {(r.target, r.mode, r.round): r for r in results}
    rounds = sorted({r.round for r in results})
    for mode in MODES:
        for other, target in (("microsoft", protocol.target_vs_microsoft), ("bare", None)):
            pairs = [
                (by_key.get(("afhost", mode, n)), by_key.get((other, mode, n))) for n in rounds
            ]
            ratios = [
                ours.rps / theirs.rps for ours, theirs in pairs if ours and theirs and theirs.rps
            ]
            if not ratios:
                continue
            ratio = median(ratios)
            line = f"ours / {other:9} {mode:9} req/s: {ratio:6.2f}x"
            line += f"  (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
            verdict = None
            if mode == "blocking" and target is not None:
                verdict = "PASS" if ratio >= target else "FAIL"
                line += f"   target >= {target:.2f}x: {verdict}"
            print(line)
            summary["ratios"].append(
                {
                    "mode": mode,
                    "against": other,
                    "median": ratio,
                    "rounds": ratios,
                    "verdict": verdict,
                }
            )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--protocol",
        choices=tuple(PROTOCOLS),
        default="responses",
        help="the creates measured: POST /v1/responses, or POST /invocations",
    )
    parser.add_argument(
        "--server",
        choices=("uvicorn", "daphne"),
        default="uvicorn",
        help="ASGI server for afhost and the bare app (default: uvicorn)",
    )
    parser.add_argument(
        "--microsoft-server",
        choices=("same", "own"),
        default="same",
        help="Microsoft's host behind the same ASGI server as afhost (default), or behind its "
        "own .run() (Hypercorn), as measured until 2026-12-01",
    )
    parser.add_argument(
        "--database-url",
        default="",
        help="afhost's DATABASE_URL (default: a fresh SQLite file in a temp dir)",
    )
    parser.add_argument(
        "--reuse-database",
        action="store_true",
        help="benchmark on the Postgres database named in --database-url as it is (created if "
        "missing) instead of a fresh one that is dropped afterwards",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="every case is measured once a round; figures are medians over the rounds",
    )
    parser.add_argument("--duration", type=float, default=5, help="measured seconds per case")
    parser.add_argument("--warmup", type=float, default=1, help="warm-up seconds per case")
    parser.add_argument(
        "--first-warmup",
        type=float,
        default=10,
        help="warm-up seconds per case in the first round, when every server is new",
    )
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated subset of {','.join(TARGETS)}",
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}"
    )
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator (auto: wrk when installed, else the python client)",
    )
    parser.add_argument(
        "--profile",
        metavar="OUT",
        help="record afhost with py-spy during its runs (OUT.svg flamegraph or "
        "OUT.json speedscope); figures taken while profiling are not comparable",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    args.protocol = PROTOCOLS[args.protocol]
    args.targets = [t for t in args.targets.split(",") if t]
    args.modes = [m for m in args.modes.split(",") if m]
    if unknown := (set(args.targets) - set(TARGETS)) | (set(args.modes) - set(MODES)):
        parser.error(f"unknown target or mode: {', '.join(sorted(unknown))}")
    if args.database_url and urlsplit(args.database_url).hostname not in (
        None,
        "127.0.0.1",
        "localhost",
        "::1",
    ):
        parser.error("--database-url must point at this machine (127.0.0.1)")

    if args.client == "wrk" or (args.client == "auto" and shutil.which("wrk")):
        if not shutil.which("wrk"):
            parser.error("wrk is not installed (apt-get install -y wrk)")
        load, client = wrk_load, "wrk"
    else:
        load, client = python_load, "python asyncio client"

    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    print(
        f"{args.protocol.name} bench: {client}, {args.connections} connections, "
        f"{args.rounds} round(s) of {args.warmup:g}s warm-up (the first: {args.first_warmup:g}s) "
        f"+ {args.duration:g}s per case; "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs"
    )
    started = time.monotonic()
    results: list[Result] = []
    labels: dict[str, str] = {}
    workdir = Path(tempfile.mkdtemp(prefix="afhost-bench-"))
    profiler = None
    try:
        builders = {"afhost": afhost_target, "bare": bare_target, "microsoft": microsoft_target}
        servers = []
        for name in args.targets:
            target = builders[name](args, workdir)
            labels[name] = target.label
            servers.append(start(target, workdir, args.modes, args.protocol))
            if args.profile and name == "afhost":
                profiler = start_profiler(servers[-1].proc.pid, args, workdir)
        # All servers are up, but only one is loaded at a time, so they never compete for the
        # cores; the cases of one mode follow each other within a round.
        for round_ in range(1, args.rounds + 1):
            print(f"round {round_}/{args.rounds}")
            for mode in args.modes:
                for server in servers:
                    results.append(measure(server, mode, round_, args, workdir, load))
    except BenchError as exc:
        print(f"\nbench aborted: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if profiler is not None:
            stop_profiler(profiler)
        clean_up(workdir)
    summary = report(results, labels, args.protocol)
    print(f"\n(total {time.monotonic() - started:.0f}s)")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "protocol": args.protocol.name,
                    "server": args.server,
                    "database": database_label(args.database_url or "sqlite"),
                    "client": client,
                    "connections": args.connections,
                    "duration": args.duration,
                    "rounds": args.rounds,
                    "labels": labels,
                    **summary,
                    "results": [asdict(r) for r in results],
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
