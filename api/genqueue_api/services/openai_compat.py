"""Translation between OpenAI's Completions API and genqueue jobs: a completion request becomes a text job's
request, a finished job becomes a completion object, and errors take OpenAI's shape.

A parameter genqueue cannot honour is refused, never ignored: the request fails with OpenAI's error shape
naming the parameter. Parameters that ask for nothing (``echo=false``, ``frequency_penalty=0``, ...) are
accepted, since clients often send them explicitly.
"""

from __future__ import annotations

from typing import Any

from genqueue.db.models import Job
from genqueue.enums import JobStatus
from genqueue.registry import ModelKind, UnknownModel
from genqueue_api.errors import ApiError
from genqueue_api.state import AppState

# OpenAI's parameter → genqueue's text input field.
_MAPPED = {"max_tokens": "max_new_tokens", "temperature": "temperature", "top_p": "top_p", "n": "n", "stop": "stop",
           "seed": "seed"}
# genqueue's own sampling fields, accepted as extra body parameters (the `openai` package's extra_body).
_EXTRA_INPUT = ("top_k", "repetition_penalty", "no_repeat_ngram_size")
_EXTRA_JOB = ("priority", "metadata")
# OpenAI parameters genqueue has no use for, accepted only with a value that asks for nothing.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "echo": (False, None), "logprobs": (None,), "frequency_penalty": (0, None), "presence_penalty": (0, None),
    "logit_bias": (None, {}), "suffix": (None, ""), "stream": (False, None), "stream_options": (None,),
}
# OpenAI's defaults where they differ from genqueue's.
_DEFAULTS = {"max_new_tokens": 16, "temperature": 1.0}
# Error fields of a genqueue job request → the OpenAI parameter that set them.
_PARAM_OF = {"input." + v: k for k, v in _MAPPED.items()} | {"input.prompt": "prompt", "model": "model",
                                                            **{"input." + f: f for f in _EXTRA_INPUT}}
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_error", 504: "timeout"}


class OpenAIError(ApiError):
    """An error in OpenAI's shape ({"error": {"message", "type", "param", "code"}}), which still carries
    genqueue's fields (code, message, details), so that clients of either kind read it."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 details: list[Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, code, message, details, headers)
        self.param = param

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def error(self) -> dict[str, Any]:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code,
                "details": self.details}

    def body(self) -> dict[str, Any]:
        return {"error": self.error()}


def from_api_error(e: ApiError, prefix: str = "", completion: bool = True) -> OpenAIError:
    """A genqueue error in OpenAI's shape: its first field becomes ``param``. For a completion request the
    field is named as that request names it (input.max_new_tokens → max_tokens) and a validation error is a
    400, as OpenAI answers it; a job request keeps genqueue's names and statuses."""
    if isinstance(e, OpenAIError):
        return e
    field = next((d.get("field") for d in e.details if isinstance(d, dict) and d.get("field")), None)
    param = (_PARAM_OF.get(field, field) if completion else field) if field else None
    status = 400 if e.status == 422 and completion else e.status
    return OpenAIError(status, e.code, e.message, prefix + param if param else None, e.details, e.headers)


def _invalid(param: str, message: str, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, code, message, param)


def _prompt(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        raise _invalid("prompt", "one prompt per request: send a list of prompts as separate requests "
                       "(or as lines of a batch)", "unsupported_parameter")
    if isinstance(value, list) and value and all(isinstance(v, int | list) for v in value):
        raise _invalid("prompt", "token-id prompts are not supported: send the prompt as text",
                       "unsupported_parameter")
    raise _invalid("prompt", "prompt must be a string")


def _asks_nothing(name: str, value: Any) -> bool:
    for ok in _NEUTRAL[name]:
        if ok is None or isinstance(ok, bool):
            if value is ok:
                return True
        elif isinstance(ok, int):
            if isinstance(value, int | float) and not isinstance(value, bool) and value == ok:
                return True
        elif type(value) is type(ok) and value == ok:
            return True
    return False


def job_request(body: Any) -> dict[str, Any]:
    """The genqueue job request (POST /v1/jobs body) for a completion request; OpenAIError when a parameter
    is unknown, unsupported or malformed."""
    if not isinstance(body, dict):
        raise _invalid("", "the request must be a JSON object", "invalid_request")
    if "model" not in body:
        raise _invalid("model", "model is required", "missing_required_parameter")
    if "prompt" not in body:
        raise _invalid("prompt", "prompt is required", "missing_required_parameter")
    inp: dict[str, Any] = dict(_DEFAULTS)
    job: dict[str, Any] = {"model": body["model"], "input": inp}
    for name, value in body.items():
        if name in ("model",):
            continue
        if name == "prompt":
            inp["prompt"] = _prompt(value)
        elif name in _MAPPED:
            if value is None:
                continue  # OpenAI's null means its default
            inp[_MAPPED[name]] = [value] if name == "stop" and isinstance(value, str) else value
        elif name in _EXTRA_INPUT:
            inp[name] = value
        elif name in _EXTRA_JOB:
            job[name] = value
        elif name == "user":
            if not isinstance(value, str):
                raise _invalid("user", "user must be a string")
        elif name == "best_of":
            if value not in (None, 1, body.get("n") or 1):
                raise _invalid("best_of", "best_of is not supported: genqueue returns every candidate it samples "
                               "(use n)", "unsupported_parameter")
        elif name in _NEUTRAL:
            if not _asks_nothing(name, value):
                raise _invalid(name, f"{name}={value!r} is not supported by genqueue", "unsupported_parameter")
        else:
            raise _invalid(name, f"unknown parameter {name!r}", "unknown_parameter")
    if isinstance(body.get("user"), str):
        # Kept with the job rather than dropped: OpenAI uses it to tell end users apart, and so can the owner.
        meta = job.get("metadata", {})
        if isinstance(meta, dict):
            job["metadata"] = {**meta, "user": body["user"]}
    return job


def check_text_model(state: AppState, model: Any) -> None:
    """Completions serve text models only; an image model is refused by name, not by its inputs."""
    if not isinstance(model, str):
        return  # the job request's validation names the error
    state.registry.refresh_if_stale()
    try:
        entry = state.registry.resolve(model)
    except UnknownModel:
        raise OpenAIError(404, "model_not_found", f"model {model!r} is not served here (see GET /v1/models)",
                          "model") from None
    if entry.manifest.kind is not ModelKind.text:
        raise OpenAIError(400, "model_not_supported",
                          f"{model!r} is an {entry.manifest.kind.value} model; /v1/completions serves text models",
                          "model")


_FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


def completion(job: Job) -> dict[str, Any]:
    """The completion object of a succeeded text job."""
    out = job.output or {}
    texts = list(out.get("texts", []))
    reasons = list(out.get("finish_reasons", []))
    metrics = job.metrics or {}
    prompt_tokens = int(metrics.get("prompt_tokens", 0))
    completion_tokens = int(metrics.get("tokens", 0))
    return {
        "id": f"cmpl-{job.id}", "object": "text_completion", "created": int(job.created_at.timestamp()),
        "model": job.model, "system_fingerprint": f"{job.model}@{job.model_version}",
        "choices": [{"text": t, "index": i, "logprobs": None,
                     "finish_reason": _FINISH.get(reasons[i] if i < len(reasons) else "length", "length")}
                    for i, t in enumerate(texts)],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def job_error(job: Job) -> OpenAIError:
    """Why a job that did not succeed has no completion: a bad input is the client's (400), a canceled job
    was canceled by its owner (409), anything else is the server's (500)."""
    if job.status == JobStatus.canceled.value:
        return OpenAIError(409, "job_canceled", f"job {job.id} was canceled before it finished")
    code = job.error_code or "engine_error"
    status = 400 if code in ("invalid_input", "prompt_too_long") else 500
    return OpenAIError(status, code, job.error_message or code)
