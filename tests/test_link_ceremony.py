"""The link ceremony's web half, against the fake Entra ID over real HTTP.

A Django test client is the browser: it opens the link the bot sent, starts signing in, and
follows Microsoft's answer back to /oauth/complete/; `requests` plays the person at the fake's
sign-in form, and social-auth exchanges the code with the fake over loopback.
"""

from __future__ import annotations

import time
from datetime import timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from social_django.models import UserSocialAuth

from linking import services
from linking.models import Identity, LinkChallenge, LinkGrant
from linking.signals import identity_linked
from tests.fakes.oidc import new_key

COMPLETE = "/oauth/complete/azuread-v2-tenant-oauth2/"
OTHER_TENANT = "99999999-8888-7777-6666-555555555555"


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def open_link(browser: Client, url: str) -> None:
    """Open the link the bot sent, as a person does; it leaves the address bar for /link/."""
    opened = browser.get(_path(url))
    assert (opened.status_code, opened["Location"]) == (302, "/link/")


def answer(authorize_url: str, *, login: str) -> str:
    """Sign in as `login` at the fake's form; Microsoft's answer (the callback's path and query)."""
    authorize = urlsplit(authorize_url)
    signed_in = requests.post(
        f"{authorize.scheme}://{authorize.netloc}{authorize.path}",
        data={**dict(parse_qsl(authorize.query)), "login": login},
        allow_redirects=False,
        timeout=10,
    )
    assert signed_in.status_code == 302
    callback = urlsplit(signed_in.headers["Location"])
    assert (callback.netloc, callback.path) == ("testserver", COMPLETE)
    return _path(signed_in.headers["Location"])


def sign_in(browser: Client, entra, *, login: str = "alice", form: dict | None = None) -> str:
    """Start signing in from /link/ and sign in at the fake; Microsoft's answer."""
    started = browser.post("/link/start/", form or {})
    assert started.status_code == 302
    assert started["Location"].startswith(f"{entra.url}/{entra.tenant}/oauth2/v2.0/authorize?")
    return answer(started["Location"], login=login)


def link(browser: Client, entra, url: str, **options):
    """The whole ceremony; the callback's response."""
    open_link(browser, url)
    return browser.get(sign_in(browser, entra, **options))


def failure_of(browser: Client, response) -> str:
    """The failure page a failed callback redirected to."""
    assert (response.status_code, response["Location"]) == (302, "/link/failed/")
    page = browser.get("/link/failed/")
    assert page.status_code == 400
    return page.content.decode()


@pytest.fixture
def browser() -> Client:
    return Client()


@pytest.fixture
def identity(db) -> Identity:
    return Identity.objects.create(
        channel="telegram",
        native_id="42",
        display_name="Alice Tester",
        username="alice",
        isolation_key="telegram:42",
    )


@pytest.fixture
def link_url(identity) -> str:
    return services.begin_link(identity=identity, notify={"chat_id": 42})


@pytest.fixture
def linked(entra, identity) -> LinkGrant:
    """The identity, linked to alice already."""
    response = link(Client(), entra, services.begin_link(identity=identity, notify={}))
    assert response["Location"] == "/link/done/"
    return LinkGrant.objects.get()


def test_it_links_the_identity_to_the_principal_who_signs_in(
    entra, identity, link_url, browser, django_capture_on_commit_callbacks
):
    # given
    entra.people["alice"] = {"groups": ["g-staff"], "roles": ["Reader"]}
    sent = []

    def receiver(sender, *, grant, challenge, **kwargs):
        sent.append((grant.pk, challenge.pk))

    identity_linked.connect(receiver)

    # when
    try:
        with django_capture_on_commit_callbacks(execute=True):
            response = link(browser, entra, link_url)
    finally:
        identity_linked.disconnect(receiver)

    # then
    assert (response.status_code, response["Location"]) == (302, "/link/done/")
    grant = LinkGrant.objects.active().get()
    assert (grant.identity, grant.source) == (identity, LinkGrant.Source.CEREMONY)
    assert (grant.tenant_id, grant.object_id) == (entra.tenant, entra.oid("alice"))
    assert (grant.upn, grant.name) == ("alice@contoso.example", "Alice Tester")
    assert grant.claims == {
        "tid": entra.tenant,
        "oid": entra.oid("alice"),
        "upn": "alice@contoso.example",
        "email": "alice@contoso.example",
        "groups": ["g-staff"],
        "roles": ["Reader"],
    }
    challenge = LinkChallenge.objects.get()
    assert (challenge.grant, challenge.failure) == (grant, "")
    assert challenge.redeemed_at is not None
    assert sent == [(grant.pk, challenge.pk)]
    done = browser.get("/link/done/")
    assert done.status_code == 200
    assert "Linked as alice@contoso.example." in done.content.decode()
    assert "Go back to Telegram; the bot confirms there." in done.content.decode()


def test_the_page_says_who_asks_and_what_is_stored(entra, link_url, browser):
    # given
    open_link(browser, link_url)

    # when
    page = browser.get("/link/")

    # then
    assert page.status_code == 200
    html = " ".join(page.content.decode().split())
    assert "Telegram user <strong>Alice Tester</strong> (@alice, id 42) asked to link" in html
    assert "tenant id" in html
    assert "object id" in html
    assert "sign-in name and email address" in html
    assert "groups and app roles" in html
    assert "for 9 minutes more" in html or "for 10 minutes more" in html
    assert '<form method="post" action="/link/start/" id="link-form">' in html
    assert 'name="csrfmiddlewaretoken"' in html
    assert ">Sign in with Microsoft</button>" in html
    assert 'id="relink"' not in html
    assert page["Cache-Control"].startswith("max-age=0")


def test_signing_in_starts_only_from_a_post_with_a_csrf_token(entra, link_url):
    # given
    browser = Client(enforce_csrf_checks=True)
    open_link(browser, link_url)

    # when
    got = browser.get("/link/start/")
    posted = browser.post("/link/start/")

    # then
    assert (got.status_code, posted.status_code) == (405, 403)


def test_a_link_works_once(entra, link_url, browser):
    # given
    link(browser, entra, link_url)

    # when
    again = browser.get(_path(link_url))
    elsewhere = Client().get(_path(link_url))

    # then
    for page in (again, elsewhere):
        assert page.status_code == 410
        assert "This link has expired, was already used" in page.content.decode()
    assert LinkGrant.objects.count() == 1


def test_an_expired_link_is_refused(entra, link_url, browser, time_machine):
    # given
    time_machine.move_to(timezone.now() + timedelta(minutes=11))

    # when
    opened = browser.get(_path(link_url))

    # then
    assert opened.status_code == 410
    assert "This link has expired" in opened.content.decode()
    assert LinkChallenge.objects.get().session_hash == ""


def test_a_link_that_expires_while_signing_in_links_nothing(entra, link_url, browser):
    # given
    open_link(browser, link_url)
    callback = sign_in(browser, entra)
    LinkChallenge.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    # when
    response = browser.get(callback)

    # then
    assert response.status_code == 403
    assert "This link has expired or was already used." in response.content.decode()
    assert LinkGrant.objects.exists() is False


def test_a_link_opened_in_another_browser_is_refused_there(entra, link_url, browser):
    # given
    open_link(browser, link_url)
    other = Client()

    # when
    opened = other.get(_path(link_url))
    page = other.get("/link/")
    started = other.post("/link/start/")

    # then
    assert opened.status_code == 410
    assert "opened in another browser" in opened.content.decode()
    assert (page.status_code, started.status_code) == (410, 410)
    response = browser.get(sign_in(browser, entra))
    assert response["Location"] == "/link/done/"
    assert LinkGrant.objects.get().object_id == entra.oid("alice")


def test_microsofts_answer_is_refused_in_another_browser(entra, link_url, browser):
    # given: someone gets a person's browser to follow their own sign-in's answer
    open_link(browser, link_url)
    callback = sign_in(browser, entra, login="mallory")
    victim = Client()
    open_link(victim, services.begin_link(identity=Identity.objects.get(), notify={}))

    # when
    response = victim.get(callback)

    # then
    assert "This sign-in was not started in this browser" in failure_of(victim, response)
    assert LinkGrant.objects.exists() is False


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        pytest.param(
            lambda fake, monkeypatch: fake.overrides.update(tid=OTHER_TENANT),
            "You signed in with an account of another organisation.",
            id="wrong tenant",
        ),
        pytest.param(
            lambda fake, monkeypatch: fake.overrides.update(aud="another-application"),
            "Microsoft&#x27;s answer was meant for another application",
            id="wrong audience",
        ),
        pytest.param(
            lambda fake, monkeypatch: fake.overrides.update(exp=int(time.time()) - 60),
            "Microsoft&#x27;s answer had expired.",
            id="expired id token",
        ),
        pytest.param(
            lambda fake, monkeypatch: monkeypatch.setattr(fake, "id_token_key", new_key()),
            "The signature on Microsoft&#x27;s answer could not be verified",
            id="bad signature",
        ),
    ],
)
@pytest.mark.parametrize("debug", [False, True], ids=["debug off", "debug on"])
def test_an_answer_that_does_not_verify_links_nothing(
    entra, link_url, browser, monkeypatch, settings, forge, reason, debug
):
    # given
    settings.DEBUG = debug
    forge(entra, monkeypatch)
    open_link(browser, link_url)

    # when
    response = browser.get(sign_in(browser, entra))

    # then
    page = failure_of(browser, response)
    assert reason in page
    assert 'id="retry" href="/link/"' in page
    assert LinkGrant.objects.exists() is False
    assert LinkChallenge.objects.get().redeemed_at is None


def test_a_replayed_answer_fails(entra, link_url, browser):
    # given
    open_link(browser, link_url)
    callback = sign_in(browser, entra)
    assert browser.get(callback)["Location"] == "/link/done/"

    # when
    replayed = browser.get(callback)

    # then
    assert "or it was already completed" in failure_of(browser, replayed)
    assert LinkGrant.objects.count() == 1


def test_cancelling_at_microsoft_links_nothing(entra, link_url, browser):
    # given
    open_link(browser, link_url)
    state = dict(parse_qsl(urlsplit(browser.post("/link/start/")["Location"]).query))["state"]

    # when
    response = browser.get(COMPLETE, {"error": "access_denied", "state": state})

    # then
    assert "Signing in was cancelled." in failure_of(browser, response)
    assert LinkGrant.objects.exists() is False


def test_signing_in_without_a_link_links_nothing(entra, identity, browser):
    # given: social-auth's own begin, without opening a link first
    started = browser.post("/oauth/login/azuread-v2-tenant-oauth2/")
    callback = answer(started["Location"], login="alice")

    # when
    response = browser.get(callback)

    # then
    assert response.status_code == 400
    assert "No link is in progress in this browser." in response.content.decode()
    assert LinkGrant.objects.exists() is False


def test_another_account_for_a_linked_identity_is_refused(entra, identity, linked, browser):
    # given
    url = services.begin_link(identity=identity, notify={})
    open_link(browser, url)
    page = " ".join(browser.get("/link/").content.decode().split())
    assert "currently linked as <strong>alice@contoso.example</strong>" in page
    assert '<input type="checkbox" name="relink" id="relink"> Replace that link' in page

    # when
    response = browser.get(sign_in(browser, entra, login="bob"))

    # then
    assert response.status_code == 403
    assert "This account is already linked to alice@contoso.example." in response.content.decode()
    assert LinkGrant.objects.get() == linked
    assert LinkGrant.objects.get().is_active
    challenge = LinkChallenge.objects.latest("pk")
    assert challenge.failure == "already linked to another account"
    assert (challenge.redeemed_at is not None, challenge.grant) == (True, None)


def test_relinking_replaces_the_link(entra, identity, linked, browser):
    # given
    url = services.begin_link(identity=identity, notify={})
    open_link(browser, url)

    # when
    response = browser.get(sign_in(browser, entra, login="bob", form={"relink": "on"}))

    # then
    assert response["Location"] == "/link/done/"
    linked.refresh_from_db()
    assert (linked.is_active, linked.revoked_by) == (False, "the person, re-linking")
    grant = LinkGrant.objects.active().get()
    assert (grant.identity, grant.object_id) == (identity, entra.oid("bob"))
    assert LinkChallenge.objects.latest("pk").relink is True


def test_the_identity_and_the_redirects_come_from_the_challenge_only(entra, link_url, browser):
    # given
    other = Identity.objects.create(channel="telegram", native_id="666", isolation_key="t:666")
    open_link(browser, link_url)

    # when
    form = {"identity": other.pk, "native_id": "666", "next": "https://evil.example/"}
    response = browser.get(sign_in(browser, entra, form=form))

    # then
    assert response["Location"] == "/link/done/"
    assert LinkGrant.objects.get().identity.native_id == "42"
    assert other.grants.exists() is False


def test_every_value_on_the_pages_is_escaped(entra, identity, link_url, browser):
    # given
    Identity.objects.filter(pk=identity.pk).update(
        display_name="<script>alert(1)</script>", username="<b>al</b>"
    )
    entra.people["alice"] = {"preferred_username": "<i>alice</i>@contoso.example"}
    open_link(browser, link_url)

    # when
    page = browser.get("/link/").content.decode()
    browser.get(sign_in(browser, entra))
    done = browser.get("/link/done/").content.decode()

    # then
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "@&lt;b&gt;al&lt;/b&gt;" in page
    assert "<i>alice" not in done
    assert "Linked as &lt;i&gt;alice&lt;/i&gt;@contoso.example." in done


def test_no_django_user_is_created_or_changed(entra, link_url, browser, django_user_model):
    # given
    staff = django_user_model.objects.create_user(
        "operator", email="operator@example.com", first_name="Olive", is_staff=True
    )
    browser.force_login(staff)

    # when
    response = link(browser, entra, link_url)

    # then
    assert response["Location"] == "/link/done/"
    staff.refresh_from_db()
    assert (staff.first_name, staff.last_name, staff.email) == ("Olive", "", "operator@example.com")
    assert list(User.objects.all()) == [staff]
    assert UserSocialAuth.objects.exists() is False
    assert browser.session["_auth_user_id"] == str(staff.pk)


def test_a_browser_without_a_link_is_told_what_to_do(entra, browser, db):
    # when
    page = browser.get("/link/")
    done = browser.get("/link/done/")

    # then
    assert page.status_code == 410
    assert "No link is in progress in this browser." in page.content.decode()
    assert done.status_code == 404


def test_the_pages_say_when_linking_is_off(identity, link_url, browser, settings):
    # given
    settings.ENTRA_CLIENT_SECRET = ""

    # when
    pages = [browser.get(_path(link_url)), browser.get("/link/"), browser.get("/link/failed/")]

    # then
    for page in pages:
        assert page.status_code == 404
        assert "Account linking is not configured on this server." in page.content.decode()
    assert LinkChallenge.objects.get().session_hash == ""
