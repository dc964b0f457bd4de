"""``POST /v1/jobs`` without the framework's per-request machinery, for the common case.

A single submit is small work: parse, validate, one row committed with its group, an answer. Measured on
2 cores, FastAPI's routing and dependency solving, Starlette's request and response objects and two hand-offs
to anyio's thread pool (the key lookup and the blocking insert) were about half of the API's CPU per single
submit. This pure ASGI middleware answers the same request with the same services: the key from the cache
(SQL on a thread only on a miss), validation on the event loop (CPU only; a job with a webhook is validated
on a thread, since checking its host resolves the name), the quota charged in the pipelined
Redis round trip of every request that arrived meanwhile (`quotas.SingleAdmits`), and the row handed to the
group committer. The loop awaits those two futures; a plain request holds no thread.

Requests with an ``Idempotency-Key`` (a lookup in SQL first) or ``Prefer: wait`` go on to the FastAPI route,
as do all other paths. The answers, errors included, are the contract's either way:
`tests/api/test_single_submit_paths.py` sends the same requests both ways, and the job tests go through here.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.concurrency import run_in_threadpool

from genqueue.db.models import ApiKey
from genqueue_api import deps, quotas
from genqueue_api.errors import ApiError
from genqueue_api.routes.jobs import parse_json
from genqueue_api.services import jobs as service
from genqueue_api.state import AppState

_JSON = (b"content-type", b"application/json")


class _Disconnected(Exception):
    pass


class SingleSubmit:
    def __init__(self, app: Any, state: AppState, route: Any) -> None:
        self.app = app
        self.state = state
        self.route = route  # the FastAPI route, for RequestMetrics' label

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (scope["type"] != "http" or scope["path"] != "/v1/jobs" or scope["method"] != "POST"
                or scope.get("root_path")):
            await self.app(scope, receive, send)
            return
        auth = None
        for name, value in scope["headers"]:
            if name in (b"idempotency-key", b"prefer"):
                await self.app(scope, receive, send)
                return
            if name == b"authorization" and auth is None:
                auth = value.decode("latin-1")
        scope["route"] = self.route
        try:
            key = await self._key(auth)
            body = parse_json(await _body(receive))
            job = await self._create(key, body)
        except ApiError as e:
            await _answer(send, e.status, _error_json(e), e.headers)
            return
        except _Disconnected:
            return  # nobody to answer; no row was written
        await _answer(send, 201, job.model_dump_json().encode())

    async def _key(self, header: str | None) -> ApiKey:
        """What the route's CurrentClient dependency checks, with the same errors."""
        secret = deps.bearer_secret(header)
        key = self.state.keys.cached(secret)
        if key is None:
            key = await run_in_threadpool(self.state.keys.lookup, self.state.db.session, secret,
                                          self.state.settings.auth_cache_s)
            if key is None:
                raise deps.unknown_key()
        if key.role not in deps.CLIENT_ROLES:
            raise deps.wrong_role(deps.CLIENT_ROLES)
        return key

    async def _create(self, key: ApiKey, body: Any) -> Any:
        state = self.state
        if isinstance(body, dict) and body.get("webhook"):
            # The webhook's host is resolved to check its addresses: DNS may block, so not on the loop.
            p = await run_in_threadpool(service.prepare_new, state, key, body, None)
        else:
            p = service.prepare_new(state, key, body, None)
        refused_quota = await asyncio.wrap_future(state.single_admits().submit(key.id, p.row["id"]))
        if refused_quota is not None:
            raise refused_quota
        refused = await asyncio.wrap_future(state.job_inserter().submit(p.row))
        if refused is not None:  # without an Idempotency-Key, nothing a client sent can collide: a fault
            quotas.release(state, key.id, [p.row["id"]])
            raise refused
        return service.submitted(state, p.row)


async def _body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _error_json(e: ApiError) -> bytes:
    """As Starlette's JSONResponse writes it; a message quoting a lone surrogate from the request (which UTF-8
    cannot encode, and JSONResponse then fails on) is written with escapes instead."""
    try:
        return json.dumps(e.body(), ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(e.body(), separators=(",", ":")).encode()


async def _answer(send: Any, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    raw = [_JSON, (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
