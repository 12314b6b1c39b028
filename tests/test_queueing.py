"""django-q2's database broker as afhost configures it: tasks handed out a batch per claim."""

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.models import OrmQ
from django_q.signing import SignedPackage
from django_q.tasks import async_task

from afhost.queueing import DatabaseBroker

pytestmark = pytest.mark.django_db


def _args(tasks: list[tuple[int, str]]) -> list[int]:
    return [SignedPackage.loads(payload)["args"][0] for _, payload in tasks]


def test_the_pusher_takes_queued_tasks_oldest_first_a_batch_per_claim():
    # given: more tasks than a batch
    broker = get_broker()
    assert isinstance(broker, DatabaseBroker)
    for number in range(Conf.BULK + 2):
        async_task("math.floor", number, broker=broker)

    # when
    first, second = broker.dequeue(), broker.dequeue()

    # then: each task once, in the order queued, and every task taken is locked until its retry
    assert _args(first) == list(range(Conf.BULK))
    assert _args(second) == [Conf.BULK, Conf.BULK + 1]
    assert not OrmQ.objects.filter(lock__lte=timezone.now()).exists()
    assert broker.dequeue() is None


def test_a_task_whose_worker_never_acknowledged_it_is_handed_out_again_after_its_retry():
    # given: a task taken, then its lock run out (its worker died)
    broker = get_broker()
    async_task("math.floor", 7, broker=broker)
    [(task_id, _)] = broker.dequeue()
    OrmQ.objects.filter(pk=task_id).update(lock=timezone.now() - timedelta(seconds=1))

    # when / then: taken again; once acknowledged, it is gone
    assert [pk for pk, _ in broker.dequeue()] == [task_id]
    broker.acknowledge(task_id)
    assert not OrmQ.objects.exists()
