"""Batches in process (no worker): per-line validation, duplicate custom_ids, results in input order,
request counts that follow the jobs, cancel, and the output and error files. Outcomes are written through
the worker's own job-state path (genqueue.jobstate), on real Redis and real SQL."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from genqueue import jobstate
from genqueue.db.models import ApiKey, Batch, Job, utcnow
from genqueue.db.session import Database, upgrade
from genqueue.enums import Role
from genqueue.settings import Settings
from genqueue_api.app import create_app
from genqueue_api.auth import create_key

JSONL = {"content-type": "application/jsonl"}


@dataclass
class Api:
    c: TestClient
    db: Database
    keys: dict[str, ApiKey]
    h: dict[str, dict[str, str]]


@pytest.fixture
def api(database_url: str, redis_scratch_url: str, models_dir: Path, tmp_path: Path) -> Iterator[Api]:
    settings = Settings(data_dir=tmp_path, database_url=database_url, redis_url=redis_scratch_url,
                        models_dir=models_dir, reconcile_interval_s=0, batch_max_lines=20,
                        batch_max_bytes=64 * 1024)
    upgrade(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url)
    keys, headers = {}, {}
    with db.session() as s:
        for name, role in (("client", Role.client), ("other", Role.client), ("mod", Role.moderator)):
            keys[name], secret = create_key(s, name, role)
            headers[name] = {"Authorization": f"Bearer {secret}"}
    with TestClient(create_app(settings)) as c:
        yield Api(c, db, keys, headers)
    db.dispose()


def _jsonl(lines: list[Any]) -> bytes:
    return b"".join((ln if isinstance(ln, bytes) else json.dumps(ln).encode()) + b"\n" for ln in lines)


def _text(cid: str, prompt: str = "Once upon a time", **inp: Any) -> dict[str, Any]:
    return {"custom_id": cid, "model": "tiny-lm", "input": {"prompt": prompt, "max_new_tokens": 4, **inp}}


def _results(api: Api, batch_id: str, who: str = "client") -> list[dict[str, Any]]:
    r = api.c.get(f"/v1/batches/{batch_id}/results", headers=api.h[who])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/jsonl")
    return [json.loads(x) for x in r.text.splitlines()]


def _finish(db: Database, job_ids: list[str], fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Claims the jobs and writes their outcomes the way a worker does."""
    with db.session() as s:
        jobstate.claim_many(s, job_ids, "w1", 60, 3)
    with db.session() as s:
        jobstate.write_outcomes(s, "w1", [
            jobstate.Failure(j, "engine_error", "the runner failed") if j in fail else
            jobstate.Success(j, {"texts": [f"text of {j}"], "finish_reasons": ["length"]},
                             {"tokens": 4.0, "prompt_tokens": 5.0}, [])
            for j in job_ids])


def test_bad_lines_fail_alone_with_line_field_and_message_and_the_rest_run(api: Api) -> None:
    body = _jsonl([
        _text("a"),
        b"{not json",
        {"custom_id": "b", "model": "tiny-lm", "input": {"prompt": "x", "max_new_tokens": 0}},
        b"",  # a blank line is skipped, and still counts in the line numbers
        _text("a", "again"),  # duplicate custom_id
        {"model": "tiny-lm", "input": {"prompt": "no id"}},
        {"custom_id": "c", "model": "no-such-model", "input": {"prompt": "x"}},
        {"custom_id": "d", "model": "tiny-lm", "input": {"prompt": "x"}, "colour": "red"},
        _text("e", "The sea"),
        {**_text("f"), "idempotency_key": "k1"},  # lines are told apart by custom_id
    ])
    r = api.c.post("/v1/batches", content=body, headers={**api.h["client"], **JSONL})
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["object"] == "batch" and b["id"].startswith("batch_") and b["endpoint"] == "/v1/jobs"
    assert b["status"] == "in_progress" and b["input_file_id"] is None
    assert b["request_counts"] == {"total": 9, "completed": 0, "failed": 7}
    errors = {e["line"]: e for e in b["errors"]["data"]}
    assert sorted(errors) == [2, 3, 5, 6, 7, 8, 10]
    assert errors[10]["code"] == "unsupported_parameter" and errors[10]["param"] == "idempotency_key"
    assert errors[2]["code"] == "invalid_json"
    assert errors[3]["param"] == "input.max_new_tokens" and errors[3]["message"]
    assert errors[5]["code"] == "duplicate_custom_id" and errors[5]["param"] == "custom_id"
    assert errors[6]["code"] == "invalid_custom_id"
    assert errors[7]["code"] == "unknown_model" and errors[7]["param"] == "model"
    assert errors[8]["param"] == "colour"

    rows = _results(api, b["id"])
    assert [(x["line"], x["custom_id"], x["status"]) for x in rows] == [
        (1, "a", "queued"), (2, None, "invalid"), (3, "b", "invalid"), (5, "a", "invalid"), (6, None, "invalid"),
        (7, "c", "invalid"), (8, "d", "invalid"), (9, "e", "queued"), (10, "f", "invalid")]
    assert rows[0]["response"] is None and rows[0]["job_id"]
    refused = rows[2]["response"]
    assert refused["status_code"] == 422 and refused["request_id"] is None
    assert refused["body"]["error"]["param"] == "input.max_new_tokens"
    assert refused["body"]["error"]["type"] == "invalid_request_error"
    # The good lines are ordinary jobs of the batch, visible as any job is.
    job = api.c.get(f"/v1/jobs/{rows[0]['job_id']}", headers=api.h["client"]).json()
    assert job["batch_id"] == b["id"] and job["status"] == "queued" and job["input"]["prompt"] == "Once upon a time"


def test_request_counts_follow_the_jobs_and_results_keep_input_order(api: Api) -> None:
    lines = [_text(f"req-{i}", f"prompt {i}") for i in range(6)]
    b = api.c.post("/v1/batches", content=_jsonl(lines), headers={**api.h["client"], **JSONL}).json()
    ids = [x["job_id"] for x in _results(api, b["id"])]
    _finish(api.db, ids[3:5], fail={ids[4]})
    mid = api.c.get(f"/v1/batches/{b['id']}", headers=api.h["client"]).json()
    assert mid["status"] == "in_progress" and mid["output_file_id"] is None
    assert mid["request_counts"] == {"total": 6, "completed": 1, "failed": 1}
    rows = _results(api, b["id"])
    assert [x["custom_id"] for x in rows] == [f"req-{i}" for i in range(6)]
    assert rows[3]["status"] == "succeeded" and rows[3]["response"]["status_code"] == 200
    assert rows[3]["response"]["body"]["output"]["texts"] == [f"text of {ids[3]}"]
    assert rows[4]["response"]["status_code"] == 500
    assert rows[4]["response"]["body"]["error"]["code"] == "engine_error"
    _finish(api.db, ids[:3] + ids[5:])
    done = api.c.get(f"/v1/batches/{b['id']}", headers=api.h["client"]).json()
    assert done["status"] == "completed" and done["completed_at"] and done["finalizing_at"]
    assert done["request_counts"] == {"total": 6, "completed": 5, "failed": 1}
    out = api.c.get(f"/v1/files/{done['output_file_id']}/content", headers=api.h["client"]).text.splitlines()
    assert [json.loads(x)["custom_id"] for x in out] == ["req-0", "req-1", "req-2", "req-3", "req-5"]
    err = [json.loads(x) for x in
           api.c.get(f"/v1/files/{done['error_file_id']}/content", headers=api.h["client"]).text.splitlines()]
    assert [x["custom_id"] for x in err] == ["req-4"] and err[0]["response"]["request_id"] == ids[4]


def test_cancel_cancels_queued_jobs_and_running_ones_finish(api: Api) -> None:
    b = api.c.post("/v1/batches", content=_jsonl([_text(f"c{i}") for i in range(5)]),
                   headers={**api.h["client"], **JSONL}).json()
    ids = [x["job_id"] for x in _results(api, b["id"])]
    with api.db.session() as s:  # two jobs are running on a worker
        jobstate.claim_many(s, ids[:2], "w1", 60, 3)
    r = api.c.post(f"/v1/batches/{b['id']}/cancel", headers=api.h["client"])
    assert r.status_code == 200
    c = r.json()
    assert c["status"] == "cancelling" and c["cancelling_at"]
    assert c["request_counts"] == {"total": 5, "completed": 0, "failed": 3}
    with api.db.session() as s:
        statuses = {j.id: j.status for j in s.query(Job).filter(Job.batch_id == b["id"])}
    assert [statuses[i] for i in ids] == ["running", "running", "canceled", "canceled", "canceled"]
    with api.db.session() as s:
        jobstate.write_outcomes(s, "w1", [jobstate.Success(i, {"texts": ["t"], "finish_reasons": ["eos"]}, {}, [])
                                          for i in ids[:2]])
    done = api.c.get(f"/v1/batches/{b['id']}", headers=api.h["client"]).json()
    assert done["status"] == "cancelled" and done["cancelled_at"]
    assert done["request_counts"] == {"total": 5, "completed": 2, "failed": 3}
    rows = _results(api, b["id"])
    assert [x["status"] for x in rows] == ["succeeded", "succeeded", "canceled", "canceled", "canceled"]
    assert rows[2]["response"]["body"]["error"]["code"] == "job_canceled"
    again = api.c.post(f"/v1/batches/{b['id']}/cancel", headers=api.h["client"])
    assert again.status_code == 409 and again.json()["error"]["code"] == "batch_ended"


def test_batches_are_private_and_for_client_keys(api: Api) -> None:
    b = api.c.post("/v1/batches", content=_jsonl([_text("x")]), headers={**api.h["client"], **JSONL}).json()
    for path in (f"/v1/batches/{b['id']}", f"/v1/batches/{b['id']}/results"):
        r = api.c.get(path, headers=api.h["other"])
        assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    assert api.c.post(f"/v1/batches/{b['id']}/cancel", headers=api.h["other"]).status_code == 404
    assert api.c.get("/v1/batches", headers=api.h["mod"]).status_code == 403
    assert api.c.get("/v1/batches").status_code == 401
    assert [x["id"] for x in api.c.get("/v1/batches", headers=api.h["other"]).json()["data"]] == []


def test_list_is_newest_first_with_openai_cursor(api: Api) -> None:
    made = [api.c.post("/v1/batches", content=_jsonl([_text("x")]), headers={**api.h["other"], **JSONL}).json()["id"]
            for _ in range(3)]
    page = api.c.get("/v1/batches?limit=2", headers=api.h["other"]).json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [x["id"] for x in page["data"]] == made[::-1][:2] and page["last_id"] == made[1]
    rest = api.c.get(f"/v1/batches?limit=2&after={page['last_id']}", headers=api.h["other"]).json()
    assert [x["id"] for x in rest["data"]] == [made[0]] and rest["has_more"] is False


def test_line_limit_empty_input_and_unknown_endpoint(api: Api) -> None:
    r = api.c.post("/v1/batches", content=_jsonl([_text(f"n{i}") for i in range(25)]),
                   headers={**api.h["client"], **JSONL})
    b = r.json()
    assert b["request_counts"]["total"] == 20  # batch_max_lines in this fixture
    assert b["errors"]["data"][0]["code"] == "too_many_lines" and b["errors"]["data"][0]["line"] == 21
    empty = api.c.post("/v1/batches", content=b"\n\n", headers={**api.h["client"], **JSONL}).json()
    assert empty["status"] == "failed" and empty["errors"]["data"][0]["code"] == "empty_file"
    r = api.c.post("/v1/batches?endpoint=/v1/chat/completions", content=_jsonl([_text("x")]),
                   headers={**api.h["client"], **JSONL})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_endpoint"
    assert r.json()["error"]["param"] == "endpoint"


def test_openai_lines_are_validated_per_line_in_openai_shape(api: Api) -> None:
    def line(cid: str, body: dict[str, Any], url: str = "/v1/completions", method: str = "POST") -> dict[str, Any]:
        return {"custom_id": cid, "method": method, "url": url, "body": body}

    ok = {"model": "tiny-lm", "prompt": "The sea", "max_tokens": 4, "seed": 1}
    body = _jsonl([
        line("ok", ok),
        line("logprobs", {**ok, "logprobs": 2}),
        line("penalty", {**ok, "frequency_penalty": 0.5}),
        line("neutral", {**ok, "frequency_penalty": 0, "echo": False, "logprobs": None}),
        line("chat", ok, url="/v1/chat/completions"),
        line("get", ok, method="GET"),
        line("unknown", {**ok, "tools": []}),
        line("image", {**ok, "model": "dcgan-digits"}),
        line("toolong", {**ok, "max_tokens": 100000}),
        {"custom_id": "short", "model": "tiny-lm", "input": {"prompt": "x"}},
    ])
    r = api.c.post("/v1/batches?endpoint=/v1/completions", content=body, headers={**api.h["client"], **JSONL})
    b = r.json()
    assert b["endpoint"] == "/v1/completions"
    errors = {e["line"]: (e["code"], e["param"]) for e in b["errors"]["data"]}
    assert errors == {
        2: ("unsupported_parameter", "body.logprobs"), 3: ("unsupported_parameter", "body.frequency_penalty"),
        5: ("unsupported_endpoint", "url"), 6: ("invalid_method", "method"), 7: ("unknown_parameter", "body.tools"),
        8: ("model_not_supported", "body.model"), 9: ("validation_error", "body.max_tokens"),
        10: ("invalid_request", "body")}
    rows = _results(api, b["id"])
    assert [x["status"] for x in rows][:4] == ["queued", "invalid", "invalid", "queued"]
    assert rows[1]["response"]["status_code"] == 400
    assert rows[1]["response"]["body"]["error"]["param"] == "body.logprobs"
    job = api.c.get(f"/v1/jobs/{rows[0]['job_id']}", headers=api.h["client"]).json()
    # OpenAI's names and defaults become genqueue's: max_tokens → max_new_tokens, temperature 1.
    assert job["input"]["max_new_tokens"] == 4 and job["input"]["temperature"] == 1.0 and job["input"]["seed"] == 1


def test_a_body_past_the_upload_limit_is_413_and_its_batch_says_so(api: Api) -> None:
    def body() -> Iterator[bytes]:  # no Content-Length: the limit is found while reading
        for i in range(400):
            yield json.dumps(_text(f"big-{i}", "x" * 400)).encode() + b"\n"

    r = api.c.post("/v1/batches", content=body(), headers={**api.h["other"], **JSONL})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    [b] = api.c.get("/v1/batches", headers=api.h["other"]).json()["data"]
    assert b["status"] in ("failed", "in_progress")
    assert b["errors"]["data"][-1]["code"] == "upload_incomplete"


def test_a_batch_whose_reader_died_is_moved_on_when_read(api: Api) -> None:
    from genqueue_api.services import batches as service
    from genqueue_api.services.batch_builder import Builder

    state = api.c.app.state.genqueue  # type: ignore[attr-defined]
    batch_id = service.start(state, api.keys["client"], "/v1/jobs", None, None)
    builder = Builder(state, api.keys["client"], batch_id, "/v1/jobs")
    builder.add([(1, json.dumps(_text("a")).encode()), (2, b"{oops")])  # ... and the process died here
    fresh = api.c.get(f"/v1/batches/{batch_id}", headers=api.h["client"]).json()
    assert fresh["status"] == "validating" and fresh["request_counts"]["total"] == 2
    with api.db.session() as s:  # as if the last chunk had been stored 20 minutes ago
        s.execute(update(Batch).where(Batch.id == batch_id).values(read_at=utcnow() - dt.timedelta(minutes=20)))
        s.commit()
    b = api.c.get(f"/v1/batches/{batch_id}", headers=api.h["client"]).json()
    assert b["status"] == "in_progress" and b["in_progress_at"]
    assert [e["code"] for e in b["errors"]["data"]] == ["upload_incomplete", "invalid_json"]


def test_files_upload_list_content_and_delete(api: Api) -> None:
    raw = _jsonl([_text("a"), _text("b")])
    r = api.c.post("/v1/files", files={"file": ("in.jsonl", raw)}, data={"purpose": "batch"}, headers=api.h["client"])
    assert r.status_code == 200, r.text
    f = r.json()
    assert f["object"] == "file" and f["bytes"] == len(raw) and f["lines"] == 2 and f["filename"] == "in.jsonl"
    assert api.c.get(f"/v1/files/{f['id']}/content", headers=api.h["client"]).content == raw
    b = api.c.post("/v1/batches", json={"input_file_id": f["id"], "endpoint": "/v1/jobs", "completion_window": "24h"},
                   headers=api.h["client"]).json()
    assert b["input_file_id"] == f["id"] and b["request_counts"]["total"] == 2
    listed = api.c.get("/v1/files", headers=api.h["client"]).json()
    assert {x["purpose"] for x in listed["data"]} == {"batch", "batch_output", "batch_error"}
    only = api.c.get("/v1/files?purpose=batch&limit=1", headers=api.h["client"]).json()
    assert [x["id"] for x in only["data"]] == [f["id"]] and only["has_more"] is False
    page = api.c.get("/v1/files?limit=2&order=asc", headers=api.h["client"]).json()
    rest = api.c.get(f"/v1/files?limit=2&order=asc&after={page['last_id']}", headers=api.h["client"]).json()
    assert [x["id"] for x in page["data"] + rest["data"]] == [x["id"] for x in listed["data"]][::-1]
    assert api.c.get("/v1/files", headers=api.h["other"]).json()["data"] == []
    gone = api.c.delete(f"/v1/files/{f['id']}", headers=api.h["client"])
    assert gone.json() == {"id": f["id"], "object": "file", "deleted": True}
    assert api.c.get(f"/v1/files/{f['id']}", headers=api.h["client"]).status_code == 404
    after = api.c.get(f"/v1/batches/{b['id']}", headers=api.h["client"]).json()
    assert after["input_file_id"] is None and after["request_counts"]["total"] == 2
    # More lines than a batch may hold: refused at upload, and nothing of it kept.
    r = api.c.post("/v1/files", files={"file": ("big.jsonl", _jsonl([_text(f"n{i}") for i in range(21)]))},
                   data={"purpose": "batch"}, headers=api.h["client"])
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_lines"
    assert len(api.c.get("/v1/files?purpose=batch", headers=api.h["client"]).json()["data"]) == 0
