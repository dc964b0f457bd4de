"""Single submits' quota charges go to Redis in groups (quotas.admit_singles): each charge gets its own
answer, a Redis that lost its scripts gets them loaded again, and a call that fails lets that one request
through (fail open) without letting through the others that were refused."""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from genqueue import queue
from genqueue.settings import Settings
from genqueue_api import quotas
from tests.quota_windows import early_in_a_minute


def test_each_charge_of_a_group_is_answered_alone(redis_scratch_url: str, tmp_path: Path) -> None:
    state: Any = SimpleNamespace(settings=Settings(data_dir=tmp_path, rate_limit_jobs_per_min=1),
                                 broker_url=redis_scratch_url)
    r = queue.shared_redis(redis_scratch_url)
    r.script_flush()  # as after a Redis restart: the first EVALSHA finds no script
    full, fresh, broken = (str(uuid.uuid4()) for _ in range(3))
    r.hset(f"genqueue:quota:{broken}", "jobs_per_min", "not a number")  # its script call raises in Lua
    early_in_a_minute()
    charges = [(full, "j1"), (full, "j2"), (broken, "j3"), (fresh, "j4")]
    got = quotas.admit_singles(state, charges)
    assert got[0] is None and got[2] is None and got[3] is None
    refused = got[1]
    assert refused is not None and refused.status == 429 and refused.code == "rate_limited"
    assert refused.details[0]["quota"] == "jobs_per_min" and refused.headers and "Retry-After" in refused.headers
    # The next group: the script is loaded now, and the full key stays full.
    again = quotas.admit_singles(state, [(full, "j5"), (fresh, "j6")])
    assert again[0] is not None and again[1] is not None
