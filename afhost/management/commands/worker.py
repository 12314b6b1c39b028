"""`manage.py worker`: django-q2's cluster, as `qcluster` starts it, stopping cleanly on any signal.

django-q2 stops its cluster from inside its signal handler, and its sentinel and workers take
SIGTERM's default action: a SIGTERM to the whole process group (systemd's default on every
stop, a container runtime's, a terminal's Ctrl-C for SIGINT) kills the sentinel while it waits
on an event, and the main process then waits forever to wake it. Here the handler only records
the signal; the main process stops the cluster (graceful: workers finish their jobs for up to
engine.DRAIN_SECONDS) and exits once it has stopped, or after STOP_SECONDS at the latest. Work a
killed worker held is taken over by other workers once its leases run out.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django_q.cluster import Cluster

from afhost import heap

logger = logging.getLogger(__name__)

# How long stopping may take before the process exits regardless.
STOP_SECONDS = 9.0


class Command(BaseCommand):
    help = "Run a worker: a django-q2 cluster of AFHOST_WORKERS processes, until Ctrl-C/SIGTERM."

    def handle(self, *args, **options):
        settings.SECRET_KEY  # noqa: B018 (django-q2 signs tasks with it: fail now, not later)
        cluster = Cluster()
        heap.settle()  # before the cluster forks its processes, which then share what it froze
        received: queue.SimpleQueue[int] = queue.SimpleQueue()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda signum, frame: received.put(signum))
        cluster.start()
        while cluster.sentinel.is_alive():
            try:
                number = received.get(timeout=0.5)
            except queue.Empty:
                continue
            logger.info("worker: %s received, stopping", signal.Signals(number).name)
            break
        time.sleep(0.1)  # a signal to the whole group has ended the cluster's processes by now
        if cluster.sentinel.is_alive():
            stopping = threading.Thread(target=cluster.stop, name="stop", daemon=True)
            stopping.start()
            stopping.join(STOP_SECONDS)
            if stopping.is_alive():
                logger.warning("worker: the cluster did not stop in %.0f s; exiting", STOP_SECONDS)
        # Exit now: multiprocessing would otherwise wait at exit for children a group signal
        # left in a state that never ends.
        os._exit(0)
