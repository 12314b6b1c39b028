"""The run and conversation pages of the admin, as an operator reads them."""

from datetime import timedelta

import pytest
from agent_framework import Content, Message
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from afhost.admin import LargeTablePaginator
from afhost.models import Conversation, Run, RunCheckpoint
from afhost.services import create_api_key
from afhost.workflows import encode_checkpoint
from linking.models import Identity
from tests.workflows import paused_greeting


@pytest.fixture
def run_factory(db):
    def make(**fields):
        fields.setdefault("channel", "responses")
        fields.setdefault("isolation_key", "api:key.test")
        fields.setdefault("status", Run.Status.COMPLETED)
        return Run.objects.create(**fields)

    return make


def _messages(*messages: Message) -> list[dict]:
    return [message.to_dict() for message in messages]


def _results(page) -> list[Run]:
    return list(page.context["cl"].result_list)


@pytest.mark.parametrize("spelling", ["resp_{hex}", "RESP_{hex}", " resp_{hex} ", "{uuid}"])
def test_a_run_is_found_by_the_id_clients_see(admin_client, run_factory, spelling):
    # given
    run, other = run_factory(), run_factory()
    term = spelling.format(hex=run.public_id.hex, uuid=run.public_id)

    # when
    page = admin_client.get(reverse("admin:afhost_run_changelist"), {"q": term})

    # then
    assert page.status_code == 200
    assert _results(page) == [run]
    assert other not in _results(page)


def test_a_search_that_is_no_run_id_searches_isolation_keys(admin_client, run_factory):
    # given
    run = run_factory(isolation_key="telegram:4242")
    run_factory(isolation_key="telegram:77")

    # when
    page = admin_client.get(reverse("admin:afhost_run_changelist"), {"q": "4242"})

    # then
    assert _results(page) == [run]


def test_the_run_list_names_runs_keys_and_callers_readably(admin_client, run_factory):
    # given: a trusted key's user, the key itself, and a Telegram user
    api_key, _ = create_api_key(name="ops <backend>", is_trusted=True)
    key_partition = f"key.{api_key.public_id}"
    started = timezone.now() - timedelta(seconds=3)
    by_user = run_factory(
        isolation_key=f"api:{key_partition}:user.bob",
        attributes={"api_key": str(api_key.public_id)},
        model="gpt-test",
        started_at=started,
        completed_at=started + timedelta(seconds=2.5),
    )
    by_key = run_factory(
        isolation_key=f"api:{key_partition}", attributes={"api_key": str(api_key.public_id)}
    )
    Identity.objects.create(
        channel="telegram", native_id="42", username="ada", isolation_key="telegram:42"
    )
    by_person = run_factory(
        channel="telegram",
        isolation_key="telegram:42",
        status=Run.Status.FAILED,
        error={"code": "server_error", "message": "The agent failed."},
        error_detail="RuntimeError: <boom>",
    )
    by_group = run_factory(channel="telegram", isolation_key="telegram-chat:-100123")

    # when
    page = admin_client.get(reverse("admin:afhost_run_changelist"))

    # then
    assert page.status_code == 200
    content = page.content.decode()
    for run in (by_user, by_key, by_person, by_group):
        assert f"resp_{run.public_id.hex}" in content
        assert str(run.public_id) not in content
    assert key_partition not in content
    assert "ops &lt;backend&gt;" in content
    assert "bob (key ops &lt;backend&gt;)" in content
    assert "API key ops &lt;backend&gt;" in content
    assert "telegram:@ada" in content
    assert "everyone in telegram chat -100123" in content
    assert "RuntimeError: &lt;boom&gt;" in content
    assert "gpt-test" in content
    assert "2.5 s" in content
    assert timezone.localtime(by_user.created_at).strftime("%Y-%m-%d %H:%M:%S") in content


def test_the_run_list_reads_the_same_queries_for_one_run_or_many(
    admin_client, run_factory, django_assert_max_num_queries
):
    # given
    api_key, _ = create_api_key(name="backend")
    conversation = Conversation.objects.create(channel="responses", isolation_key="k", key="c")

    def add_run(number: int) -> None:
        run_factory(
            isolation_key=f"telegram:{number}",
            attributes={"api_key": str(api_key.public_id)},
            conversation=conversation,
        )
        Identity.objects.create(
            channel="telegram", native_id=str(number), isolation_key=f"telegram:{number}"
        )

    add_run(1)
    url = reverse("admin:afhost_run_changelist")
    with CaptureQueriesContext(connection) as one:
        assert admin_client.get(url).status_code == 200

    # when
    for number in range(2, 12):
        add_run(number)

    # then
    with django_assert_max_num_queries(len(one.captured_queries)):
        page = admin_client.get(url)
    assert len(_results(page)) == 11


def test_the_run_page_shows_messages_as_text(admin_client, run_factory):
    # given: stored agent_framework messages, with an image, a tool call and its result
    run = run_factory(
        input_messages=_messages(
            Message(
                "user",
                [
                    Content.from_text("What is the weather in <Oslo>?"),
                    Content.from_data(b"\x89PNG" * 500, "image/png"),
                ],
            )
        ),
        output_messages=_messages(
            Message(
                "assistant",
                [Content.from_function_call("call_1", "get_weather", arguments='{"city": "Oslo"}')],
            ),
            Message("tool", [Content.from_function_result("call_1", result="sunny, 21 C")]),
            Message("assistant", [Content.from_text("It is sunny in Oslo.")]),
        ),
        output_items=[
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "It is sunny in Oslo."}],
            }
        ],
    )

    # when
    page = admin_client.get(reverse("admin:afhost_run_change", args=[run.pk]))

    # then
    assert page.status_code == 200
    content = page.content.decode()
    assert "What is the weather in &lt;Oslo&gt;?" in content
    assert "[image: image/png, 2 KB]" in content
    assert "get_weather({&quot;city&quot;: &quot;Oslo&quot;})" in content
    assert "sunny, 21 C" in content
    assert "It is sunny in Oslo." in content
    assert "additional_properties" not in content
    assert "iVBOR" not in content  # the image's base64 data
    assert f"resp_{run.public_id.hex}" in content


def test_the_run_page_shows_a_workflows_frames_as_text(admin_client, run_factory):
    # given: an Invocations run of a workflow, which keeps its frames as output items
    run = run_factory(
        channel="invocations",
        output_items=[
            {"type": "output", "data": "2 words", "executor_id": "report"},
            {
                "type": "request_info",
                "data": {"prompt": "Your name?"},
                "request_id": "r1",
                "source_executor_id": "greeter",
            },
        ],
    )

    # when
    content = admin_client.get(reverse("admin:afhost_run_change", args=[run.pk])).content.decode()

    # then
    assert "output · report" in content
    assert "2 words" in content
    assert "asks the person · greeter" in content
    assert "{&quot;prompt&quot;: &quot;Your name?&quot;}" in content
    assert "[output]" not in content


def test_the_run_page_shows_a_workflow_waiting_for_the_person(admin_client, run_factory):
    # given: a workflow run that ended asking a question
    run = run_factory()
    checkpoint = paused_greeting()
    RunCheckpoint.objects.create(
        run=run,
        checkpoint_id=checkpoint.checkpoint_id,
        workflow_name="greeting",
        state=encode_checkpoint(checkpoint),
        outputs=[{"type": "request_info", "data": {"prompt": "What is your name?"}}],
    )

    # when
    content = admin_client.get(reverse("admin:afhost_run_change", args=[run.pk])).content.decode()

    # then
    assert "Workflow checkpoint" in content
    assert checkpoint.checkpoint_id in content
    assert "yes (1 question(s))" in content


def test_the_conversation_page_is_a_transcript_in_order(admin_client, run_factory):
    # given
    conversation = Conversation.objects.create(
        channel="telegram", isolation_key="telegram:42", key="user"
    )
    start = timezone.now() - timedelta(minutes=5)
    turns = [
        ("first question", "first answer", Run.Status.COMPLETED),
        ("second <question>", "", Run.Status.FAILED),
        ("third question", "third answer", Run.Status.COMPLETED),
    ]
    runs = []
    for minute, (asked, answered, status) in enumerate(turns):
        runs.append(
            run_factory(
                channel="telegram",
                isolation_key="telegram:42",
                conversation=conversation,
                status=status,
                created_at=start + timedelta(minutes=minute),
                input_messages=_messages(Message("user", [Content.from_text(asked)])),
                output_messages=_messages(Message("assistant", [Content.from_text(answered)]))
                if answered
                else [],
                error={"code": "server_error", "message": "The agent failed."}
                if status == Run.Status.FAILED
                else None,
            )
        )
    conversation.head_run = runs[-1]
    conversation.save()

    # when
    page = admin_client.get(reverse("admin:afhost_conversation_change", args=[conversation.pk]))

    # then
    assert page.status_code == 200
    content = page.content.decode()
    order = [
        f"resp_{runs[0].public_id.hex}",
        "first question",
        "first answer",
        f"resp_{runs[1].public_id.hex}",
        "second &lt;question&gt;",
        "The agent failed.",
        f"resp_{runs[2].public_id.hex}",
        "third question",
        "third answer",
    ]
    positions = [content.index(text, content.index("Transcript")) for text in order]
    assert positions == sorted(positions)
    assert "Failed" in content
    assert 'name="_save"' not in content


def test_the_conversation_list_shows_who_and_the_last_response(admin_client, run_factory):
    # given
    Identity.objects.create(
        channel="telegram", native_id="42", username="ada", isolation_key="telegram:42"
    )
    conversation = Conversation.objects.create(
        channel="telegram", isolation_key="telegram:42", key="user"
    )
    conversation.head_run = run_factory(channel="telegram", conversation=conversation)
    conversation.save()

    # when
    page = admin_client.get(reverse("admin:afhost_conversation_changelist"))

    # then
    assert page.status_code == 200
    assert b"telegram:@ada" in page.content
    assert f"resp_{conversation.head_run.public_id.hex}".encode() in page.content
    assert b"telegram:42" not in page.content


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's row estimate")
def test_a_large_unfiltered_list_is_counted_from_the_table_estimate(run_factory, monkeypatch):
    # given: the estimate says three rows, though one is gone since
    runs = [run_factory() for _ in range(3)]
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE afhost_run")
    runs[0].delete()
    monkeypatch.setattr(LargeTablePaginator, "EXACT_BELOW", 1)

    # when
    unfiltered = LargeTablePaginator(Run.objects.order_by("pk"), 100).count
    filtered = LargeTablePaginator(Run.objects.filter(status="completed").order_by("pk"), 100)

    # then
    assert unfiltered == 3
    assert filtered.count == 2
