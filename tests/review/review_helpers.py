"""Outputs ready for review, written through the worker's own outcome path."""

from __future__ import annotations

import uuid
from typing import Any

from genqueue import jobstate as service
from genqueue.db.models import ApiKey
from genqueue.db.session import Database
from genqueue.enums import Role
from genqueue_api.auth import create_key
from genqueue_api.store import jobs as store


def key(db: Database, role: Role, name: str = "k", review_policy: str | None = None) -> ApiKey:
    with db.session() as s:
        k, _ = create_key(s, f"{name}-{uuid.uuid4().hex[:6]}", role, review_policy=review_policy)
    return k


def outputs(db: Database, n: int, *, owner: ApiKey | None = None, policy: str = "required", model: str | None = None,
            flags: list[dict[str, Any]] | None = None, webhook: str | None = None) -> tuple[list[str], str]:
    """``n`` succeeded jobs of a model of their own (so that claims of other tests never see them);
    returns their ids and the model name."""
    model = model or f"m-{uuid.uuid4().hex[:8]}"
    owner = owner or key(db, Role.client)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    with db.session() as s:
        store.insert_jobs(s, [{"id": i, "owner_id": owner.id, "model": model, "model_version": "1", "kind": "text",
                               "status": "running", "leased_by": "w", "priority": 5, "input": {"prompt": "x"},
                               "metadata_": {"n": k}, "review_policy": policy, "webhook": webhook,
                               "webhook_events": ["completed", "review"], "metrics": {}, "attempts": 1}
                              for k, i in enumerate(ids)])
        s.commit()
    for start in range(0, n, 200):
        with db.session() as s:
            written = service.write_outcomes(s, "w", [service.Success(i, {"texts": [f"text {i}"]}, {}, [], flags or [])
                                                      for i in ids[start:start + 200]])
        assert all(written.values())
    return ids, model
