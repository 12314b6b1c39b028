"""Answering Telegram updates: addressing, commands, the agent turn, and sending the reply."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta

import certifi
from agent_framework import Content, Message
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from telegram import Bot, ReplyParameters, Update
from telegram import Message as TgMessage
from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError
from telegram.request import HTTPXRequest

from afhost import execution, services
from afhost.db import db_call
from afhost.engine import in_engine
from afhost.leases import give_back, take_lease
from afhost.models import Run
from afhost.types import ChannelIdentity, ChannelRequest, HostedRunResult
from channels_app import turns
from channels_app.telegram.models import TelegramChat, TelegramChatMember, TelegramUpdate
from channels_app.telegram.rendering import OutgoingText, render_reply
from channels_app.telegram.selectors import head_is_due, next_update
from linking.models import Identity

logger = logging.getLogger(__name__)

CHANNEL = "telegram"
SEND_ATTEMPTS = 4
SEND_BACKOFF = 0.5  # seconds before the first resend; doubles each time
MAX_RETRY_AFTER = 60  # seconds; a longer flood wait is retried later by the sweeper
TYPING_EVERY = 4  # seconds; Telegram shows "typing…" for about 5
HELP = (
    "I am an AI assistant. Send me a message and I will answer; I remember our conversation.\n\n"
    "/new - start a fresh conversation\n"
    "/whoami - what I know about you\n"
    "/link - link your organisation account\n"
    "/unlink - remove that link\n"
    "/ask <question> - ask me in a group\n"
    "/help - this message"
)
LINKING_OFF = "Account linking is not configured on this bot."
FAILED_ANSWER = "Sorry, I could not answer that. Please try again."


class BotBlocked(Exception):
    """Telegram refuses to deliver to this chat (the user blocked the bot, or it was removed)."""


class PermanentSendError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    args: str


@dataclass(frozen=True, slots=True)
class AgentTurn:
    text: str


@dataclass(frozen=True, slots=True)
class ReplyTarget:
    chat_id: int
    thread_id: int | None
    reply_to: int | None


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Built once per process: loading the CA bundle for every Bot costs ~40 ms of CPU.
    return ssl.create_default_context(cafile=certifi.where())


def make_bot(*, connections: int = 4) -> Bot:
    def http(pool_size: int) -> HTTPXRequest:
        return HTTPXRequest(connection_pool_size=pool_size, httpx_kwargs={"verify": _tls_context()})

    return Bot(
        settings.TELEGRAM_BOT_TOKEN,
        base_url=settings.TELEGRAM_API_BASE_URL,
        base_file_url=settings.TELEGRAM_API_FILE_URL,
        # By default, room for the typing indicator next to a send or a download.
        request=http(connections),
        get_updates_request=http(1),
    )


# A worker engine's bot, shared by every chat it answers: one getMe per process, one pool of
# connections to the Bot API.
_engine_bots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Bot] = (
    weakref.WeakKeyDictionary()
)
ENGINE_BOT_CONNECTIONS = 32


@contextlib.asynccontextmanager
async def _bot() -> AsyncIterator[Bot]:
    """The bot a drain answers with: the engine's in a worker, a bot of its own elsewhere."""
    if in_engine():
        loop = asyncio.get_running_loop()
        if loop not in _engine_bots:
            _engine_bots[loop] = make_bot(connections=ENGINE_BOT_CONNECTIONS)
        yield _engine_bots[loop]
        return
    bot = make_bot()
    try:
        yield bot
    finally:
        await bot.shutdown()


def plan_message(
    message: TgMessage, *, bot_username: str, bot_id: int
) -> Command | AgentTurn | None:
    """What a message asks of the bot, or None when it is not addressed to it."""
    text = message.text or message.caption or ""
    entities = message.parse_entities() if message.text else message.parse_caption_entities()
    private = message.chat.type == "private"
    accept = settings.TELEGRAM_ACCEPT_IN_GROUP
    first = min(entities, key=lambda entity: entity.offset, default=None)
    if first is not None and first.type == "bot_command" and first.offset == 0:
        name, _, addressee = entities[first][1:].partition("@")
        if addressee and addressee.lower() != bot_username.lower():
            return None
        args = text[len(entities[first]) :].strip()
        if name.lower() != "ask":
            return Command(name.lower(), args)
        if private or accept in ("command_only", "mention_or_command", "all"):
            return AgentTurn(args)
        return None
    if private or accept == "all":
        return AgentTurn(text.strip())
    mentions = [
        value
        for entity, value in entities.items()
        if (entity.type == "mention" and value.lower() == f"@{bot_username.lower()}")
        or (entity.type == "text_mention" and entity.user and entity.user.id == bot_id)
    ]
    replied = message.reply_to_message
    is_reply = bool(replied and replied.from_user and replied.from_user.id == bot_id)
    if (mentions or is_reply) and accept in ("mention_only", "mention_or_command"):
        for value in mentions:
            text = text.replace(value, " ")
        return AgentTurn(" ".join(text.split()))
    return None


def conversation_of(message: TgMessage, *, user_key: str) -> tuple[str, str]:
    """(partition, conversation key) of a message under the configured conversation scope."""
    if message.chat.type == "private":
        return user_key, "user"
    locator = f"chat:{message.chat.id}"
    if message.is_topic_message and message.message_thread_id:
        locator += f":{message.message_thread_id}"
    scope = settings.TELEGRAM_CONVERSATION_SCOPE
    if scope == "per_user":
        return user_key, "user"
    if scope == "per_conversation":
        return f"telegram-chat:{message.chat.id}", locator
    return user_key, locator


def _author(message: TgMessage) -> ChannelIdentity:
    return ChannelIdentity(channel=CHANNEL, native_id=str(message.from_user.id))


@transaction.atomic
def _record_member(chat: TelegramChat, identity: Identity) -> None:
    now = timezone.now()
    counted = TelegramChatMember.objects.filter(chat=chat, identity=identity).update(
        message_count=F("message_count") + 1, last_message_at=now, updated_at=now
    )
    if not counted:  # their first message here
        member, created = TelegramChatMember.objects.get_or_create(
            chat=chat, identity=identity, defaults={"message_count": 1, "last_message_at": now}
        )
        if not created:  # a message in another worker got there first
            TelegramChatMember.objects.filter(pk=member.pk).update(
                message_count=F("message_count") + 1, last_message_at=now, updated_at=now
            )
    if chat.blocked_at:
        TelegramChat.objects.filter(pk=chat.pk).update(
            blocked_at=None, blocked_reason="", updated_at=now
        )


def _reply_text(run: Run) -> str:
    if run.status == Run.Status.FAILED:
        return FAILED_ANSWER
    messages = [Message.from_dict(data) for data in run.output_messages]
    return HostedRunResult(status=run.status, messages=messages).text or "(no answer)"


@contextlib.asynccontextmanager
async def _typing(bot: Bot, target: ReplyTarget) -> AsyncIterator[None]:
    async def send_typing() -> None:
        try:
            await bot.send_chat_action(
                target.chat_id, ChatAction.TYPING, message_thread_id=target.thread_id
            )
        except TelegramError as exc:
            logger.info("typing action for chat %s failed: %s", target.chat_id, exc)

    async def keep_typing() -> None:
        while True:
            await asyncio.sleep(TYPING_EVERY)
            await send_typing()

    await send_typing()
    task = asyncio.create_task(keep_typing())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _media(bot: Bot, message: TgMessage) -> tuple[list[Content], str]:
    """The message's photo or document as content, downloaded here (never a token-bearing URL)."""
    cap = settings.TELEGRAM_MAX_FILE_BYTES
    if message.photo:
        fitting = [size for size in message.photo if (size.file_size or 0) <= cap]
        if not fitting:
            return [], "(The photo was too large for me to look at.)"
        file_id, media_type = (
            max(fitting, key=lambda size: size.width * size.height).file_id,
            "image/jpeg",
        )
    elif message.document:
        if (message.document.file_size or 0) > cap:
            return [], "(The file was too large for me to read.)"
        file_id = message.document.file_id
        media_type = message.document.mime_type or "application/octet-stream"
    else:
        return [], ""
    data = await (await bot.get_file(file_id)).download_as_bytearray()
    if len(data) > cap:
        return [], "(The file was too large for me to read.)"
    return [Content.from_data(bytes(data), media_type)], ""


class TurnInterrupted(Exception):
    """An earlier attempt's run is still held (its worker's lease has not run out yet)."""


def _link_run(update: TelegramUpdate) -> Callable[[Run], None]:
    def link(run: Run) -> None:
        TelegramUpdate.objects.filter(pk=update.pk).update(run=run, updated_at=timezone.now())
        update.run = run

    return link


async def _answer_with_agent(
    bot: Bot, update: TelegramUpdate, message: TgMessage, turn: AgentTurn, target: ReplyTarget
) -> str | None:
    run = None if update.run_id is None else await db_call(lambda: update.run)()
    if run is None:
        media, note = await _media(bot, message)
        text = " ".join(part for part in (turn.text, note) if part)
        if not text and not media:
            return None
        identity = _author(message)
        partition, key = conversation_of(message, user_key=identity.isolation_key)
        request = ChannelRequest(
            channel=CHANNEL,
            identity=identity,
            input=[Message("user", [*([Content.from_text(text)] if text else []), *media])],
            conversation_key=key,
            partition_key=partition,
            attributes={
                "chat_id": message.chat.id,
                "message_id": message.message_id,
                "update_id": update.update_id,
            },
        )
        started = await turns.start_stored_turn(request, link=_link_run(update))
    elif run.is_terminal:
        return _reply_text(run)
    else:  # an earlier attempt's worker died mid-run: run it again, counting that attempt
        if not await db_call(update.record_interruption)():
            await db_call(services.fail_lost_run)(run=run)  # died too often: visibly failed
            return FAILED_ANSWER
        started = await execution.wait_for_turn(lambda: services.resume_run(run=run))
        if started is None:
            raise TurnInterrupted(f"run {run.public_id} is still held by another worker")
    async with _typing(bot, target):
        run = await execution.run_blocking(started)
    return _reply_text(run)


async def _command_reply(command: Command, message: TgMessage, identity: Identity) -> str:
    user = message.from_user
    if command.name == "start":
        return f"Hello {user.first_name}! {HELP}"
    if command.name == "help":
        return HELP
    if command.name == "new":
        partition, key = conversation_of(message, user_key=identity.isolation_key)
        await db_call(services.reset_conversation)(
            channel=CHANNEL, isolation_key=partition, key=key
        )
        return "Started a new conversation. What shall we talk about?"
    if command.name == "whoami":
        handle = f" (@{user.username})" if user.username else ""
        return f"You are {user.full_name}{handle}, Telegram user {user.id}.\n{LINKING_OFF}"
    if command.name in ("link", "unlink"):
        return LINKING_OFF
    return f"I don't know /{command.name}. /help lists what I can do."


def _seconds(value: int | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


async def _send_part(bot: Bot, target: ReplyTarget, part: OutgoingText, *, first: bool) -> None:
    """Send one message, retrying transient failures; 429 waits as long as Telegram asks."""
    reply = (
        ReplyParameters(target.reply_to, allow_sending_without_reply=True)
        if first and target.reply_to
        else None
    )
    text, parse_mode = part.html, ParseMode.HTML
    for attempt in range(SEND_ATTEMPTS):
        try:
            await bot.send_message(
                target.chat_id,
                text,
                parse_mode=parse_mode,
                message_thread_id=target.thread_id,
                reply_parameters=reply,
            )
            return
        except Forbidden as exc:
            raise BotBlocked(exc.message) from exc
        except RetryAfter as exc:
            wait = _seconds(exc.retry_after)
            if wait > MAX_RETRY_AFTER or attempt == SEND_ATTEMPTS - 1:
                raise
            await asyncio.sleep(wait)
        except BadRequest as exc:
            if "parse entities" not in exc.message.lower() or parse_mode is None:
                raise PermanentSendError(exc.message) from exc
            logger.warning(
                "chat %s: Telegram rejected the formatting (%s); sending plain text",
                target.chat_id,
                exc,
            )
            text, parse_mode = part.plain, None
        except NetworkError:
            if attempt == SEND_ATTEMPTS - 1:
                raise
            await asyncio.sleep(SEND_BACKOFF * 2**attempt)


async def _send_reply(bot: Bot, update: TelegramUpdate, target: ReplyTarget, text: str) -> None:
    """Send the reply's parts, skipping those an earlier attempt already delivered.

    Each part sent is recorded before the next goes out; the last is recorded with the update's
    end (TelegramUpdate.finish), in the same write.
    """
    parts = render_reply(text)
    for index, part in enumerate(parts):
        if index < update.sent_parts:
            continue
        await _send_part(bot, target, part, first=index == 0)
        update.sent_parts = index + 1
        if update.sent_parts < len(parts):
            await db_call(TelegramUpdate.objects.filter(pk=update.pk).update)(
                sent_parts=update.sent_parts, updated_at=timezone.now()
            )


async def handle_update(bot: Bot, chat: TelegramChat, update: TelegramUpdate) -> tuple[str, str]:
    """Answer one update; returns the inbox status and a note for operators."""
    try:
        parsed = Update.de_json(update.payload, bot)
    except Exception as exc:  # any shape python-telegram-bot cannot read: retrying cannot help
        return TelegramUpdate.Status.FAILED, f"malformed update: {type(exc).__name__}: {exc}"
    if parsed.callback_query is not None:
        await parsed.callback_query.answer()
        return TelegramUpdate.Status.IGNORED, "callback queries are not used"
    message = parsed.message
    if message is None:
        kind = next((key for key in update.payload if key != "update_id"), "unknown")
        return TelegramUpdate.Status.IGNORED, f"unsupported update type: {kind}"
    if message.from_user is None or message.from_user.is_bot:
        return TelegramUpdate.Status.IGNORED, "not from a person"
    plan = plan_message(message, bot_username=bot.username, bot_id=bot.id)
    if plan is None:
        return TelegramUpdate.Status.IGNORED, "not addressed to the bot"
    user = message.from_user
    identity = await db_call(turns.admit)(
        _author(message),
        profile=turns.Profile(display_name=user.full_name, username=user.username or ""),
    )
    await db_call(_record_member)(chat, identity)
    thread_id = message.message_thread_id if message.is_topic_message else None
    target = ReplyTarget(
        message.chat.id, thread_id, None if message.chat.type == "private" else message.message_id
    )
    if isinstance(plan, Command):
        text = await _command_reply(plan, message, identity)
    else:
        text = await _answer_with_agent(bot, update, message, plan, target)
        if text is None:
            return TelegramUpdate.Status.IGNORED, "no text or media to answer"
    try:
        await _send_reply(bot, update, target, text)
    except BotBlocked as exc:
        await db_call(chat.mark_blocked)(exc.args[0])
        if message.chat.type == "private":
            await db_call(identity.mark_unreachable)(exc.args[0])
        return TelegramUpdate.Status.FAILED, f"Telegram refused delivery: {exc.args[0]}"
    except PermanentSendError as exc:
        return TelegramUpdate.Status.FAILED, f"Telegram rejected the reply: {exc.args[0]}"
    return TelegramUpdate.Status.PROCESSED, ""


async def answer_chat(chat_pk: int) -> None:
    """A worker's job for a chat: answer its pending updates in order, unless another worker
    holds the chat (that one answers them).

    After giving the chat back, look once more: an update that arrived while we held it had its
    job turned away, so it is ours to answer.
    """
    # Every update queues its chat; the first job answers them all, so most find nothing due.
    while await db_call(head_is_due)(chat_pk=chat_pk):
        lease = await db_call(take_lease)(TelegramChat, chat_pk)
        if not lease:
            return
        try:
            chat = await db_call(TelegramChat.objects.get)(pk=chat_pk)
            await drain_chat(chat)
        finally:
            await db_call(give_back)(TelegramChat, chat_pk, lease)


async def drain_chat(chat: TelegramChat) -> None:
    """Answer the chat's pending updates oldest first; stop at one that must wait for a retry.

    A failed attempt (Telegram unreachable, even for the bot's own getMe) counts against the
    update it was for.
    """
    async with _bot() as bot:
        while (update := await db_call(next_update)(chat=chat)) is not None:
            if update.next_attempt_at > timezone.now():
                return
            try:
                await bot.initialize()  # getMe, the first time
                status, note = await handle_update(bot, chat, update)
            except Exception as exc:
                logger.exception(
                    "telegram update %s failed (attempt %d)", update.update_id, update.attempts + 1
                )
                await db_call(update.record_failure)(f"{type(exc).__name__}: {exc}")
                return
            await db_call(update.finish)(status=status, error=note, sent_parts=update.sent_parts)
            if note:
                logger.info("telegram update %s %s: %s", update.update_id, status, note)
