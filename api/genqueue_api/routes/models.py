from __future__ import annotations

from fastapi import APIRouter

from genqueue.schemas import ModelList
from genqueue_api.deps import CurrentKey, StateDep
from genqueue_api.services import models as service

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
def list_models(state: StateDep, _key: CurrentKey) -> ModelList:
    return service.list_models(state)
