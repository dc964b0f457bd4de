"""File repository: uploaded files and their parts. No HTTP, no validation here."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select, tuple_, update
from sqlalchemy.orm import Session

from genqueue.db.models import File, FilePart


def insert_file(session: Session, row: dict[str, Any]) -> None:
    session.execute(insert(File), [row])


def add_part(session: Session, file_id: str, part: int, data: bytes) -> None:
    session.execute(insert(FilePart), [{"file_id": file_id, "part": part, "data": data}])


def set_size(session: Session, file_id: str, size: int, lines: int) -> None:
    session.execute(update(File).where(File.id == file_id).values(bytes=size, lines=lines))


def delete_file(session: Session, file_id: str) -> None:
    session.execute(delete(FilePart).where(FilePart.file_id == file_id))
    session.execute(delete(File).where(File.id == file_id))


def get_owned(session: Session, file_id: str, owner_id: str | None) -> File | None:
    """``owner_id`` None means an admin: any file."""
    f = session.get(File, file_id)
    if f is None or (owner_id is not None and f.owner_id != owner_id):
        return None
    return f


def part(session: Session, file_id: str, index: int) -> bytes | None:
    """One part's bytes (None past the last), read alone so that a reader never holds the whole file."""
    return session.execute(
        select(FilePart.data).where(FilePart.file_id == file_id, FilePart.part == index)
    ).scalar_one_or_none()


def list_owned(session: Session, owner_id: str | None, purpose: str | None, after: File | None, limit: int,
               newest_first: bool) -> list[File]:
    """Ordered by (created_at, id); ``after`` is the previous page's last file."""
    q = select(File)
    if owner_id is not None:
        q = q.where(File.owner_id == owner_id)
    if purpose is not None:
        q = q.where(File.purpose == purpose)
    key = tuple_(File.created_at, File.id)
    if after is not None:
        mark = tuple_(after.created_at, after.id)
        q = q.where(key < mark if newest_first else key > mark)
    order = (File.created_at.desc(), File.id.desc()) if newest_first else (File.created_at, File.id)
    return list(session.execute(q.order_by(*order).limit(limit)).scalars())
