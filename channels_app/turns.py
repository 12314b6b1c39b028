"""The turn pipeline every channel goes through, once:

1. identity: who is calling is recorded as an `Identity` (API callers and Telegram users alike);
2. authorize: linking decides whether that identity may start a turn;
3. conversation: the host core continues the caller's conversation, under its lease, so turns
   in one conversation never overlap (a previous_response_id branches instead);
4. run: blocking, streamed, or queued for a worker;
5. reply: the channel renders the run on its own wire;
6. deliver: the run is finished in `afhost.services.finish_run` / `store_runs`, the one place
   a finished run's pushes to other channels will be made.

Channels parse their wire format into a ChannelRequest, call `start_turn` (HTTP channels) or
`admit` and `start_stored_turn` (Telegram, in a worker), and render what they get back, a
refusal (LinkRequired or Denied) included.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from afhost import execution, services
from afhost.db import in_thread
from afhost.exceptions import ConversationBusy
from afhost.models import Run
from afhost.services import StartedRun
from afhost.types import ChannelIdentity, ChannelRequest
from linking.models import ChannelPolicy, Identity
from linking.services import (
    UNREAD,
    Allowed,
    Denied,
    LinkRequired,
    Outcome,
    Principal,
    authorize,
    record_token_principal,
    touch_identity,
)

# Bodies larger than this are parsed, and their runs prepared, in a pool thread: the work grows
# with the body, and on the event loop it would hold up every other request meanwhile.
INLINE_BODY_BYTES = 64 * 1024
# A busy HTTP caller's identity is written at most this often per process (its last_seen_at).
TOUCH_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class Profile:
    """What a channel knows about the person behind an identity."""

    display_name: str = ""
    username: str = ""


class TurnRefused(Exception):
    """Authorization refused the turn: `outcome` is LinkRequired or Denied."""

    def __init__(self, outcome: LinkRequired | Denied) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


def admit(
    who: ChannelIdentity,
    *,
    profile: Profile = Profile(),
    verified_claims: Mapping[str, Any] | None = None,
    policy: ChannelPolicy | None | object = UNREAD,
) -> tuple[Identity, Outcome]:
    """Steps 1 and 2: record the caller (and the principal its channel verified), and decide
    whether they may start a turn (under the channel's `policy`, if the channel read it)."""
    identity = identify(who, profile=profile, verified_claims=verified_claims)
    return identity, authorize(identity=identity, policy=policy)


def identify(
    who: ChannelIdentity,
    *,
    profile: Profile = Profile(),
    verified_claims: Mapping[str, Any] | None = None,
) -> Identity:
    """Step 1 alone, for what needs no authorization (a chat command such as /link)."""
    identity = touch_identity(
        identity=who, display_name=profile.display_name, username=profile.username
    )
    if verified_claims is not None:
        record_token_principal(identity=identity, principal=Principal.from_claims(verified_claims))
    return identity


# (channel, native id) -> monotonic time of its last admission in this process
_admitted: dict[tuple[str, str], float] = {}


def _admitted_lately(who: ChannelIdentity) -> bool:
    """Whether the HTTP caller was admitted within the API key cache's lifetime: a refusal (a
    block, a revoked link, a new policy) reaches a busy caller as late as a key's revocation."""
    recent = time.monotonic() - min(TOUCH_EVERY, settings.AFHOST_API_KEY_CACHE_SECONDS)
    return _admitted.get((who.channel, who.native_id), -TOUCH_EVERY) > recent


@dataclass(frozen=True, slots=True)
class Turn:
    run: Run
    # None for a run queued for a worker.
    started: StartedRun | None = None

    async def run_blocking(self) -> Run:
        if self.started is None:
            raise TypeError("a queued run is run by a worker")
        return await execution.run_blocking(self.started)

    def stream(self) -> AsyncGenerator[list[dict], None]:
        """The run's wire events as they happen (a background run's, as its worker stores them)."""
        if self.started is None:
            return execution.tail_run_events(run=self.run, after=-1)
        return execution.stream_foreground_run(self.started)


async def start_turn(request: ChannelRequest, *, large: bool = False, wait: float = 0) -> Turn:
    """Steps 1-4 for an HTTP caller: a foreground turn to run in this request, or a background
    run queued for a worker. A conversation another turn is in raises ConversationBusy (after
    waiting up to `wait` seconds for it, sleeping between looks), a turn authorization refuses
    TurnRefused.

    A caller that may call many times a second is recorded once a minute per process; a new
    foreground conversation from one recorded lately touches no database until it is stored.
    Preparing a `large` request's run is left to a pool thread even then, off the event loop.
    """
    deadline = time.monotonic() + wait
    while True:
        # Decided once: looked at again, an admission that ran out in between would send the
        # caller's lookup to the event loop.
        admitted = _admitted_lately(request.identity)
        try:
            if large or request.background or request.continues_conversation or not admitted:
                return await in_thread(_start_turn, request, admitted=admitted)
            return _start_turn(request, admitted=True)
        except ConversationBusy:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(execution.CONVERSATION_WAIT)


def _start_turn(request: ChannelRequest, *, admitted: bool) -> Turn:
    if not admitted:
        _, outcome = admit(request.identity, verified_claims=request.verified_claims)
        if not isinstance(outcome, Allowed):
            raise TurnRefused(outcome)
        _admitted[request.identity.channel, request.identity.native_id] = time.monotonic()
    if request.background:
        return Turn(run=services.queue_run(request=request))
    started = services.prepare_run(request=request)
    return Turn(run=started.run, started=started)


async def start_stored_turn(
    request: ChannelRequest, *, link: Callable[[Run], None] | None = None
) -> StartedRun:
    """Steps 3-4 in a worker, after `admit`: wait for the conversation, then store the run as
    in progress, `link`ed to what asked for it, before the target runs."""
    return await execution.wait_for_turn(lambda: services.start_run(request=request, link=link))
