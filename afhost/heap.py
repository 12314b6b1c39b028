"""The garbage collector, set for a long-running server or worker process.

CPython's collector walks every container object it tracks at each full collection, and a young
collection every 700 net allocations. Left so, a server under load spent about a third of a
stored create's CPU in the collector (measured in process), and its full collections were
pauses of tens of milliseconds in every request in flight: the p99 of stored creates fell from
~157 ms to ~51 ms once start-up's heap was frozen.
"""

from __future__ import annotations

import gc

# Young collections every this many net allocations of container objects, not CPython's 700:
# the requests in flight hold thousands of objects that die by reference counting, and at 700
# the collector walked them every few requests.
YOUNG_THRESHOLD = 7000


def settle() -> None:
    """Call once start-up has built what lives as long as the process (modules, classes,
    schemas, the target): it is frozen, never walked again (and, in worker processes forked
    after it, its pages stay shared), and young collections run less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
