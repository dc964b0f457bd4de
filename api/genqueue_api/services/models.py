"""Served models: the registry's manifests plus the workers that announce them in Redis."""

from __future__ import annotations

import json
import logging
from typing import Any

from genqueue import queue
from genqueue.schemas import ModelList, ModelOut, ModelVersionOut
from genqueue_api.state import AppState

log = logging.getLogger(__name__)
WORKER_KEY_PREFIX = "genqueue:worker:"


def live_workers(state: AppState) -> list[dict[str, Any]]:
    try:
        r = queue.shared_redis(state.broker_url)
        keys = list(r.scan_iter(match=WORKER_KEY_PREFIX + "*", count=500))
        values = r.mget(keys) if keys else []
    except Exception as e:
        log.warning("cannot read worker heartbeats: %s", e)
        return []
    return [json.loads(v) for v in values if v]


def list_models(state: AppState) -> ModelList:
    state.registry.refresh_if_stale()
    workers = live_workers(state)
    out = []
    for name in state.registry.names():
        versions = []
        for v in state.registry.versions(name):
            m = state.registry.resolve(f"{name}@{v}").manifest
            limits: dict[str, Any]
            if m.text is not None:
                limits = {"context_length": m.text.context_length, "max_new_tokens": m.text.context_length - 1,
                          "vocab_size": m.text.vocab_size}
            else:
                assert m.image is not None
                limits = {"max_num_images": 64, "num_classes": m.image.num_classes,
                          "image_shape": [m.image.channels, m.image.height, m.image.width]}
            versions.append(ModelVersionOut(version=v, precision=m.precision, limits=limits, metrics=m.metrics,
                                            sha256=m.sha256))
        latest = state.registry.resolve(name).manifest
        serving = [w for w in workers if name in w.get("models", [])]
        out.append(ModelOut(name=name, kind=latest.kind.value, versions=versions, latest=latest.version,
                            served=bool(serving), workers=len(serving)))
    return ModelList(data=out)
