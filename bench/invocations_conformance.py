"""Conformance: afhost's /invocations side by side with Microsoft's Invocations host.

Starts two servers around the same agent (afhost's demo agent, `afhost.demo.agent`):

1. Microsoft's `InvocationsHostServer` (agent-framework-foundry-hosting over
   azure-ai-agentserver-invocations 1.2.0 / core 2.2.0), bench/ms_invocations_host.py, from the
   separate venv .bench-venv (created and filled here when missing), on 127.0.0.1:8811;
2. afhost (`uvicorn afhost.asgi:application`, the project's .venv) on 127.0.0.1:8812, with a
   worker (`manage.py worker`) for background invocations, on a PostgreSQL database of its own
   (migrated, with a fresh API key, each run).

It sends both the same sequence of requests and compares status codes, the headers
x-agent-invocation-id, x-agent-session-id and content-type, and the bodies modulo ids and
timestamps; then it checks afhost's own long-running invocations (background, polling, cancel),
which Microsoft's bridge does not have. Differences listed in DELIBERATE print as "deliberate".

    .venv/bin/python bench/invocations_conformance.py [--targets microsoft,afhost] [-v]
        [--database-url postgres://afhost:afhost@127.0.0.1:5432/afhost_conformance]

Exit status: 0 when every case matches (or differs deliberately) and every afhost-only check
passes, 1 otherwise, 2 when a server could not be started, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import responses_bench as rb  # noqa: E402
from bench.responses_bench import BenchError  # noqa: E402

MS_PORT = 8811
AFHOST_PORT = 8812
DEFAULT_DATABASE_URL = "postgres://afhost:afhost@127.0.0.1:5432/afhost_conformance"
# afhost's default (settings.AFHOST_DEMO_TOKEN_DELAY), given to both servers: streamed turns take
# a few hundred ms, so two turns sent together really overlap.
DEMO_DELAY_SECONDS = "0.02"
TARGETS = ("microsoft", "afhost")
# Microsoft's host and what it runs on, pinned; never dependencies of the project itself. The
# Responses pins are bench/responses_bench.py's, which shares this venv.
MS_PINS = [
    "azure-ai-agentserver-invocations==1.2.0",
    "azure-ai-agentserver-core==2.2.0",
    "agent-framework-foundry-hosting==1.0.0b261022",
    *rb.MS_PACKAGES,
]
# Pinned as the project pins them (requirements.txt): the demo agent's own dependencies.
PROJECT_PINNED = ("agent-framework-core", "Django")

# Cases whose answers differ on purpose: {case: reason}.
DELIBERATE = {
    "get_invocation": "afhost implements GET /invocations/{id}; Microsoft's AF bridge does not "
    "(404 get_invocation not implemented)",
    "cancel_invocation": "afhost implements POST /invocations/{id}/cancel; Microsoft's AF bridge "
    "does not (404 cancel_invocation not implemented)",
    "background": "afhost runs {background: true} as a long-running invocation (202 + Location); "
    "Microsoft's bridge ignores the field and answers at once",
    "no_api_key": "afhost requires an API key; Microsoft's host has no authentication of its own",
}
ROUTING = (
    "afhost answers routing errors under /invocations (no such route or method, no OpenAPI spec) "
    "in OpenAI's JSON error shape, as every API route (README: one error contract); Microsoft's "
    "are Starlette's plain text, or core's {code, message} for the spec"
)
DELIBERATE |= dict.fromkeys(
    ("get_invocations", "delete_invocation", "unknown_invocations_route", "openapi_spec"), ROUTING
)
DELIBERATE["unknown_route"] = (
    "outside the protocol: afhost is also a web site, and answers other paths with Django's own "
    "404 page; Microsoft's host answers Starlette's plain text"
)

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
TIMESTAMP_RE = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?")
COUNT_RE = re.compile(r"exchanged (\d+) message")


# --- the two servers ---


@dataclass
class Server:
    name: str
    base_url: str
    headers: dict[str, str]  # sent with every request that carries the API key


def project_pin(name: str) -> str:
    """The `name==version` line of requirements.txt."""
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.lower().startswith(f"{name.lower()}=="):
            return line.strip()
    raise BenchError(f"{name} is not pinned in requirements.txt")


VERSION_PROBE = """
import sys
from importlib.metadata import PackageNotFoundError, version
for pin in sys.argv[1:]:
    name, wanted = pin.split("==")
    try:
        found = version(name)
    except PackageNotFoundError:
        found = None
    if found != wanted:
        print(pin)
"""


def ensure_bench_venv() -> Path:
    """The separate venv for Microsoft's host, as responses_bench makes it: created when missing,
    then given every pin it lacks (a missing package or another version)."""
    python = rb.BENCH_VENV / "bin" / "python"
    if not python.exists():
        print(f"  creating {rb.BENCH_VENV.relative_to(ROOT)} ...")
        rb.run_checked(
            [sys.executable, "-m", "venv", str(rb.BENCH_VENV)],
            env=dict(os.environ),
            what="python -m venv",
        )
    pins = MS_PINS + [project_pin(name) for name in PROJECT_PINNED]
    probe = [str(python), "-c", VERSION_PROBE, *pins]
    missing = rb.run_checked(probe, env=dict(os.environ), what="version probe").split()
    if missing:
        print(f"  installing {' '.join(missing)} into {rb.BENCH_VENV.relative_to(ROOT)} ...")
        install = [str(python), "-m", "pip", "install", "--quiet", *missing]
        rb.run_checked(install, env=dict(os.environ), what="pip install", timeout=900)
    return python


def check_port_free(port: int) -> None:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            raise BenchError(f"port {port} is already in use")


def start(name: str, cmd: list[str], env: dict[str, str], port: int, workdir: Path) -> None:
    check_port_free(port)
    log = workdir / f"{name}.log"
    print(f"- {name}: starting on 127.0.0.1:{port} (log {log})")
    rb.wait_listening(rb.spawn(cmd, env=env, log=log), port, log)


def start_microsoft(workdir: Path, api_key: str) -> Server:
    python = ensure_bench_venv()
    env = {name: value for name, value in os.environ.items() if not name.startswith("FOUNDRY_")}
    env |= {
        "PORT": str(MS_PORT),
        "AGENTSERVER_STATE_ROOT": str(workdir / "ms-state"),
        "AFHOST_DEMO_TOKEN_DELAY": DEMO_DELAY_SECONDS,
        "PYTHONUNBUFFERED": "1",
    }
    start("microsoft", [str(python), "bench/ms_invocations_host.py"], env, MS_PORT, workdir)
    return Server("microsoft", f"http://127.0.0.1:{MS_PORT}", bearer(api_key))


def afhost_env(database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DEBUG": "0",  # as in production
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECRET_KEY": "conformance",
        "DATABASE_URL": database_url,
        "AFHOST_DEMO_TOKEN_DELAY": DEMO_DELAY_SECONDS,
        "AFHOST_WORKERS": "1",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }


def prepare_afhost(database_url: str) -> tuple[dict[str, str], str]:
    """(Re)create the database, migrate it, and create an API key: (env, key). A fresh database
    each run: no sessions left from an earlier run, and the current migrations, even unmerged."""
    env = afhost_env(database_url)
    name = urlsplit(database_url).path.lstrip("/")
    rb.postgres_admin(database_url, "drop", name, env)
    print(f"  {rb.postgres_admin(database_url, 'create', name, env)}")
    manage = [str(rb.VENV_PYTHON), "manage.py"]
    rb.run_checked([*manage, "migrate", "--verbosity", "0"], env=env, what="manage.py migrate")
    out = rb.run_checked([*manage, "create_api_key", "conformance"], env=env, what="create_api_key")
    return env, out.strip().splitlines()[-1].strip()


def start_afhost(env: dict[str, str], api_key: str, workdir: Path) -> Server:
    cmd = rb.server_cmd("uvicorn", "afhost.asgi:application", AFHOST_PORT)
    start("afhost", cmd, env, AFHOST_PORT, workdir)
    rb.spawn([str(rb.VENV_PYTHON), "manage.py", "worker"], env=env, log=workdir / "worker.log")
    return Server("afhost", f"http://127.0.0.1:{AFHOST_PORT}", bearer(api_key))


def bearer(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


# --- answers, normalized: ids and timestamps replaced by what they are ---


def classify(value: str | None, sent: str | None) -> str:
    """What an id header holds: absent, the id the request sent, a fresh uuid, or itself."""
    if value is None:
        return "absent"
    if value == sent:
        return "echoed"
    return "uuid" if UUID_RE.fullmatch(value) else value


def normalize(value: Any, names: dict[str, str]) -> Any:
    """A JSON value with the known ids named, other uuids and timestamps replaced."""
    if isinstance(value, dict):
        return {key: normalize(item, names) for key, item in value.items()}
    if isinstance(value, list):
        return [normalize(item, names) for item in value]
    if not isinstance(value, str):
        return value
    for known, placeholder in names.items():
        value = value.replace(known, placeholder)
    return TIMESTAMP_RE.sub("<timestamp>", UUID_RE.sub("<uuid>", value))


def parse_sse(text: str) -> list[tuple[str, Any]]:
    """(event, data) of each SSE frame; comments (keep-alives) left out."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        event = next((line[6:].strip() for line in lines if line.startswith("event:")), "message")
        data = "\n".join(line[5:].strip() for line in lines if line.startswith("data:"))
        try:
            events.append((event, json.loads(data)))
        except json.JSONDecodeError:
            events.append((event, data))
    return events


def sse_body(text: str, names: dict[str, str]) -> dict[str, Any]:
    """A stream's event names (repeats collapsed), its delta text, and its other frames."""
    events = parse_sse(text)
    collapsed = [name for i, (name, _) in enumerate(events) if i == 0 or events[i - 1][0] != name]
    deltas = [
        data.get("text", "") for name, data in events if name == "delta" and isinstance(data, dict)
    ]
    others = [{name: normalize(data, names)} for name, data in events if name != "delta"]
    return {"events": collapsed, "text": "".join(deltas), "frames": others}


def answer(response: httpx.Response, sent_invocation: str | None, sent_session: str | None):
    """One answer, normalized for comparison."""
    headers = response.headers
    invocation = headers.get("x-agent-invocation-id")
    session = headers.get("x-agent-session-id")
    names = {
        v: f"<{k}>"
        for k, v in (("x-agent-invocation-id", invocation), ("x-agent-session-id", session))
        if v
    }
    content_type = headers.get("content-type", "")
    if content_type.startswith("text/event-stream"):
        body = sse_body(response.text, names)
    else:
        try:
            body = normalize(response.json(), names)
        except ValueError:
            body = normalize(response.text.strip(), names)
    return {
        "status": response.status_code,
        "headers": {
            "x-agent-invocation-id": classify(invocation, sent_invocation),
            "x-agent-session-id": classify(session, sent_session),
            "content-type": content_type or "absent",
        },
        "body": body,
    }


# --- requests ---


@dataclass
class Call:
    """One request of a case."""

    body: Any = None  # a JSON value, or the raw text when `raw`
    raw: bool = False
    method: str = "POST"
    path: str = "/invocations"
    invocation_id: str | None = None  # the x-agent-invocation-id header sent
    session_id: str | None = None  # the ?agent_session_id= sent
    auth: bool = True


async def send(server: Server, client: httpx.AsyncClient, call: Call) -> httpx.Response:
    headers = {"Content-Type": "application/json", **(server.headers if call.auth else {})}
    if call.invocation_id is not None:
        headers["x-agent-invocation-id"] = call.invocation_id
    params = {"agent_session_id": call.session_id} if call.session_id is not None else None
    content = None
    if call.body is not None:
        content = call.body if call.raw else json.dumps(call.body)
    return await client.request(
        call.method, server.base_url + call.path, content=content, headers=headers, params=params
    )


async def observe(server: Server, client: httpx.AsyncClient, call: Call) -> dict[str, Any]:
    sent_invocation = call.invocation_id
    if call.path.startswith("/invocations/"):
        sent_invocation = call.path.split("/")[2]  # GET and cancel: the id in the path
    try:
        response = await send(server, client, call)
    except httpx.HTTPError as exc:
        return {"status": "error", "headers": {}, "body": repr(exc)}
    return answer(response, sent_invocation, call.session_id)


# --- the cases, sent to both servers ---

Case = Callable[[Server, httpx.AsyncClient], Awaitable[list[dict[str, Any]]]]


def single(**kwargs: Any) -> Case:
    async def case(server: Server, client: httpx.AsyncClient) -> list[dict[str, Any]]:
        return [await observe(server, client, Call(**kwargs))]

    return case


def session_reuse() -> Case:
    async def case(server: Server, client: httpx.AsyncClient) -> list[dict[str, Any]]:
        session = "conf-reuse"
        first = await observe(server, client, Call({"message": "first"}, session_id=session))
        second = await observe(server, client, Call({"message": "second"}, session_id=session))
        return [first, second]

    return case


def concurrent_turns(stream: bool) -> Case:
    """Two turns sent together in one session, then a third: the third's count shows whether
    both earlier turns were kept."""

    async def case(server: Server, client: httpx.AsyncClient) -> list[dict[str, Any]]:
        session = f"conf-concurrent-{'stream' if stream else 'blocking'}"
        both = await asyncio.gather(
            *(
                observe(server, client, Call({"message": m, "stream": stream}, session_id=session))
                for m in ("one", "two")
            )
        )
        after = await observe(server, client, Call({"message": "three"}, session_id=session))
        either = {'"one"': '"<one or two>"', '"two"': '"<one or two>"'}  # whichever ran second
        return [together(both), {**after, "body": normalize(after["body"], either)}]

    return case


def together(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """Answers to turns sent together, independent of the order they ran in."""
    texts = [json.dumps(a["body"]) for a in answers]
    return {
        "status": "+".join(sorted(str(a["status"]) for a in answers)),
        "headers": {
            "x-agent-session-id": sorted(a["headers"]["x-agent-session-id"] for a in answers)
        },
        "body": {
            "message counts": sorted(
                m.group(1) if (m := COUNT_RE.search(t)) else "-" for t in texts
            )
        },
    }


HI = {"message": "hi"}
CASES: dict[str, Case] = {
    "blocking": single(body=HI),
    "streaming": single(body={"message": "hi", "stream": True}),
    "body_not_json": single(body="hello", raw=True),
    "body_empty": single(body="", raw=True),
    "body_json_array": single(body=["hi"]),
    "message_missing": single(body={}),
    "message_not_string": single(body={"message": 1}),
    "stream_not_bool": single(body={"message": "hi", "stream": "yes"}),
    "options_not_object": single(body={"message": "hi", "options": ["x"]}),
    "options_instructions": single(body={"message": "hi", "options": {"instructions": "x"}}),
    "options_tools": single(body={"message": "hi", "options": {"tools": []}}),
    "options_session": single(body={"message": "hi", "options": {"session": "s"}}),
    "options_host_field": single(body={"message": "hi", "options": {"store": False}}),
    "options_temperature": single(body={"message": "hi", "options": {"temperature": 0.5}}),
    "options_stream_temperature": single(
        body={"message": "hi", "stream": True, "options": {"temperature": 0.5}}
    ),
    "options_stream_instructions": single(
        body={"message": "hi", "stream": True, "options": {"instructions": "x"}}
    ),
    "invocation_id_valid": single(body=HI, invocation_id="conf-inv_1.2:3"),
    "invocation_id_absent": single(body=HI),
    "invocation_id_space": single(body=HI, invocation_id="bad id"),
    "invocation_id_300_chars": single(body=HI, invocation_id="a" * 300),
    "session_id_valid": single(body=HI, session_id="conf-valid"),
    "session_id_absent": single(body=HI),
    "session_id_space": single(body=HI, session_id="bad session"),
    "session_id_300_chars": single(body=HI, session_id="s" * 300),
    "session_reuse": session_reuse(),
    "concurrent_blocking": concurrent_turns(stream=False),
    "concurrent_streaming": concurrent_turns(stream=True),
    "background": single(body={"message": "hi", "background": True}),
    "no_api_key": single(body=HI, auth=False),
    "get_invocation": single(method="GET", path="/invocations/conf-inv-1"),
    "cancel_invocation": single(path="/invocations/conf-inv-1/cancel"),
    "get_invocations": single(method="GET"),
    "delete_invocation": single(method="DELETE", path="/invocations/conf-inv-1"),
    "unknown_invocations_route": single(method="GET", path="/invocations/conf-inv-1/more"),
    "openapi_spec": single(method="GET", path="/invocations/docs/openapi.json"),
    "readiness": single(method="GET", path="/readiness"),
    "unknown_route": single(method="GET", path="/no-such-route"),
}


# --- afhost-only: long-running invocations ---


@dataclass
class Check:
    name: str
    statuses: list[int | str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)

    async def send(self, server: Server, client: httpx.AsyncClient, call: Call) -> Any:
        """Send, record the answer, and return its JSON body (None if not JSON)."""
        request = f"{call.method} {call.path}"
        try:
            response = await send(server, client, call)
        except httpx.HTTPError as exc:
            self.statuses.append("error")
            self.answers.append({"request": request, "status": "error", "body": repr(exc)})
            return None
        try:
            body = response.json()
        except ValueError:
            body = None
        echoed = response.headers.get("x-agent-invocation-id")
        self.statuses.append(response.status_code)
        self.answers.append(
            {
                "request": request,
                "status": response.status_code,
                "location": response.headers.get("location"),
                "x-agent-invocation-id": echoed,
                "body": body if body is not None else response.text[:300],
            }
        )
        if call.path.startswith("/invocations/"):  # Microsoft's core echoes the path's id
            self.expect(
                echoed == call.path.split("/")[2], f"{request}: x-agent-invocation-id {echoed!r}"
            )
        return body

    def expect(self, ok: bool, problem: str) -> bool:
        if not ok:
            self.problems.append(problem)
        return ok


async def start_background(check: Check, server: Server, client, message: str) -> str | None:
    """POST a background invocation; its id, after checking the 202 answer's shape."""
    body = await check.send(server, client, Call({"message": message, "background": True}))
    created = check.answers[-1]
    if not check.expect(created["status"] == 202, f"create: status {created['status']}"):
        return None
    ok = isinstance(body, dict) and set(body) == {"invocation_id", "status"}
    check.expect(ok, f"create: body {body!r} is not {{invocation_id, status}}")
    if not isinstance(body, dict) or "invocation_id" not in body:
        return None
    invocation_id = body["invocation_id"]
    check.expect(body.get("status") == "running", f"create: status {body.get('status')!r}")
    location = created.get("location") or ""
    check.expect(
        location.endswith(f"/invocations/{invocation_id}"), f"create: Location {location!r}"
    )
    echoed = created.get("x-agent-invocation-id")
    check.expect(echoed == invocation_id, f"create: x-agent-invocation-id {echoed!r}, not the id")
    return invocation_id


async def poll(check: Check, server: Server, client, invocation_id: str) -> Any:
    """GET the invocation until it is no longer running (at most 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        call = Call(method="GET", path=f"/invocations/{invocation_id}")
        body = await check.send(server, client, call)
        if not isinstance(body, dict) or body.get("status") != "running":
            return body
        if time.monotonic() > deadline:
            check.problems.append("poll: still running after 30 s")
            return body
        check.answers.pop()  # keep the first and the last poll only
        check.statuses.pop()
        await asyncio.sleep(0.1)


async def check_background_completes(server: Server, client) -> Check:
    check = Check("background: create, poll, cancel when done")
    invocation_id = await start_background(check, server, client, "hi")
    if invocation_id is None:
        return check
    body = await poll(check, server, client, invocation_id)
    shape = isinstance(body, dict) and set(body) == {"invocation_id", "status", "output"}
    check.expect(shape, f"poll: body {body!r} is not {{invocation_id, status, output}}")
    if isinstance(body, dict):
        check.expect(body.get("status") == "completed", f"poll: status {body.get('status')!r}")
        check.expect(
            'You said: \\"hi\\"' in json.dumps(body.get("output")), "poll: output lacks the answer"
        )
    call = Call(path=f"/invocations/{invocation_id}/cancel")
    body = await check.send(server, client, call)
    check.expect(
        isinstance(body, dict)
        and body.get("status") == "completed"
        and body.get("error") == "invocation already completed",
        f"cancel when done: body {body!r}",
    )
    return check


async def check_background_cancel(server: Server, client) -> Check:
    check = Check("background: cancel while running")
    message = " ".join(["word"] * 200)  # a long answer: ~4 s of streamed tokens
    invocation_id = await start_background(check, server, client, message)
    if invocation_id is None:
        return check
    call = Call(path=f"/invocations/{invocation_id}/cancel")
    body = await check.send(server, client, call)
    check.expect(
        body == {"invocation_id": invocation_id, "status": "cancelled"},
        f"cancel: body {body!r}",
    )
    body = await poll(check, server, client, invocation_id)
    check.expect(
        isinstance(body, dict) and body.get("status") == "cancelled",
        f"after cancel: body {body!r}",
    )
    return check


async def check_unknown_invocation(server: Server, client) -> Check:
    check = Check("unknown invocation: GET and cancel")
    for call in (
        Call(method="GET", path="/invocations/conf-missing"),
        Call(path="/invocations/conf-missing/cancel"),
    ):
        await check.send(server, client, call)
        check.expect(check.statuses[-1] == 404, f"{call.path}: {check.statuses[-1]}, not 404")
    return check


AFHOST_CHECKS = (check_background_completes, check_background_cancel, check_unknown_invocation)


# --- comparing and reporting ---


def short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def difference(ms: list[dict[str, Any]], af: list[dict[str, Any]]) -> str:
    """The first thing that differs, or '' when the answers are the same."""
    for index, (a, b) in enumerate(zip(ms, af, strict=False)):
        where = f"#{index + 1} " if len(ms) > 1 else ""
        if a["status"] != b["status"]:
            return f"{where}status {a['status']} vs {b['status']}"
        for name in dict.fromkeys([*a["headers"], *b["headers"]]):
            ms_value, af_value = a["headers"].get(name), b["headers"].get(name)
            if ms_value != af_value:
                return f"{where}{name}: {short(ms_value, 30)} vs {short(af_value, 30)}"
        if a["body"] != b["body"]:
            return f"{where}body: {short(a['body'], 45)} vs {short(b['body'], 45)}"
    return "" if len(ms) == len(af) else f"{len(ms)} vs {len(af)} answers"


def statuses(answers: list[dict[str, Any]] | None) -> str:
    return ",".join(str(a["status"]) for a in answers) if answers else "-"


def verdict(case: str, ms: list | None, af: list | None) -> tuple[str, str]:
    if ms is None or af is None:
        only = ms if af is None else af
        return "-", short(only[-1]["body"], 70)
    diff = difference(ms, af)
    if not diff:
        return "same", ""
    if case in DELIBERATE:
        return "deliberate", diff
    return "DIFFERENT", diff


def print_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def print_answers(case: str, results: dict[str, dict[str, list]]) -> None:
    print(f"\n## {case}" + (f" (deliberate: {DELIBERATE[case]})" if case in DELIBERATE else ""))
    for server, answers in results.items():
        if case in answers:
            print(f"  {server}:")
            for item in answers[case]:
                print("    " + json.dumps(item, ensure_ascii=False))


async def run_cases(server: Server) -> dict[str, list[dict[str, Any]]]:
    async with httpx.AsyncClient(timeout=30) as client:
        return {name: await case(server, client) for name, case in CASES.items()}


async def run_checks(server: Server) -> list[Check]:
    async with httpx.AsyncClient(timeout=30) as client:
        return [await check(server, client) for check in AFHOST_CHECKS]


def report(results: dict[str, dict[str, list]], checks: list[Check], verbose: bool) -> int:
    ms, af = results.get("microsoft"), results.get("afhost")
    rows, shown = [], []
    for case in CASES:
        a, b = (ms or {}).get(case), (af or {}).get(case)
        same, diff = verdict(case, a, b)
        rows.append((case, statuses(a), statuses(b), same, diff))
        if verbose or same != "same":
            shown.append(case)
    last = "difference (MS vs afhost)" if ms and af else "answer"
    print()
    print_table(rows, ("case", "MS", "afhost", "same?", last))
    if checks:
        print("\nafhost only: long-running invocations")
        print_table(
            [
                (
                    c.name,
                    ",".join(map(str, c.statuses)),
                    "ok" if not c.problems else "FAIL",
                    "; ".join(c.problems),
                )
                for c in checks
            ],
            ("check", "statuses", "result", "problems"),
        )
    for case in shown:
        print_answers(case, results)
    for check in checks:
        if verbose or check.problems:
            print(f"\n## afhost only: {check.name}")
            for item in check.answers:
                print("    " + json.dumps(item, ensure_ascii=False))
    failed = [row[0] for row in rows if row[3] == "DIFFERENT"] + [
        c.name for c in checks if c.problems
    ]
    print(
        f"\n{len(failed)} unexpected difference(s) or failed check(s)"
        + (f": {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help="comma-separated subset of microsoft,afhost (default: both)",
    )
    parser.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="afhost's PostgreSQL database (dropped and recreated each run)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print every case's answers, not only the differing ones",
    )
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    if unknown := set(targets) - set(TARGETS):
        parser.error(f"unknown target: {', '.join(sorted(unknown))}")
    signal.signal(signal.SIGTERM, rb._raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="afhost-invocations-"))
    results: dict[str, dict[str, list]] = {}
    checks: list[Check] = []
    try:
        env, api_key = prepare_afhost(args.database_url) if "afhost" in targets else ({}, "-")
        servers = []
        if "microsoft" in targets:
            servers.append(start_microsoft(workdir, api_key))
        if "afhost" in targets:
            servers.append(start_afhost(env, api_key, workdir))
        for server in servers:  # one at a time: they never compete for the cores
            results[server.name] = asyncio.run(run_cases(server))
            if server.name == "afhost":
                checks = asyncio.run(run_checks(server))
    except BenchError as exc:
        print(f"\nconformance aborted: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        rb.clean_up(workdir)
    return report(results, checks, args.verbose or len(results) == 1)


if __name__ == "__main__":
    sys.exit(main())
