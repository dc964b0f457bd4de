"""OpenAI's Completions API (POST /v1/completions), answered by a text job run through the queue."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from genqueue.openai_schemas import Completion, OpenAIErrorResponse
from genqueue_api.deps import CurrentClient, StateDep
from genqueue_api.routes.batches import read_json
from genqueue_api.services import completions as service

router = APIRouter(prefix="/v1", tags=["openai"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    c: {"model": OpenAIErrorResponse} for c in (400, 401, 403, 404, 409, 413, 429, 500, 504)}
_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["model", "prompt"],
    "properties": {"model": {"type": "string"}, "prompt": {"type": "string"},
                   "max_tokens": {"type": "integer", "default": 16}, "temperature": {"type": "number", "default": 1},
                   "top_p": {"type": "number"}, "n": {"type": "integer"},
                   "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                   "seed": {"type": "integer"}, "user": {"type": "string"},
                   "top_k": {"type": "integer"}, "repetition_penalty": {"type": "number"},
                   "no_repeat_ngram_size": {"type": "integer"}, "priority": {"type": "integer"},
                   "metadata": {"type": "object"}}}}}}}


@router.post("/completions", response_model=Completion, responses=_ERRORS, openapi_extra=_BODY)
async def create_completion(request: Request, state: StateDep, key: CurrentClient) -> JSONResponse:
    """OpenAI's text completion, synchronous: a text job with `max_tokens` as `max_new_tokens` (16 unless
    given) and OpenAI's default temperature 1. `top_k`, `repetition_penalty`, `no_repeat_ngram_size`,
    `priority` and `metadata` are genqueue's own extras. Parameters genqueue cannot honour (`logprobs`,
    `echo`, `best_of`, penalties, `logit_bias`, `suffix`, `stream`, several prompts) are refused with 400
    unless they ask for nothing. Waits up to GENQUEUE_COMPLETIONS_TIMEOUT_S, then answers 504 and cancels
    the job."""
    body = await read_json(request, state.settings.max_body_bytes)
    return JSONResponse(await service.create(state, key, body))
