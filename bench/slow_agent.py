"""A slow target for the benches: every turn awaits S seconds and uses no CPU.

    AFHOST_TARGET=bench.slow_agent:answer BENCH_TURN_SECONDS=2

It stands for an agent that waits on a remote model: the turn is all waiting, so how many turns
run at once is up to the host. The answer quotes the last user message the way the demo agent
does (`You said: "<text>".`), so a bench can match each answer to its request.

With `BENCH_TURN_LOG=<file>` every turn appends `start <pid> <epoch seconds> <text>` when it
begins and `end <pid> <epoch seconds> <text>` when its wait is over (one write each, O_APPEND),
so a bench can tell which turns were in flight when their worker was killed, which ran more
than once, and whether two runs of one turn overlapped (`read_turn_log`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from agent_framework import Message


def _log(event: str, text: str) -> None:
    if path := os.environ.get("BENCH_TURN_LOG"):
        line = f"{event} {os.getpid()} {time.time():.3f} {text}".replace("\n", " ") + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


async def answer(messages: list[Message]) -> str:
    """Wait BENCH_TURN_SECONDS (default 2), then quote the last user message."""
    text = next((m.text for m in reversed(messages) if m.role == "user"), "")
    _log("start", text)
    await asyncio.sleep(float(os.environ.get("BENCH_TURN_SECONDS", "2")))
    _log("end", text)
    return f'You said: "{text}". (after a slow turn)'


@dataclass
class Execution:
    """One run of a turn by the target: which process, from when to when (None: no end logged,
    the process died or the turn still runs)."""

    text: str
    pid: int
    started: float  # epoch seconds
    ended: float | None = None


def read_turn_log(path: Path) -> list[Execution]:
    """The executions BENCH_TURN_LOG recorded, in start order; an `end` closes the oldest open
    execution of the same text in the same process."""
    executions: list[Execution] = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            event, pid, at, text = (line.split(" ", 3) + ["", "", ""])[:4]
            try:
                pid_, at_ = int(pid), float(at)
            except ValueError:
                continue  # a line cut short by a kill
            if event == "start":
                executions.append(Execution(text, pid_, at_))
            elif event == "end":
                for run in executions:
                    if run.text == text and run.pid == pid_ and run.ended is None:
                        run.ended = at_
                        break
    return executions
