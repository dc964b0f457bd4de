from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from genqueue import queue
from genqueue_api import storemetrics
from genqueue_api.deps import StateDep

log = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "SQL or Redis is unreachable (the error shape)"}})
def readyz(state: StateDep) -> Response:
    checks: dict[str, str] = {}
    try:
        with state.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as e:
        checks["database"] = f"error: {e.__class__.__name__}"
    try:
        queue.shared_redis(state.broker_url).ping()
        checks["redis"] = "ok"
    except Exception as e:
        checks["redis"] = f"error: {e.__class__.__name__}"
    ok = all(v == "ok" for v in checks.values())
    if ok:
        return JSONResponse({"status": "ok", "checks": checks})
    return JSONResponse({"error": {"code": "not_ready", "message": "a dependency is unreachable",
                                   "details": [checks]}}, status_code=503)


# Documented as what it serves, Prometheus text, not the JSON that FastAPI would assume.
@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"description": "Prometheus text exposition format", "content": {"text/plain": {}}}})
def metrics(state: StateDep) -> Response:
    body = generate_latest()
    try:
        body += storemetrics.render(state.db)
    except Exception as e:  # the process metrics still answer while SQL is down
        log.warning("store metrics not read: %s: %s", e.__class__.__name__, e)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
