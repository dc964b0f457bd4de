"""File repository: uploaded files and their parts. No HTTP, no validation here."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select, update
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
