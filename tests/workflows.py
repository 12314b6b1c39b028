"""Workflows the test suite hosts: a slow pipeline whose steps leave side effects tests can count,
a workflow that asks a person, one with an agent in it, and ones afhost refuses."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Never

from agent_framework import (
    Agent,
    Executor,
    InMemoryCheckpointStorage,
    Message,
    Workflow,
    WorkflowBuilder,
    WorkflowCheckpoint,
    WorkflowContext,
    executor,
    handler,
    response_handler,
)

from tests.agents import ScriptedChatClient

# A file each pipeline step appends its name to as it completes: tests read it, in any process.
EFFECTS = "AFHOST_TEST_WORKFLOW_EFFECTS"


def effects() -> list[str]:
    path = Path(os.environ[EFFECTS])
    return path.read_text().split() if path.exists() else []


def _record(step: str) -> None:
    if path := os.environ.get(EFFECTS):
        with open(path, "a") as effects_file:
            effects_file.write(f"{step}\n")


@dataclass
class Job:
    seconds: float
    done: list[str]


@executor(id="begin")
async def begin(text: str, ctx: WorkflowContext[Job]) -> None:
    """ "slow 1.5" makes each step take a second and a half."""
    words = text.split()
    await ctx.send_message(Job(seconds=float(words[1]) if len(words) > 1 else 0, done=[]))


class Step(Executor):
    @handler
    async def work(self, job: Job, ctx: WorkflowContext[Job, str]) -> None:
        await asyncio.sleep(job.seconds)
        await asyncio.to_thread(_record, self.id)
        await ctx.yield_output(f"{self.id} done")
        await ctx.send_message(Job(seconds=job.seconds, done=[*job.done, self.id]))


def pipeline() -> Workflow:
    """Three slow steps, one after another; each outputs that it is done."""
    steps = [Step(id=name) for name in ("one", "two", "three")]
    return WorkflowBuilder(name="pipeline", start_executor=begin).add_chain([begin, *steps]).build()


@dataclass
class Question:
    prompt: str
    name: str = ""


class Greeter(Executor):
    """Asks the person their name, then their favourite colour, then greets them."""

    @handler
    async def start(self, conversation: list[Message], ctx: WorkflowContext) -> None:
        await ctx.request_info(Question(prompt="What is your name?"), str)

    @response_handler
    async def answered(
        self, question: Question, answer: str, ctx: WorkflowContext[Never, str]
    ) -> None:
        if not question.name:
            await ctx.request_info(
                Question(prompt=f"Nice to meet you, {answer}. Your favourite colour?", name=answer),
                str,
            )
            return
        await ctx.yield_output(f"Hello {question.name}, {answer} it is!")


def greeting() -> Workflow:
    return WorkflowBuilder(name="greeting", start_executor=Greeter(id="greeter")).build()


def paused_greeting() -> WorkflowCheckpoint:
    """The checkpoint of a greeting waiting for the person's name."""

    async def run() -> WorkflowCheckpoint:
        storage = InMemoryCheckpointStorage()
        await greeting().run([Message("user", ["hi"])], checkpoint_storage=storage)
        return await storage.get_latest(workflow_name="greeting")

    return asyncio.run(run())


# The same, built once: hosted as an instance, it runs one run at a time per process.
greeting_instance = greeting()


@dataclass
class Report:
    words: int
    shouted: str


@executor(id="report")
async def report_words(text: str, ctx: WorkflowContext[Never, str | Report]) -> None:
    await ctx.yield_output(f"{len(text.split())} words")
    await ctx.yield_output(Report(words=len(text.split()), shouted=text.upper()))


def report() -> Workflow:
    """Outputs a text, then a dataclass."""
    return WorkflowBuilder(name="report", start_executor=report_words).build()


def assistant() -> Workflow:
    """The scripted agent as the workflow's one node."""
    agent = Agent(ScriptedChatClient(), name="scripted")
    return WorkflowBuilder(name="assistant", start_executor=agent).build()


@executor(id="nothing")
async def nothing(text: str, ctx: WorkflowContext) -> None:
    """Outputs nothing."""


def silent() -> Workflow:
    return WorkflowBuilder(name="silent", start_executor=nothing).build()


@executor(id="double")
async def double(number: int, ctx: WorkflowContext[Never, int]) -> None:
    await ctx.yield_output(number * 2)


def doubling() -> Workflow:
    return WorkflowBuilder(start_executor=double).build()


def not_a_workflow() -> str:
    return "just text"
