"""The worker engine and the leases it keeps, in process."""

import asyncio
import gc
import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from afhost.engine import Engine
from afhost.leases import LeaseKeeper, give_back, keeper, take_lease
from afhost.models import Conversation


@pytest.fixture
def engine():
    engine = Engine(concurrency=3, sweepers=[])
    engine.start()
    yield engine
    engine.stop()


@pytest.fixture
def lease_keeper():
    """A keeper of its own. Its thread renews what it holds every third of a lease, so it lets
    go after the test: renewing in later tests, it failed there (no database) and said so."""
    lease_keeper = LeaseKeeper()
    yield lease_keeper
    for (model, pk), owner in lease_keeper.held().items():
        lease_keeper.forget(model, pk, owner)


def test_jobs_run_at_once_up_to_the_engine_concurrency(engine):
    # given: jobs that wait, as a turn waits on its model
    release = threading.Event()
    running = []

    async def job():
        running.append(1)
        await asyncio.to_thread(release.wait)

    # when
    admitted = [engine.submit(job, name=f"job {i}", wait=1) for i in range(3)]
    deadline = time.monotonic() + 5
    while len(running) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)

    # then: all three wait together, and a fourth finds no slot until they end
    assert admitted == [True, True, True]
    assert engine.submit(job, name="one too many", wait=0.05) is False
    release.set()
    assert engine.submit(job, name="after", wait=5) is True


def test_a_failing_job_frees_its_slot(engine):
    # given: more failing jobs than the engine has slots
    async def fail():
        raise RuntimeError("boom")

    # when / then: each is admitted once an earlier one has failed
    for _ in range(5):
        assert engine.submit(fail, name="failing", wait=5) is True


@pytest.mark.django_db(transaction=True)  # leases are taken and renewed by other connections
def test_a_lease_is_exclusive_until_given_back():
    # given
    conversation = Conversation.objects.create(channel="c", isolation_key="k", key="1")

    # when
    first = take_lease(Conversation, conversation.pk)
    second = take_lease(Conversation, conversation.pk)

    # then
    assert first
    assert second == ""
    assert give_back(Conversation, conversation.pk, first) is True
    assert give_back(Conversation, conversation.pk, first) is False
    assert take_lease(Conversation, conversation.pk)


@pytest.mark.django_db(transaction=True)
def test_a_lease_left_to_expire_by_a_dead_process_can_be_taken():
    # given
    conversation = Conversation.objects.create(channel="c", isolation_key="k", key="1")
    dead = take_lease(Conversation, conversation.pk)
    keeper.forget(Conversation, conversation.pk, dead)  # its process died: nobody renews
    Conversation.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    # when
    taken = take_lease(Conversation, conversation.pk)

    # then
    assert taken not in ("", dead)
    assert give_back(Conversation, conversation.pk, dead) is False


@pytest.mark.django_db(transaction=True)
def test_the_keeper_renews_the_leases_it_holds_and_drops_those_whose_holder_is_gone(lease_keeper):
    # given
    rows = [
        Conversation.objects.create(channel="c", isolation_key="k", key=str(i)) for i in range(3)
    ]
    past = timezone.now() - timedelta(seconds=1)
    Conversation.objects.update(lease_owner="x", lease_expires_at=past)

    class Turn:
        pass

    alive, dropped = Turn(), Turn()
    lease_keeper.hold(Conversation, rows[0].pk, "x", alive)
    lease_keeper.hold(Conversation, rows[1].pk, "x", dropped)
    lease_keeper.hold(Conversation, rows[2].pk, "y")  # another process's lease now
    del dropped
    gc.collect()

    # when
    renewed = lease_keeper.renew()

    # then
    assert renewed == 1
    expiries = dict(Conversation.objects.values_list("pk", "lease_expires_at"))
    assert expiries[rows[0].pk] > timezone.now()
    assert expiries[rows[1].pk] == past
    assert expiries[rows[2].pk] == past
    assert alive
