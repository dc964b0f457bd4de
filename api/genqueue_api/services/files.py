"""Files (OpenAI's Files API): uploads of batch input, stored in parts, and reads of any file, a batch's
generated output and error files included."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Protocol

from genqueue.db.models import ApiKey, File, utcnow
from genqueue.enums import Role
from genqueue.openai_schemas import FileDeleted, FileList, FileObject
from genqueue_api.services import batch_results
from genqueue_api.services.jsonl import Line, LineSplitter
from genqueue_api.services.openai_compat import OpenAIError
from genqueue_api.state import AppState
from genqueue_api.store import batches as batch_store
from genqueue_api.store import files as store

PART_BYTES = 1024 * 1024  # one row of file_parts: what an upload or a read holds at once
PURPOSES = ("batch",)  # what may be uploaded; batch_output and batch_error files are made by batches


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def new_id() -> str:
    return "file-" + uuid.uuid4().hex[:24]


def to_object(f: File) -> FileObject:
    return FileObject(id=f.id, bytes=f.bytes, created_at=int(f.created_at.timestamp()), filename=f.filename,
                      purpose=f.purpose, lines=f.lines)


def _owner(key: ApiKey) -> str | None:
    return None if key.role == Role.admin.value else key.id


def not_found() -> OpenAIError:
    return OpenAIError(404, "not_found", "file not found", "file_id")


def upload(state: AppState, key: ApiKey, filename: str, purpose: str, source: Readable) -> FileObject:
    """Stores ``source`` part by part, each part committed alone, so that neither memory nor one
    transaction holds the file. A file over the line limit is refused (and nothing of it kept)."""
    if purpose not in PURPOSES:
        raise OpenAIError(400, "unsupported_purpose",
                          f"purpose {purpose!r} is not supported: genqueue stores files for batches (purpose \"batch\")",
                          "purpose")
    limit = state.settings.batch_max_lines
    file_id = new_id()
    with state.db.session() as s:
        store.insert_file(s, {"id": file_id, "owner_id": key.id, "purpose": purpose, "filename": filename[:255],
                              "bytes": None, "lines": None, "batch_id": None, "created_at": utcnow()})
        s.commit()
    size = newlines = part = 0
    last = b"\n"
    try:
        while data := source.read(PART_BYTES):
            size += len(data)
            newlines += data.count(b"\n")
            last = data[-1:]
            if newlines > limit:
                raise OpenAIError(400, "too_many_lines", f"a batch file holds at most {limit} lines", "file")
            with state.db.session() as s:
                store.add_part(s, file_id, part, data)
                s.commit()
            part += 1
        lines = newlines + (last != b"\n")
        if lines > limit:
            raise OpenAIError(400, "too_many_lines", f"a batch file holds at most {limit} lines", "file")
        with state.db.session() as s:
            store.set_size(s, file_id, size, lines)
            s.commit()
            f = store.get_owned(s, file_id, None)
            assert f is not None
            return to_object(f)
    except BaseException:
        with state.db.session() as s:
            store.delete_file(s, file_id)
            s.commit()
        raise


def get(state: AppState, key: ApiKey, file_id: str) -> FileObject:
    with state.db.session() as s:
        f = store.get_owned(s, file_id, _owner(key))
        if f is None:
            raise not_found()
        return to_object(f)


def owned(state: AppState, key: ApiKey, file_id: str) -> File:
    with state.db.session() as s:
        f = store.get_owned(s, file_id, _owner(key))
    if f is None:
        raise not_found()
    return f


def _parts(state: AppState, file_id: str) -> Iterator[bytes]:
    index = 0
    while True:
        with state.db.session() as s:  # a short session per part: a slow reader holds no connection
            data = store.part(s, file_id, index)
        if data is None:
            return
        yield data
        index += 1


def lines(state: AppState, file_id: str) -> Iterator[Line]:
    """An uploaded file's lines, read one part at a time."""
    splitter = LineSplitter()
    for data in _parts(state, file_id):
        yield from splitter.feed(data)
    yield from splitter.close()


def content(state: AppState, key: ApiKey, file_id: str) -> tuple[File, Iterator[bytes]]:
    """A file's bytes as they are read: an upload's parts, or a batch's output or error lines made now from
    its jobs."""
    f = owned(state, key, file_id)
    if f.batch_id is None:
        return f, _parts(state, f.id)
    with state.db.session() as s:
        batch = batch_store.get_owned(s, f.batch_id, None)
    if batch is None:
        raise not_found()
    which: batch_store.Which = "output" if f.purpose == "batch_output" else "error"
    return f, batch_results.stream(state, batch, which)


def list_files(state: AppState, key: ApiKey, purpose: str | None, after: str | None, limit: int,
               order: str) -> FileList:
    with state.db.session() as s:
        mark = None
        if after is not None:
            mark = store.get_owned(s, after, _owner(key))
            if mark is None:
                raise OpenAIError(400, "invalid_cursor", "after must be the id of one of your files", "after")
        rows = store.list_owned(s, _owner(key), purpose, mark, limit + 1, newest_first=order == "desc")
    data = [to_object(f) for f in rows[:limit]]
    return FileList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                    has_more=len(rows) > limit)


def delete(state: AppState, key: ApiKey, file_id: str) -> FileDeleted:
    """An upload's bytes go; a batch made of it keeps running (its lines are jobs already) and shows no
    input file. A batch's output or error file can be deleted too: its lines stay readable as results."""
    f = owned(state, key, file_id)
    with state.db.session() as s:
        store.delete_file(s, f.id)
        s.commit()
    return FileDeleted(id=f.id, deleted=True)
