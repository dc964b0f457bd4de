"""Messages between the worker's Celery glue and the inference engines.

The glue (``genqueue_worker.tasks``) turns a job row into a request, calls ``Engine.submit`` and waits on the
returned future; the engine runs its own loop thread and resolves each future as soon as that job is done,
so the glue can write the result to SQL and ack the message at once, not when the batch drains.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol

from genqueue.schemas import IMAGE_DEFAULTS, TEXT_DEFAULTS


class ErrorCode(StrEnum):
    """Per-job failure codes; they reach clients in ``job.error.code``."""

    prompt_too_long = "prompt_too_long"  # the prompt does not fit the model's context
    invalid_input = "invalid_input"  # input the engine cannot run (bad class label, ...)
    preprocess_error = "preprocess_error"  # tokenizing / latent sampling failed for this job
    postprocess_error = "postprocess_error"  # detokenizing / image encoding failed for this job
    nan_output = "nan_output"  # NaN or Inf in this job's logits or images
    engine_error = "engine_error"  # the runner kept failing for this job after individual retries
    shutdown = "shutdown"  # the worker stopped before the job finished; the job is given back


@dataclass(frozen=True)
class TextParams:
    """Defaults: genqueue.schemas.TEXT_DEFAULTS, the same as the API's."""

    max_new_tokens: int = TEXT_DEFAULTS.max_new_tokens  # clamped by the engine to the context left after the prompt
    temperature: float = TEXT_DEFAULTS.temperature  # 0 means greedy
    top_k: int = TEXT_DEFAULTS.top_k  # 0 disables
    top_p: float = TEXT_DEFAULTS.top_p  # 1 disables
    repetition_penalty: float = TEXT_DEFAULTS.repetition_penalty  # 1 disables; >1 discourages tokens already in the row
    no_repeat_ngram_size: int = TEXT_DEFAULTS.no_repeat_ngram_size  # 0 disables; n bans any n-gram from repeating
    stop: tuple[str, ...] = ()  # matched on decoded text, across token boundaries
    seed: int = 0  # one generator per job (candidate i uses a stream derived from seed and i)
    n: int = TEXT_DEFAULTS.n  # candidates for the same prompt
    # Keep generating past EOS up to max_new_tokens, so that every job does a known amount of work: for the
    # benchmarks and the tests; not in the API.
    ignore_eos: bool = False


@dataclass(frozen=True)
class TextRequest:
    job_id: str
    prompt: str
    params: TextParams
    priority: int = 5  # 0 is highest; waiting work is admitted in priority order, then arrival order


@dataclass(frozen=True)
class ImageParams:
    """Defaults: genqueue.schemas.IMAGE_DEFAULTS, the same as the API's."""

    seed: int = 0  # per-image seeds are derived from it, so batching never changes an image
    num_images: int = IMAGE_DEFAULTS.num_images
    truncation: float = IMAGE_DEFAULTS.truncation  # 0 < t <= 1; 1 means none
    class_label: int | None = None  # required range [0, num_classes) for conditional models
    format: Literal["png", "webp"] = IMAGE_DEFAULTS.format


@dataclass(frozen=True)
class ImageRequest:
    job_id: str
    params: ImageParams
    priority: int = 5


@dataclass
class EncodedImage:
    data: bytes
    width: int
    height: int
    format: str  # "png" | "webp"
    # Standard deviation of the image's grey levels (Pillow's "L" conversion of the pixels before encoding),
    # for the pre-screen's blank-image rule; None where the engine did not compute it.
    luma_std: float | None = None


@dataclass
class JobResult:
    job_id: str
    status: Literal["succeeded", "failed", "canceled"]
    # text: {"texts": [...], "finish_reasons": [...]}; image: {"images": [{"width", "height", "format"}]}
    output: dict[str, Any] | None = None
    images: list[EncodedImage] = field(default_factory=list)  # image jobs only, in output order
    error_code: ErrorCode | None = None
    error_message: str | None = None
    # inference_ms: time from admission to finish; batch_size: mean rows per step/forward it shared;
    # tokens: generated tokens (text) or images (image).
    metrics: dict[str, float] = field(default_factory=dict)


class Engine(Protocol):
    """One loaded model with its own loop thread."""

    @property
    def provider(self) -> str:
        """The execution provider that actually runs (read from the session, after any silent fallback)."""
        ...

    def start(self) -> None: ...

    def submit(self, request: Any) -> Future[JobResult]:
        """Thread-safe. The future resolves once, with the job's result."""
        ...

    def submit_many(self, requests: Sequence[Any]) -> list[Future[JobResult]]:
        """Thread-safe. Like ``submit`` for each, but they reach the batching together: a message's chunk is
        not split into a first batch of the jobs that happened to arrive before the queue delay ran out."""
        ...

    def cancel(self, job_id: str) -> None:
        """Thread-safe. A running job stops at the next step; its future resolves as canceled."""
        ...

    def stop(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop taking work. With drain, finish what was admitted; unfinished futures resolve with
        status failed and error_code ``shutdown`` so the glue can give the job back."""
        ...
