"""The garbage collector in the long-running services (the API and the worker).

Python's cyclic collector walks every tracked object of a generation each time it runs. After start-up,
the oldest generation holds what lives as long as the process (modules, models' metadata, tokenizers,
compiled SQL), so each full collection re-walked it while a request or a batch of jobs waited. Freezing
that heap once start-up is over (``gc.freeze``, as large Python web services do) keeps it out of every
later collection, and a larger young-generation threshold runs the collector tens of times less often on
the hot paths, which allocate dicts and futures per job but rarely make cycles.
The effect on bulk submits and image jobs is measured in bench/FINDINGS.md, item 28.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def settle(gen0_threshold: int) -> None:
    """Call once a service has loaded what it keeps for its whole life, before it takes work."""
    gc.collect()
    gc.freeze()
    if gen0_threshold > 0:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)
    log.debug("heap settled: %d objects frozen, thresholds %s", gc.get_freeze_count(), gc.get_threshold())
