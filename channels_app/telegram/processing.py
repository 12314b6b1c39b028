"""Answering Telegram updates: addressing, commands, the agent turn, and sending the reply."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta

from agent_framework import Content, Message
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone
from telegram import Bot, LinkPreviewOptions, ReplyParameters, Update, User
from telegram import Message as TgMessage
from telegram.constants import ChatAction, ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    NetworkError,
    RetryAfter,
    TelegramError,
)

from afhost import execution, services
from afhost.db import db_call, unique_or_none
from afhost.engine import in_engine
from afhost.leases import give_back, keeper, lease_duration
from afhost.models import Run
from afhost.types import ChannelIdentity, ChannelRequest, HostedRunResult
from channels_app import turns
from channels_app.telegram.models import TelegramChat, TelegramChatMember, TelegramUpdate
from channels_app.telegram.rendering import OutgoingText, render_reply
from channels_app.telegram.transport import AiohttpRequest
from linking import services as linking
from linking.models import ChannelPolicy, Identity, LinkChallenge

logger = logging.getLogger(__name__)

CHANNEL = "telegram"
SEND_ATTEMPTS = 4
SEND_BACKOFF = 0.5  # seconds before the first resend; doubles each time
MAX_RETRY_AFTER = 60  # seconds; a longer flood wait is retried later by the sweeper
TYPING_EVERY = 4  # seconds; Telegram shows "typing…" for about 5
# Command replies may hold a one-time link, which a preview fetch by Telegram would use up.
NO_PREVIEW = LinkPreviewOptions(is_disabled=True)
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
LINK_IN_PRIVATE = "To link your organisation account, open a private chat with me: {url}"
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


@dataclass(frozen=True, slots=True)
class Listening:
    """How the bot listens in groups: the Telegram channel policy's values, or the settings'."""

    accept_in_group: str
    conversation_scope: str

    @classmethod
    def of(cls, policy: ChannelPolicy | None) -> Listening:
        return cls(
            accept_in_group=(policy and policy.accept_in_group)
            or settings.TELEGRAM_ACCEPT_IN_GROUP,
            conversation_scope=(policy and policy.conversation_scope)
            or settings.TELEGRAM_CONVERSATION_SCOPE,
        )


def make_bot(*, connections: int = 4) -> Bot:
    return Bot(
        settings.TELEGRAM_BOT_TOKEN,
        base_url=settings.TELEGRAM_API_BASE_URL,
        base_file_url=settings.TELEGRAM_API_FILE_URL,
        # By default, room for the typing indicator next to a send or a download.
        request=AiohttpRequest(connections=connections),
        get_updates_request=AiohttpRequest(connections=1),
    )


# A worker engine's bot, shared by every chat it answers: one getMe per process, one pool of
# connections to the Bot API.
_engine_bots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Bot] = (
    weakref.WeakKeyDictionary()
)
ENGINE_BOT_CONNECTIONS = 32


@contextlib.asynccontextmanager
async def job_bot() -> AsyncIterator[Bot]:
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
        await bot.request.shutdown()  # also when the bot never initialized (PTB then skips it)


def plan_message(
    message: TgMessage, *, bot_username: str, bot_id: int, accept: str
) -> Command | AgentTurn | None:
    """What a message asks of the bot, or None when it is not addressed to it; `accept` says
    which group messages are (Listening.accept_in_group)."""
    text = message.text or message.caption or ""
    entities = message.parse_entities() if message.text else message.parse_caption_entities()
    private = message.chat.type == "private"
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


def conversation_of(message: TgMessage, *, user_key: str, scope: str) -> tuple[str, str]:
    """(partition, conversation key) of a message under a conversation scope."""
    if message.chat.type == "private":
        return user_key, "user"
    locator = f"chat:{message.chat.id}"
    if message.is_topic_message and message.message_thread_id:
        locator += f":{message.message_thread_id}"
    if scope == "per_user":
        return user_key, "user"
    if scope == "per_conversation":
        return f"telegram-chat:{message.chat.id}", locator
    return user_key, locator


def _sender(message: TgMessage) -> User:
    """The person who sent the message (handle_update answers only messages from a person)."""
    if message.from_user is None:
        raise ValueError("a message from no one")
    return message.from_user


def _author(message: TgMessage) -> ChannelIdentity:
    return ChannelIdentity(channel=CHANNEL, native_id=str(_sender(message).id))


def _count_member(chat: TelegramChat, identity: Identity) -> None:
    """Count a message of `identity` in the chat's members; the chat is reachable again."""
    now = timezone.now()
    if identity.is_new:  # a member of no chat yet (and this one is leased to us)
        TelegramChatMember.objects.create(
            chat=chat, identity=identity, message_count=1, last_message_at=now
        )
    else:
        member = TelegramChatMember.objects.filter(chat=chat, identity=identity)
        one_more = {
            "message_count": F("message_count") + 1,
            "last_message_at": now,
            "updated_at": now,
        }
        if not member.update(**one_more):  # their first message here
            try:
                with transaction.atomic():
                    TelegramChatMember.objects.create(
                        chat=chat, identity=identity, message_count=1, last_message_at=now
                    )
            except IntegrityError:  # a message in another worker got there first
                member.update(**one_more)
    if chat.blocked_at:
        TelegramChat.objects.filter(pk=chat.pk).update(
            blocked_at=None, blocked_reason="", updated_at=now
        )


@transaction.atomic
def _record_member(identity: Identity, update: TelegramUpdate) -> None:
    """Count a message that starts no agent turn (a command, a refusal), on its first attempt.
    A turn's message is counted with its run, in the transaction that stores it (_link_run)."""
    if update.mark_counted():
        _count_member(update.chat, identity)  # type: ignore[arg-type]  # queued in its chat


@dataclass(frozen=True, slots=True)
class Intake:
    """A message addressed to the bot, as read under the channel's policy."""

    plan: Command | AgentTurn
    listening: Listening
    identity: Identity
    # Whether the author may start a turn; None for a command (how a refused person gets access).
    outcome: linking.Outcome | None


def _take_in(bot: Bot, update: TelegramUpdate, message: TgMessage) -> Intake | None:
    """What the message asks of the bot under the channel's policy (None: not addressed to it),
    with its author recorded and admitted for a turn (or, asking none, counted in the chat): one
    database hop."""
    policy = linking.policy_for(CHANNEL)
    listening = Listening.of(policy)
    plan = plan_message(
        message, bot_username=bot.username, bot_id=bot.id, accept=listening.accept_in_group
    )
    if plan is None:
        return None
    user = _sender(message)
    profile = turns.Profile(display_name=user.full_name, username=user.username or "")
    if isinstance(plan, Command):
        identity, outcome = turns.identify(_author(message), profile=profile), None
    else:
        identity, outcome = turns.admit(_author(message), profile=profile, policy=policy)
    if not isinstance(outcome, linking.Allowed):
        _record_member(identity, update)
    return Intake(plan, listening, identity, outcome)


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

    # The agent starts while the first typing action is on its way (a Bot API round trip off
    # every answer); the reply waits for it, so "typing…" never shows after the answer.
    first = asyncio.create_task(send_typing())
    task = asyncio.create_task(keep_typing())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await first


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


def _link_run(update: TelegramUpdate, identity: Identity) -> Callable[[Run], None]:
    """Link the run to its update, in the transaction that stores the run, and count the
    message in the chat's members with it (unless an earlier attempt did)."""

    def link(run: Run) -> None:
        now = timezone.now()
        fields = {"run": run, "updated_at": now}
        if update.counted_at is None:  # read under the chat's lease
            _count_member(update.chat, identity)  # type: ignore[arg-type]  # queued in its chat
            fields["counted_at"] = now
        TelegramUpdate.objects.filter(pk=update.pk).update(**fields)
        update.run = run
        update.counted_at = update.counted_at or now

    return link


async def _answer_with_agent(
    bot: Bot, update: TelegramUpdate, message: TgMessage, intake: Intake, target: ReplyTarget
) -> str | None:
    run = None if update.run_id is None else await db_call(lambda: update.run)()
    if run is None:
        media, note = await _media(bot, message)
        text = " ".join(part for part in (intake.plan.text, note) if part)  # type: ignore[union-attr]
        if not text and not media:
            return None
        author = _author(message)
        partition, key = conversation_of(
            message, user_key=author.isolation_key, scope=intake.listening.conversation_scope
        )
        request = ChannelRequest(
            channel=CHANNEL,
            identity=author,
            input=[Message("user", [*([Content.from_text(text)] if text else []), *media])],
            conversation_key=key,
            partition_key=partition,
            attributes={
                "chat_id": message.chat.id,
                "message_id": message.message_id,
                "update_id": update.update_id,
            },
        )
        started = await turns.start_stored_turn(request, link=_link_run(update, intake.identity))
    elif run.is_terminal:
        return _reply_text(run)
    else:  # an earlier attempt's worker died mid-run: run it again, counting that attempt
        if not await db_call(update.record_interruption)():
            await db_call(services.fail_lost_run)(run=run)  # died too often: visibly failed
            return FAILED_ANSWER
        resumed = await execution.wait_for_turn(functools.partial(services.resume_run, run=run))
        if resumed is None:
            raise TurnInterrupted(f"run {run.public_id} is still held by another worker")
        started = resumed
    async with _typing(bot, target):
        run = await execution.run_blocking(started)
    return _reply_text(run)


async def _command_reply(
    command: Command, message: TgMessage, identity: Identity, listening: Listening, bot: Bot
) -> str:
    user = _sender(message)
    if command.name == "start" and command.args == "link":  # t.me/<bot>?start=link
        return await _link_reply(message, identity, bot)
    if command.name == "start":
        return f"Hello {user.first_name}! {HELP}"
    if command.name == "help":
        return HELP
    if command.name == "new":
        partition, key = conversation_of(
            message, user_key=identity.isolation_key, scope=listening.conversation_scope
        )
        await db_call(services.reset_conversation)(
            channel=CHANNEL, isolation_key=partition, key=key
        )
        return "Started a new conversation. What shall we talk about?"
    if command.name == "whoami":
        return await db_call(_whoami)(message, identity)
    if command.name == "link":
        return await _link_reply(message, identity, bot)
    if command.name == "unlink":
        if not linking.linking_enabled():
            return LINKING_OFF
        grant = await db_call(linking.unlink)(identity=identity, by="the person, with /unlink")
        if grant is None:
            return "Your Telegram account is not linked."
        return (
            f"Unlinked: you are no longer known here as {grant.upn or 'your organisation account'}."
        )
    return f"I don't know /{command.name}. /help lists what I can do."


async def _link_reply(message: TgMessage, identity: Identity, bot: Bot) -> str:
    """A one-time link in a private chat; in a group, a pointer to the private chat (a bot
    cannot write to someone first, and a link posted in a group could be opened by anyone)."""
    if not linking.linking_enabled():
        return LINKING_OFF
    if message.chat.type != "private":
        return LINK_IN_PRIVATE.format(url=f"https://t.me/{bot.username}?start=link")
    url = await db_call(linking.begin_link)(identity=identity, notify={"chat_id": message.chat.id})
    minutes = settings.LINK_CHALLENGE_MINUTES
    return (
        f"[Link your organisation account]({url}): sign in with Microsoft there. "
        f"The link works once, in one browser, for {minutes} minutes."
    )


def _whoami(message: TgMessage, identity: Identity) -> str:
    """Who the bot takes the person for; the link's details only in a private chat."""
    user = _sender(message)
    handle = f" (@{user.username})" if user.username else ""
    lines = [f"You are {user.full_name}{handle}, Telegram user {user.id}."]
    if not linking.linking_enabled():
        return "\n".join([*lines, LINKING_OFF])
    person = linking.person_of(identity)
    if person.grant is None:
        return "\n".join([*lines, "Your organisation account is not linked: /link links it."])
    if message.chat.type != "private":
        return "\n".join([*lines, "Your organisation account is linked; ask me /whoami privately."])
    claims = person.grant.claims
    lines.append(f"Linked as {person.grant.upn or person.grant.object_id} ({person.grant.name}).")
    lines.append(f"Tenant: {claims.get('tid', '')}")
    for name, label in (("groups", "Groups"), ("roles", "Roles")):
        if claims.get(name):
            lines.append(f"{label}: {', '.join(claims[name])}")
    others = [str(each) for each in person.identities if each.pk != identity.pk]
    if others:
        lines.append(f"Also you: {', '.join(others)}")
    return "\n".join(lines)


def _refusal(outcome: linking.LinkRequired | linking.Denied, message: TgMessage) -> str:
    """What a refused person is told: bland, with no reason (that is for operators)."""
    if isinstance(outcome, linking.LinkRequired):
        where = "here" if message.chat.type == "private" else "in a private chat with me"
        return f"{outcome.message} Send /link {where}."
    return outcome.message


def _seconds(value: int | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


async def _send_part(
    bot: Bot, target: ReplyTarget, part: OutgoingText, *, first: bool, previews: bool = True
) -> None:
    """Send one message, retrying transient failures; 429 waits as long as Telegram asks.

    Without `previews` Telegram fetches no link in it (a one-time link would be used up).
    """
    reply = (
        ReplyParameters(target.reply_to, allow_sending_without_reply=True)
        if first and target.reply_to
        else None
    )
    parse_mode: ParseMode | None
    text, parse_mode = part.html, ParseMode.HTML
    for attempt in range(SEND_ATTEMPTS):
        try:
            await bot.send_message(
                target.chat_id,
                text,
                parse_mode=parse_mode,
                message_thread_id=target.thread_id,
                reply_parameters=reply,
                link_preview_options=None if previews else NO_PREVIEW,
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


async def _send_reply(
    bot: Bot, update: TelegramUpdate, target: ReplyTarget, text: str, *, previews: bool = True
) -> None:
    """Send the reply's parts, skipping those an earlier attempt already delivered.

    Each part sent is recorded before the next goes out; the last is recorded with the update's
    end (TelegramUpdate.finish), in the same write.
    """
    parts = render_reply(text)
    for index, part in enumerate(parts):
        if index < update.sent_parts:
            continue
        try:
            await _send_part(bot, target, part, first=index == 0, previews=previews)
        except ChatMigrated as exc:
            # The group became a supergroup (a chat of its own, whose message ids differ from
            # the group's): the answer goes there, this part and the rest.
            logger.info("chat %s moved to %s: answering there", target.chat_id, exc.new_chat_id)
            target = ReplyTarget(exc.new_chat_id, None, None)
            await _send_part(bot, target, part, first=False, previews=previews)
        update.sent_parts = index + 1
        if update.sent_parts < len(parts):
            await db_call(TelegramUpdate.objects.filter(pk=update.pk).update)(
                sent_parts=update.sent_parts, updated_at=timezone.now()
            )


async def handle_update(bot: Bot, update: TelegramUpdate) -> tuple[str, str]:
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
    intake = await db_call(_take_in)(bot, update, message)
    if intake is None:
        return TelegramUpdate.Status.IGNORED, "not addressed to the bot"
    plan, identity, outcome = intake.plan, intake.identity, intake.outcome
    thread_id = message.message_thread_id if message.is_topic_message else None
    target = ReplyTarget(
        message.chat.id, thread_id, None if message.chat.type == "private" else message.message_id
    )
    note, text = "", None
    if isinstance(plan, Command):
        text = await _command_reply(plan, message, identity, intake.listening, bot)
    elif not isinstance(outcome, linking.Allowed):
        text, note = _refusal(outcome, message), f"refused: {outcome.reason}"  # type: ignore[arg-type,union-attr]
    else:
        text = await _answer_with_agent(bot, update, message, intake, target)
        if text is None:
            return TelegramUpdate.Status.IGNORED, "no text or media to answer"
    try:
        await _send_reply(bot, update, target, text, previews=not isinstance(plan, Command))
    except BotBlocked as exc:
        await db_call(update.chat.mark_blocked)(exc.args[0])  # type: ignore[union-attr]
        if message.chat.type == "private":
            await db_call(identity.mark_unreachable)(exc.args[0])
        return TelegramUpdate.Status.FAILED, f"Telegram refused delivery: {exc.args[0]}"
    except PermanentSendError as exc:
        return TelegramUpdate.Status.FAILED, f"Telegram rejected the reply: {exc.args[0]}"
    # The answer's run, as _answer_with_agent left it (no query); failed, the person got an apology.
    run = update.run if TelegramUpdate.run.is_cached(update) else None
    if run is not None and run.status == Run.Status.FAILED:
        error = run.error_detail or (run.error or {}).get("message", "")
        return TelegramUpdate.Status.FAILED, f"the agent's run failed: {error}"
    return TelegramUpdate.Status.PROCESSED, note


async def confirm_link(challenge_pk: int) -> None:
    """Tell the chat that asked for a link that the person is now linked, and as whom."""
    challenge = await db_call(
        LinkChallenge.objects.select_related("grant").filter(pk=challenge_pk).first
    )()
    if challenge is None or challenge.grant is None:
        return
    name = challenge.grant.upn or challenge.grant.name or "your organisation account"
    text = f"Linked: I know you now as {name}. /whoami shows what counts; /unlink removes it."
    target = ReplyTarget(challenge.notify["chat_id"], challenge.notify.get("thread_id"), None)
    async with job_bot() as bot:
        for part in render_reply(text):
            await _send_part(bot, target, part, first=False)


def _take_next_update(chat_pk: int) -> tuple[str, TelegramUpdate] | None:
    """Lease the chat if its oldest pending update is due: the lease and that update, read with
    its chat; or None. (As take_lease, but in SQL: the ORM took ~1 ms of Python to build this
    UPDATE, and as long again to order the chat's pending updates in a second query.)"""
    pending = TelegramUpdate.Status.PENDING
    at = connection.ops.adapt_datetimefield_value
    while True:
        now = timezone.now()
        owner = secrets.token_hex(8)
        params = [owner, at(now + lease_duration()), at(now), chat_pk, at(now), pending, at(now)]
        with connection.cursor() as cursor:
            cursor.execute(_TAKE_CHAT_SQL, [*params, pending])
            taken = cursor.fetchone()
        if taken is None:
            return None
        keeper.hold(TelegramChat, chat_pk, owner)
        try:
            update = unique_or_none(
                TelegramUpdate.objects.select_related("chat").filter(pk=taken[0], status=pending)
            )
        except BaseException:
            give_back(TelegramChat, chat_pk, owner)
            raise
        if update is not None:
            return owner, update
        # Answered meanwhile by a worker whose lease had run out: on PostgreSQL, an UPDATE that
        # waited for that worker's give-back re-checks the chat's row but reads its updates as
        # they were when it began. Look again, as of now.
        give_back(TelegramChat, chat_pk, owner)


def _take_chat_sql() -> str:
    chats = connection.ops.quote_name(TelegramChat._meta.db_table)
    updates = connection.ops.quote_name(TelegramUpdate._meta.db_table)
    return f"""
        UPDATE {chats} SET lease_owner = %s, lease_expires_at = %s, updated_at = %s
        WHERE id = %s AND (lease_expires_at IS NULL OR lease_expires_at < %s)
            AND (
                SELECT next_attempt_at FROM {updates}
                WHERE chat_id = {chats}.id AND status = %s ORDER BY update_id LIMIT 1
            ) <= %s
        RETURNING (
            SELECT id FROM {updates}
            WHERE chat_id = {chats}.id AND status = %s ORDER BY update_id LIMIT 1
        )
    """  # noqa: S608 (names from the models, values as parameters)


_TAKE_CHAT_SQL = _take_chat_sql()


def _end_attempt(
    chat_pk: int, lease: str, update: TelegramUpdate, outcome: tuple[str, str] | str
) -> None:
    """Store the attempt's end, the update's status and note (a tuple) or a failed attempt's
    error (a string), and give the chat back."""
    try:
        if isinstance(outcome, str):
            update.record_failure(outcome)
        else:
            status, note = outcome
            update.finish(status=status, error=note, sent_parts=update.sent_parts)
    finally:
        give_back(TelegramChat, chat_pk, lease)


async def answer_chat(chat_pk: int) -> None:
    """A worker's job for a chat: answer its pending updates oldest first, unless another worker
    holds the chat (that one answers them); stop at one that must wait for a retry.

    The chat is leased for one update at a time, and only while its oldest pending update is
    due: an update that arrived while it was held had its job turned away, so it is answered
    in the next round. A failed attempt (Telegram unreachable, even for the bot's own getMe)
    counts against the update it was for, which then waits for its retry.
    """
    # Every update queues its chat; the first job answers them all, so most find nothing due.
    async with job_bot() as bot:
        while taken := await db_call(_take_next_update)(chat_pk):
            lease, update = taken
            outcome: tuple[str, str] | str
            try:
                await bot.initialize()  # getMe, the first time
                outcome = await handle_update(bot, update)
            except Exception as exc:
                logger.exception(
                    "telegram update %s failed (attempt %d)", update.update_id, update.attempts + 1
                )
                outcome = f"{type(exc).__name__}: {exc}"
            except BaseException:  # cancelled (the worker stopping): it stays pending
                await db_call(give_back)(TelegramChat, chat_pk, lease)
                raise
            await db_call(_end_attempt)(chat_pk, lease, update, outcome)
            if isinstance(outcome, tuple) and outcome[1]:
                logger.info("telegram update %s %s: %s", update.update_id, *outcome)
