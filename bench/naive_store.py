"""The table a user would write for the naive baseline: one row per job, written by one Celery task each."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Column, Float, Integer, LargeBinary, MetaData, String, Table, Text
from sqlalchemy.engine import Engine

metadata = MetaData()
naive_jobs = Table(
    "bench_naive_jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("kind", String(8)),
    Column("input", JSON),
    Column("status", String(12)),
    Column("output", Text, nullable=True),  # text jobs: the generated text
    Column("image", LargeBinary, nullable=True),  # image jobs: the PNG bytes
    Column("tokens", Integer, default=0),
    Column("created", Float),  # time.time() at INSERT
    Column("started", Float, nullable=True),
    Column("finished", Float, nullable=True),
)


def create(engine: Engine) -> None:
    metadata.drop_all(engine, tables=[naive_jobs])
    metadata.create_all(engine, tables=[naive_jobs])


def row(job_id: str, kind: str, inp: dict[str, Any], created: float) -> dict[str, Any]:
    return {"id": job_id, "kind": kind, "input": inp, "status": "queued", "created": created}
