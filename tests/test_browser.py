"""In a real headless Chromium: a person links their Telegram account, and an operator decides
who may talk to the agent in the admin; against a live daphne server, a live worker, the fake
Telegram Bot API and the fake Entra ID.

Screenshots land in $TMPDIR/afhost-browser/ for a person to look at.
"""

import html
import mimetypes
import re
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from django.contrib.staticfiles import finders
from playwright.sync_api import expect

from linking.models import Identity, LinkGrant
from tests.conftest import entra_env
from tests.fakes.oidc import TENANT

SECRET = {"X-Telegram-Bot-Api-Secret-Token": "test-webhook-secret"}
PRIVATE = 1111111  # the person of tests/fixtures/telegram/private_text.json, in their own chat
SCREENSHOTS = Path(tempfile.gettempdir()) / "afhost-browser"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def afhost(live_db, telegram_api, entra, live_server_factory, cluster_factory) -> str:
    """A live server and a worker with linking on against the fake Entra ID; the server's URL.

    The server first: the worker builds the links the bot sends from its URL. Neither inherits
    the DJANGO_ALLOW_ASYNC_UNSAFE that the browser needs in this process.
    """
    env = {**entra_env(entra), "DJANGO_ALLOW_ASYNC_UNSAFE": ""}
    url = live_server_factory(**env)
    cluster_factory(**env, AFHOST_PUBLIC_URL=url)
    return url


def _post_update(url: str, payload: dict) -> None:
    response = httpx.post(f"{url}/telegram/webhook/", json=payload, headers=SECRET)
    assert response.status_code == 200, response.text


def _message(telegram_update, text: str) -> dict:
    payload = telegram_update("private_text", text=text)
    if text.startswith("/"):
        length = len(text.split()[0])
        payload["message"]["entities"] = [{"type": "bot_command", "offset": 0, "length": length}]
    return payload


def _wait_for_text(telegram_api, fragment: str, timeout: float = 10) -> str:
    """The first text the bot sent the private chat that contains `fragment`."""
    deadline = time.monotonic() + timeout
    while True:
        found = [text for text in telegram_api.sent_texts(PRIVATE) if fragment in text]
        if found:
            return found[0]
        assert time.monotonic() < deadline, (fragment, telegram_api.sent_texts(PRIVATE))
        time.sleep(0.05)


def _serve_static_files(page, url: str) -> None:
    """Answer the admin's /static/ requests from the static files finders: the live server,
    like production's daphne, serves none itself, and unstyled pages are no picture of what
    an operator sees."""

    def answer(route) -> None:
        found = finders.find(route.request.url.removeprefix(f"{url}/static/").split("?")[0])
        if found is None:
            route.fulfill(status=404)
        else:
            kind = mimetypes.guess_type(found)[0] or "application/octet-stream"
            route.fulfill(path=found, content_type=kind)

    page.route(f"{url}/static/**", answer)


def _screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


def test_a_person_links_their_telegram_account_by_signing_in(
    page, afhost, telegram_api, telegram_update
):
    # given: the bot's answer to /link in a private chat
    _post_update(afhost, _message(telegram_update, "/link"))
    answer = _wait_for_text(telegram_api, "Link your organisation account")
    link = html.unescape(re.search(r'href="([^"]+)"', answer).group(1))
    assert link.startswith(f"{afhost}/link/")

    # when: they open it, see who asks, and sign in with Microsoft as alice
    page.goto(link)
    expect(page).to_have_url(f"{afhost}/link/")
    expect(page.locator("#requester")).to_contain_text(
        "Telegram user Test User (@testuser, id 1111111) asked to link"
    )
    _screenshot(page, "link-page")
    page.get_by_role("button", name="Sign in with Microsoft").click()
    expect(page).to_have_title("Sign in - Fake Entra ID")
    page.fill("input[name=login]", "alice")
    page.get_by_role("button", name="Sign in", exact=True).click()

    # then: linked, in the browser and in the chat
    expect(page).to_have_url(f"{afhost}/link/done/")
    expect(page.locator("#linked-as")).to_have_text("Linked as alice@contoso.example.")
    _screenshot(page, "link-done")
    _wait_for_text(telegram_api, "Linked: I know you now as alice@contoso.example.")
    grant = LinkGrant.objects.get(identity__channel="telegram", identity__native_id=str(PRIVATE))
    assert (grant.upn, grant.tenant_id, grant.source, grant.revoked_at) == (
        "alice@contoso.example",
        TENANT,
        LinkGrant.Source.CEREMONY,
        None,
    )


def test_an_operator_restricts_telegram_and_revokes_a_link_in_the_admin(
    page, afhost, telegram_api, telegram_update, django_user_model
):
    # given: an operator, and a Telegram user linked as a member of g-staff
    django_user_model.objects.create_superuser("operator", "ops@example.com", PASSWORD)
    identity = Identity.objects.create(
        channel="telegram",
        native_id=str(PRIVATE),
        display_name="Test User",
        username="testuser",
        isolation_key=f"telegram:{PRIVATE}",
    )
    LinkGrant.objects.create(
        identity=identity,
        tenant_id=TENANT,
        object_id="oid-alice",
        upn="alice@contoso.example",
        claims={"tid": TENANT, "oid": "oid-alice", "groups": ["g-staff"]},
        source=LinkGrant.Source.CEREMONY,
    )
    _serve_static_files(page, afhost)
    page.goto(f"{afhost}/admin/login/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{afhost}/admin/")

    # when: Telegram is opened to the members of g-staff only
    page.goto(f"{afhost}/admin/linking/allowlist/add/")
    page.fill("#id_name", "staff")
    page.select_option("#id_entries-0-kind", "claim")
    page.select_option("#id_entries-0-claim", "groups")
    page.fill("#id_entries-0-value", "g-staff")
    page.click("input[name=_save]")
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    page.goto(f"{afhost}/admin/linking/channelpolicy/add/")
    page.select_option("#id_channel", "telegram")
    page.select_option("#id_allowlist", label="staff")
    page.click("input[name=_save]")
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")

    # then: the linked member is answered by the agent
    _post_update(afhost, _message(telegram_update, "before the revocation"))
    _wait_for_text(telegram_api, 'You said: "before the revocation".')

    # when: the operator revokes their link
    page.goto(f"{afhost}/admin/linking/identity/")
    page.check(f"input[name=_selected_action][value='{identity.pk}']")
    page.select_option("select[name=action]", "revoke_links")
    page.click("button[name=index]")
    expect(page.locator(".messagelist")).to_contain_text("Links revoked: 1.")
    _screenshot(page, "identities")

    # then: they must link again, and the change history says who revoked what
    _post_update(afhost, _message(telegram_update, "after the revocation"))
    _wait_for_text(
        telegram_api, "Please link your organisation account to continue. Send /link here."
    )
    assert not any("after the revocation" in text for text in telegram_api.sent_texts(PRIVATE))
    page.goto(f"{afhost}/admin/admin/logentry/")
    expect(page.locator("#result_list")).to_contain_text("Revoked link to alice@contoso.example")
    _screenshot(page, "change-history")
    assert LinkGrant.objects.get().revoked_by == "operator operator"
