"""Files, as OpenAI's Files API has them: upload a batch's input, read any file (a batch's output and error
files included)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Query, UploadFile
from fastapi.responses import StreamingResponse

from genqueue.openai_schemas import FileDeleted, FileList, FileObject, OpenAIErrorResponse
from genqueue_api.deps import CurrentClient, StateDep
from genqueue_api.services import files as service

router = APIRouter(prefix="/v1/files", tags=["batches"])
_ERRORS: dict[int | str, dict[str, Any]] = {c: {"model": OpenAIErrorResponse} for c in (400, 401, 403, 404, 413, 422)}


@router.post("", response_model=FileObject, responses=_ERRORS)
def create_file(state: StateDep, key: CurrentClient, file: UploadFile,
                purpose: Annotated[str, Form(max_length=64)]) -> FileObject:
    """Multipart upload of a JSONL batch input (`purpose` "batch"), as the `openai` package's
    `files.create` sends it. Up to GENQUEUE_BATCH_MAX_BYTES and GENQUEUE_BATCH_MAX_LINES lines; lines are
    validated when a batch is made of the file."""
    return service.upload(state, key, file.filename or "input.jsonl", purpose, file.file)


@router.get("", response_model=FileList, responses=_ERRORS)
def list_files(state: StateDep, key: CurrentClient, purpose: Annotated[str | None, Query(max_length=64)] = None,
               after: Annotated[str | None, Query(max_length=64)] = None,
               limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
               order: Literal["asc", "desc"] = "desc") -> FileList:
    """Uploads and batches' output and error files, newest first unless `order=asc`; continue with
    `after` = the previous page's `last_id`."""
    return service.list_files(state, key, purpose, after, limit, order)


@router.delete("/{file_id}", response_model=FileDeleted, responses=_ERRORS)
def delete_file(file_id: str, state: StateDep, key: CurrentClient) -> FileDeleted:
    """Deletes a file. A batch made of it keeps running; deleting a batch's output or error file leaves
    the batch's results readable at GET /v1/batches/{id}/results."""
    return service.delete(state, key, file_id)


@router.get("/{file_id}", response_model=FileObject, responses=_ERRORS)
def get_file(file_id: str, state: StateDep, key: CurrentClient) -> FileObject:
    return service.get(state, key, file_id)


@router.get("/{file_id}/content", response_class=StreamingResponse, responses={200: {"content": {"application/octet-stream": {}}}, **_ERRORS})
def get_file_content(file_id: str, state: StateDep, key: CurrentClient) -> StreamingResponse:
    """The file's bytes: an upload as it was sent; a batch's output file (lines whose job succeeded) or
    error file (lines refused, failed or canceled) made from its jobs as it is read, in input order."""
    f, chunks = service.content(state, key, file_id)
    media = "application/octet-stream" if f.batch_id is None else "application/jsonl"
    return StreamingResponse(chunks, media_type=media,
                             headers={"Content-Disposition": f'attachment; filename="{f.filename}"'})
