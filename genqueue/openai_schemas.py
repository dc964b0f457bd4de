"""Response and request models of the batch, file and completion endpoints, in the shapes of OpenAI's Batch,
Files and Completions APIs, so that the official ``openai`` package reads them unchanged (docs/api.md is
generated from them). Times are Unix seconds, as OpenAI's are."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

BatchStatus = Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                      "cancelled"]
# POST /v1/jobs lines carry genqueue job requests; POST /v1/completions lines carry OpenAI completion requests.
BatchEndpoint = Literal["/v1/jobs", "/v1/completions"]
ENDPOINTS: tuple[str, ...] = ("/v1/jobs", "/v1/completions")


class OpenAIErrorBody(BaseModel):
    """OpenAI's error fields (message, type, param, code) and genqueue's (code, message, details) at once."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None
    details: list[Any] = Field(default_factory=list)


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorBody


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int | None  # null for a batch's output and error files, which are made when read
    created_at: int
    filename: str
    purpose: str  # batch (an upload), batch_output or batch_error
    status: Literal["processed"] = "processed"
    status_details: str | None = None
    lines: int | None = None  # lines of an uploaded file


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class BatchCreate(BaseModel):
    """POST /v1/batches as JSON: a batch of the lines of an uploaded file (OpenAI's batches.create)."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=40)
    endpoint: BatchEndpoint
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = Field(default=None, max_length=16)


class BatchLineError(BaseModel):
    code: str
    message: str
    param: str | None = None  # the field at fault, e.g. "body.max_tokens"
    line: int | None = None  # 1-based line number in the input


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchLineError]


class RequestCounts(BaseModel):
    total: int  # lines read
    completed: int  # jobs succeeded
    failed: int  # lines refused, jobs failed or canceled


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None  # the first line errors (all of them are in the error file)
    input_file_id: str | None  # null for a JSONL body sent to POST /v1/batches
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None  # set once the batch has ended, when some line succeeded
    error_file_id: str | None = None  # set once the batch has ended, when some line failed
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    metadata: dict[str, str] | None = None


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length", "content_filter"]


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    id: str  # "cmpl-" and the job's id
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage
    system_fingerprint: str  # the model version that ran
