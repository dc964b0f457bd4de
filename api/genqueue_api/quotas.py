"""Per-key quotas, kept in Redis and shared by every API process: submit requests per second, jobs per
minute and jobs in flight (queued or running).

Defaults come from the settings (GENQUEUE_QUOTA_REQUESTS_PER_S, GENQUEUE_RATE_LIMIT_JOBS_PER_MIN,
GENQUEUE_QUOTA_JOBS_IN_FLIGHT); an admin may set other values for one key (PUT /v1/keys/{id}/quota), kept in
a Redis hash. Only submits that create jobs are counted, and only after validation: a request refused by
validation, an idempotent replay or a request refused by a quota uses none of it. A batch is one request,
and each of its stored chunks of lines is charged like a bulk's items (:func:`admit_lines`). All three
limits are checked and charged in one Lua script, so concurrent API processes never overshoot them.

Jobs in flight are the ids of the key's accepted jobs in a sorted set (scored by submit time), kept only
while the key has an in-flight limit: jobs accepted before a limit applied are not counted. Nothing removes
an id when its job ends; instead, when the set is full, the oldest ids are checked against SQL and the ended
ones dropped (at most once a second per key). If Redis cannot be reached the quotas let requests through:
accepting a job matters more than counting it (docs/api.md, "Rate limits and an unavailable queue").
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from redis.commands.core import Script
from redis.exceptions import NoScriptError
from sqlalchemy import select

from genqueue import queue
from genqueue.db.models import Job
from genqueue.enums import JobStatus
from genqueue.grouping import Grouper
from genqueue_api.errors import ApiError
from genqueue_api.state import AppState

log = logging.getLogger(__name__)

FIELDS = ("requests_per_s", "jobs_per_min", "jobs_in_flight")
PRUNE_BATCH = 2000  # ids checked against SQL per prune
UNSTORED_GRACE_S = 60.0  # longer than any submit takes between its quota check and its COMMIT
_IN_FLIGHT = (JobStatus.queued.value, JobStatus.running.value)

# KEYS: overrides hash, this second's request counter, this minute's job counter, the in-flight set.
# ARGV: default requests/s, jobs/min and in-flight limits, now, whether to charge a request (1/0), job ids.
# Returns {admitted, refusal (0 none, 1 requests/s, 2 jobs/min, 3 in flight), limit, used}.
_ADMIT = """
local function limit(field, default)
  local v = redis.call('HGET', KEYS[1], field)
  if v then return tonumber(v) end
  return tonumber(default)
end
local rps, per_min, cap = limit('requests_per_s', ARGV[1]), limit('jobs_per_min', ARGV[2]), limit('jobs_in_flight', ARGV[3])
local n = #ARGV - 5
if rps > 0 and ARGV[5] == '1' then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used + 1 > rps then return {0, 1, rps, used} end
end
local admit = n
local in_flight = 0
if cap > 0 then
  in_flight = redis.call('ZCARD', KEYS[4])
  admit = math.min(n, cap - in_flight)
  if admit <= 0 then return {0, 3, cap, in_flight} end
end
if per_min > 0 then
  local used = tonumber(redis.call('GET', KEYS[3]) or '0')
  if used + admit > per_min then return {0, 2, per_min, used} end
  redis.call('INCRBY', KEYS[3], admit)
  redis.call('EXPIRE', KEYS[3], 120)
end
if rps > 0 and ARGV[5] == '1' then
  redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], 2)
end
if cap > 0 then
  for i = 1, admit do redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5 + i]) end
end
return {admit, 0, cap, in_flight + admit}
"""
_NAMES = {1: "requests_per_s", 2: "jobs_per_min", 3: "jobs_in_flight"}
# The requests-per-second check of _ADMIT alone. KEYS: overrides hash, this second's request counter.
# ARGV: the default requests/s. Returns {charged (1/0), limit, used}.
_REQUEST = """
local rps = tonumber(redis.call('HGET', KEYS[1], 'requests_per_s') or ARGV[1])
if rps <= 0 then return {1, 0, 0} end
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
if used + 1 > rps then return {0, rps, used} end
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], 2)
return {1, rps, used + 1}
"""
# Sent by SHA (EVALSHA) after the first call: the scripts' text is not sent and parsed on every request.
_SCRIPTS: dict[str, Script] = {}


def _script(r: Any, text: str) -> Script:
    found = _SCRIPTS.get(text)
    if found is None:
        found = _SCRIPTS[text] = r.register_script(text)
    return found


def _config(key_id: str) -> str:
    return f"genqueue:quota:{key_id}"


def _in_flight(key_id: str) -> str:
    return f"genqueue:quota:{key_id}:in_flight"


@dataclass
class Quota:
    """A key's limits (0: none) and which of them an admin set for it."""

    requests_per_s: int
    jobs_per_min: int
    jobs_in_flight: int
    overrides: dict[str, int]
    in_flight: int  # the key's jobs counted in flight now (only while it has a jobs_in_flight limit)


def defaults(state: AppState) -> dict[str, int]:
    s = state.settings
    return {"requests_per_s": s.quota_requests_per_s, "jobs_per_min": s.rate_limit_jobs_per_min,
            "jobs_in_flight": s.quota_jobs_in_flight}


def read(state: AppState, key_id: str) -> Quota:
    r = queue.shared_redis(state.broker_url)
    raw: dict[bytes, bytes] = r.hgetall(_config(key_id))  # type: ignore[assignment]
    overrides = {k.decode(): int(v) for k, v in raw.items() if k.decode() in FIELDS}
    limits = {**defaults(state), **overrides}
    in_flight = int(r.zcard(_in_flight(key_id))) if limits["jobs_in_flight"] > 0 else 0  # type: ignore[arg-type]
    return Quota(**limits, overrides=overrides, in_flight=in_flight)


def write(state: AppState, key_id: str, changes: dict[str, int | None]) -> Quota:
    """Set (a number, 0 = no limit) or clear (None: back to the default) a key's limits."""
    r = queue.shared_redis(state.broker_url)
    pipe = r.pipeline()
    for name, value in changes.items():
        if value is None:
            pipe.hdel(_config(key_id), name)
        else:
            pipe.hset(_config(key_id), name, value)
    pipe.execute()
    return read(state, key_id)


def admit(state: AppState, key_id: str, job_ids: list[str], charge_request: bool = True) -> tuple[int, int]:
    """Charge a submit that would create ``job_ids``: returns how many of them (the first ones) may go in,
    and the in-flight limit. Raises 429 ``rate_limited`` when none may; fewer than all happens only for a
    bulk over the in-flight limit, whose other items are then refused one by one (see :func:`refused_item`).
    ``charge_request`` False charges the jobs alone (a batch's later chunks: one request, many chunks)."""
    if not job_ids:
        return 0, 0
    try:
        got = _pruned(state, key_id, job_ids, charge_request, _run(state, key_id, job_ids, charge_request))
    except Exception as e:  # Redis is down: fail open
        log.warning("quotas unavailable (%s); request let through", e.__class__.__name__)
        return len(job_ids), 0
    admitted, refusal, limit, used = got
    if admitted == 0:
        raise over(refusal, limit, used, len(job_ids))
    return admitted, limit


def _pruned(state: AppState, key_id: str, job_ids: list[str], charge_request: bool, got: list[int]) -> list[int]:
    """``got`` again after dropping ended jobs from the key's in-flight set, when that set refused some."""
    if got[0] < len(job_ids) and got[1] in (0, 3) and _may_prune(state, key_id):
        # The set may hold jobs that have ended since: drop those and try again.
        prune(state, key_id)
        if got[0] == 0:
            return _run(state, key_id, job_ids, charge_request=charge_request)
        rest = _run(state, key_id, job_ids[got[0]:], charge_request=False)
        return [got[0] + rest[0], 0, got[2], rest[3]]
    return got


def admit_singles(state: AppState, charges: Sequence[tuple[str, str]]) -> list[ApiError | None]:
    """Charge single submits, each (key id, job id) a request of one job: the 429 of each one refused, else
    None. One script call each, all in one pipelined round trip; an in-flight refusal still prunes and
    retries alone. Fails open like :func:`admit`, for the whole group when Redis cannot be reached and for
    one charge alone when only its call fails."""
    try:
        r = queue.shared_redis(state.broker_url)
        results = _pipelined(r, _script(r, _ADMIT), [_admit_args(state, k, [j], True) for k, j in charges])
    except Exception as e:  # Redis is down: fail open
        log.warning("quotas unavailable (%s); %d requests let through", e.__class__.__name__, len(charges))
        return [None] * len(charges)
    out: list[ApiError | None] = []
    for (key_id, job_id), raw in zip(charges, results, strict=True):
        try:
            if isinstance(raw, Exception):
                raise raw
            admitted, refusal, limit, used = _pruned(state, key_id, [job_id], True, [int(x) for x in raw])
        except Exception as e:
            log.warning("quota check failed (%s); request let through", e.__class__.__name__)
            out.append(None)
            continue
        out.append(over(refusal, limit, used, 1) if admitted == 0 else None)
    return out


def _pipelined(r: Any, script: Script, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
    """EVALSHA of ``script`` for each (keys, args) in one pipeline: the results in order, an exception in
    place of a call that failed. (redis-py's own script support in pipelines asks SCRIPT EXISTS first: a
    second round trip per group.) A Redis that lost its scripts (a restart, SCRIPT FLUSH) gets the script
    loaded, and the calls once more: none of them ran."""
    def send() -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return list(pipe.execute(raise_on_error=False))

    results = send()
    if any(isinstance(x, NoScriptError) for x in results):
        r.script_load(script.script)
        results = send()
    return results


class SingleAdmits:
    """Single submits' quota charges, grouped: what arrives while one pipeline is in flight goes in the next,
    so that the event loop waits on a future instead of a Redis round trip per request. A key refused for
    its jobs in flight prunes its set (SQL, at most once a second per key) on this one thread, delaying the
    group it came in with."""

    def __init__(self, state: AppState) -> None:
        self._grouper: Grouper[tuple[str, str], ApiError | None] = Grouper(
            "gq-quota", lambda charges: admit_singles(state, charges), max_batch=256)

    def submit(self, key_id: str, job_id: str) -> Future[ApiError | None]:
        return self._grouper.submit((key_id, job_id))

    def close(self) -> None:
        self._grouper.close()


def release(state: AppState, key_id: str, job_ids: list[str]) -> None:
    """Give back in-flight places reserved for jobs that were not stored after all."""
    if not job_ids:
        return
    try:
        queue.shared_redis(state.broker_url).zrem(_in_flight(key_id), *job_ids)
    except Exception as e:
        log.warning("quotas unavailable (%s); %d in-flight places left to the next prune", e.__class__.__name__,
                    len(job_ids))


def _run(state: AppState, key_id: str, job_ids: list[str], charge_request: bool) -> list[int]:
    r = queue.shared_redis(state.broker_url)
    return [int(x) for x in _script(r, _ADMIT)(*_admit_args(state, key_id, job_ids, charge_request), client=r)]


def _admit_args(state: AppState, key_id: str, job_ids: list[str], charge_request: bool) -> tuple[list[str], list[Any]]:
    now = time.time()
    d = defaults(state)
    keys = [_config(key_id), f"genqueue:quota:{key_id}:s:{int(now)}", f"genqueue:quota:{key_id}:m:{int(now // 60)}",
            _in_flight(key_id)]
    return keys, [d["requests_per_s"], d["jobs_per_min"], d["jobs_in_flight"], now, 1 if charge_request else 0,
                  *job_ids]


def _may_prune(state: AppState, key_id: str) -> bool:
    r = queue.shared_redis(state.broker_url)
    return bool(r.set(f"genqueue:quota:{key_id}:pruned", 1, nx=True, px=1000))


def prune(state: AppState, key_id: str) -> int:
    """Drop from the in-flight set the oldest ids whose jobs have ended. An id with no job row yet may be a
    request still inserting it: it is dropped only once it is ``UNSTORED_GRACE_S`` old."""
    r = queue.shared_redis(state.broker_url)
    members: list[tuple[bytes, float]] = r.zrange(_in_flight(key_id), 0, PRUNE_BATCH - 1, withscores=True)  # type: ignore[assignment]
    if not members:
        return 0
    ids = {m.decode(): float(score) for m, score in members}
    with state.db.session() as s:
        status = dict(s.execute(select(Job.id, Job.status).where(Job.id.in_(list(ids)))).tuples().all())
    old = time.time() - UNSTORED_GRACE_S
    gone = [i for i, at in ids.items()
            if (i in status and status[i] not in _IN_FLIGHT) or (i not in status and at < old)]
    if gone:
        r.zrem(_in_flight(key_id), *gone)
    return len(gone)


def over(refusal: int, limit: int, used: int, requested: int) -> ApiError:
    name = _NAMES.get(refusal, "jobs_in_flight")
    if name == "requests_per_s":
        message, retry = f"this key may send {limit} submit requests per second", 1
    elif name == "jobs_per_min":
        now = time.time()
        message = f"this key may submit {limit} jobs per minute; {used} used in this minute"
        retry = max(1, math.ceil((int(now // 60) + 1) * 60 - now))
    else:
        message, retry = f"this key may have {limit} jobs queued or running; it has {used}", 1
    return ApiError(429, "rate_limited", message,
                    [{"quota": name, "limit": limit, "used": used, "requested": requested}],
                    headers={"Retry-After": str(retry)})


def refused_item(limit: int, what: str = "item") -> dict[str, Any]:
    """The error of one bulk item (or batch line) left out because the key reached its in-flight limit."""
    return {"code": "rate_limited",
            "message": f"this key may have {limit} jobs queued or running; submit this {what} again later",
            "details": [{"quota": "jobs_in_flight", "limit": limit}]}


def admit_lines(state: AppState, key_id: str, job_ids: list[str]) -> tuple[int, dict[str, Any] | None]:
    """Charge a chunk of a batch's valid lines: (how many of the first ones may go in, the error of each line
    left out, or None). Like a bulk's items, except that no submit request is charged (a batch's HTTP
    request is charged once, by :func:`charge_request`) and a chunk with no room gets its lines refused
    rather than a 429 for the whole request."""
    try:
        admitted, limit = admit(state, key_id, job_ids, charge_request=False)
    except ApiError as e:
        if e.status != 429:
            raise
        detail = e.details[0] if e.details and isinstance(e.details[0], dict) else {}
        if detail.get("quota") == "jobs_in_flight":
            return 0, refused_item(int(detail.get("limit", 0)), "line")
        return 0, {"code": e.code, "message": e.message, "details": e.details}
    return admitted, refused_item(limit, "line") if admitted < len(job_ids) else None


def charge_request(state: AppState, key_id: str) -> None:
    """Charge one submit request that creates no job yet (a batch: its lines are charged as jobs as they are
    stored). Raises 429 ``rate_limited`` past the key's requests per second."""
    now = time.time()
    keys = [_config(key_id), f"genqueue:quota:{key_id}:s:{int(now)}"]
    try:
        r = queue.shared_redis(state.broker_url)
        ok, limit, used = (int(x) for x in _script(r, _REQUEST)(keys, [defaults(state)["requests_per_s"]], client=r))
    except Exception as e:  # Redis is down: fail open
        log.warning("quotas unavailable (%s); request let through", e.__class__.__name__)
        return
    if not ok:
        raise over(1, limit, used, 0)
