"""Per-key submission quotas: a fixed one-minute window counted in Redis, shared by every API process.

A request over the quota gets 429 with Retry-After and changes nothing. If Redis cannot be reached the
limiter lets the request through: accepting a job matters more than counting it (docs/api.md,
"Rate limits and an unavailable queue").
"""

from __future__ import annotations

import logging
import time

from genqueue import queue
from genqueue_api.errors import ApiError
from genqueue_api.state import AppState

log = logging.getLogger(__name__)


def charge(state: AppState, key_id: str, jobs: int) -> None:
    limit = state.settings.rate_limit_jobs_per_min
    if limit <= 0 or jobs <= 0:
        return
    now = time.time()
    window = int(now // 60)
    name = f"genqueue:rl:{key_id}:{window}"
    try:
        client = queue.shared_redis(state.broker_url)
        pipe = client.pipeline()
        pipe.incrby(name, jobs)
        pipe.expire(name, 120)
        used = int(pipe.execute()[0])
        if used > limit:
            client.decrby(name, jobs)  # a refused request uses none of the quota
        else:
            return
    except Exception as e:  # Redis is down: fail open
        log.warning("rate limiter unavailable (%s); request let through", e.__class__.__name__)
        return
    retry_after = max(1, int((window + 1) * 60 - now) + 1)
    raise ApiError(429, "rate_limited",
                   f"this key may submit {limit} jobs per minute; {used - jobs} used in this minute",
                   [{"limit": limit, "requested": jobs}], headers={"Retry-After": str(retry_after)})
