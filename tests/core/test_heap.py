"""genqueue.heap.settle, in a process of its own (freezing the test process's heap would keep every later
test's cyclic garbage alive)."""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import gc, json
from genqueue import heap
before = gc.get_threshold()
heap.settle({threshold})
print(json.dumps({{"frozen": gc.get_freeze_count(), "before": before, "after": gc.get_threshold()}}))
"""


def _settle(threshold: int) -> dict[str, list[int] | int]:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(threshold=threshold)], capture_output=True, text=True,
                         check=True, timeout=60)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_settle_freezes_the_start_up_heap_and_raises_only_the_young_threshold() -> None:
    got = _settle(50_000)
    assert isinstance(got["frozen"], int) and got["frozen"] > 1000  # the imported modules' objects at least
    before, after = got["before"], got["after"]
    assert isinstance(before, list) and isinstance(after, list)
    assert after == [50_000, before[1], before[2]]


def test_threshold_zero_keeps_pythons_default() -> None:
    got = _settle(0)
    assert got["after"] == got["before"] and isinstance(got["frozen"], int) and got["frozen"] > 1000
