"""Batch lines are charged to the key's quotas like a bulk's items: past the jobs-in-flight limit a line
fails alone with the quota's error (in the results, the batch's errors and OpenAI's error file), lines
refused by validation use no quota, places come back as jobs end, and the batch's HTTP request counts
once for requests per second. A real API (uvicorn) on real Redis and SQL; jobs end through the worker's
own job-state path (genqueue.jobstate)."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import httpx
import openai

from genqueue import jobstate
from genqueue.db.models import Job
from tests.quota_windows import in_one_second

JSONL = {"content-type": "application/jsonl"}
BAD = {"model": "tiny-lm", "input": {"prompt": "hi", "temperature": 99}}


def line(cid: str) -> dict[str, Any]:
    return {"custom_id": cid, "model": "tiny-lm", "input": {"prompt": "hi", "max_new_tokens": 2}}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def put_quota(api, **limits: int | None) -> None:  # type: ignore[no-untyped-def]
    r = httpx.put(f"{api.url}/v1/keys/{api.key_ids['client']}/quota", json=limits, headers=api.headers("admin"))
    assert r.status_code == 200, r.text


def in_flight(api) -> int:  # type: ignore[no-untyped-def]
    r = httpx.get(f"{api.url}/v1/keys/{api.key_ids['client']}/quota", headers=api.headers("admin"))
    return int(r.json()["in_flight"])


def jobs_of(api) -> int:  # type: ignore[no-untyped-def]
    with api.db.session() as s:
        return s.query(Job).filter(Job.owner_id == api.key_ids["client"]).count()


def post_batch(api, lines: list[dict[str, Any]]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    r = httpx.post(f"{api.url}/v1/batches", content=jsonl(lines), headers={**api.headers(), **JSONL}, timeout=120)
    assert r.status_code == 200, r.text
    return dict(r.json())


def results(api, batch_id: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    r = httpx.get(f"{api.url}/v1/batches/{batch_id}/results", headers=api.headers(), timeout=60)
    assert r.status_code == 200, r.text
    return [json.loads(x) for x in r.text.splitlines()]


def finish(api, job_ids: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Claims the jobs and writes their outcomes the way a worker does."""
    with api.db.session() as s:
        jobstate.claim_many(s, job_ids, "w1", 60, 3)
    with api.db.session() as s:
        jobstate.write_outcomes(s, "w1", [
            jobstate.Success(j, {"texts": [f"text of {j}"], "finish_reasons": ["length"]},
                             {"tokens": 2.0, "prompt_tokens": 2.0}, [])
            for j in job_ids])


def assert_quota_refusal(res: dict[str, Any], limit: int) -> None:
    assert res["status"] == "invalid" and res["job_id"] is None
    assert res["response"]["status_code"] == 429 and res["response"]["request_id"] is None
    err = res["response"]["body"]["error"]
    assert err["code"] == "rate_limited" and err["type"] == "rate_limit_error"
    assert err["details"] == [{"quota": "jobs_in_flight", "limit": limit}]
    assert f"{limit} jobs queued or running" in err["message"]


def test_lines_past_the_in_flight_limit_fail_alone_and_places_come_back_as_jobs_end(api_server) -> None:  # type: ignore[no-untyped-def]
    api = api_server()
    put_quota(api, jobs_in_flight=3)
    # A line refused by validation uses no place: the three places go to the first three valid lines.
    b = post_batch(api, [{"custom_id": "bad", **BAD}, *(line(f"a{i}") for i in range(6))])
    assert b["status"] == "in_progress"
    assert b["request_counts"] == {"total": 7, "completed": 0, "failed": 4}
    errors = {e["line"]: e for e in b["errors"]["data"]}
    assert sorted(errors) == [1, 5, 6, 7]
    assert errors[1]["code"] == "validation_error"
    assert {errors[n]["code"] for n in (5, 6, 7)} == {"rate_limited"}
    rows = results(api, b["id"])
    assert [(r["custom_id"], r["status"]) for r in rows] == [
        ("bad", "invalid"), ("a0", "queued"), ("a1", "queued"), ("a2", "queued"),
        ("a3", "invalid"), ("a4", "invalid"), ("a5", "invalid")]
    for r in rows[4:]:
        assert_quota_refusal(r, 3)
    assert jobs_of(api) == 3 and in_flight(api) == 3

    # Nothing ended: a second batch gets no place at all, and fails as a batch with no valid line.
    full = post_batch(api, [line("b0"), line("b1")])
    assert full["status"] == "failed" and full["request_counts"] == {"total": 2, "completed": 0, "failed": 2}
    for r in results(api, full["id"]):
        assert_quota_refusal(r, 3)
    assert jobs_of(api) == 3

    # Two jobs end: the next batch gets exactly their two places (ended jobs are found in SQL at most once
    # a second, so wait past that pause).
    finish(api, [r["job_id"] for r in rows[1:3]])
    time.sleep(1.05)
    again = post_batch(api, [line(f"c{i}") for i in range(4)])
    assert again["request_counts"] == {"total": 4, "completed": 0, "failed": 2}
    rows = results(api, again["id"])
    assert [r["status"] for r in rows] == ["queued", "queued", "invalid", "invalid"]
    for r in rows[2:]:
        assert_quota_refusal(r, 3)
    assert jobs_of(api) == 5 and in_flight(api) == 3


def test_every_chunk_is_charged_and_the_request_once_per_second(api_server) -> None:  # type: ignore[no-untyped-def]
    api = api_server()
    # 1,005 lines are two chunks (of 1,000 and 5): the limit falls inside the second one. The batch is one
    # request for requests_per_s=1, however many chunks it has.
    put_quota(api, jobs_in_flight=1002, requests_per_s=1)
    time.sleep(1 - time.time() % 1)
    b = post_batch(api, [line(f"l{i}") for i in range(1005)])
    assert b["request_counts"] == {"total": 1005, "completed": 0, "failed": 3}
    assert [e["line"] for e in b["errors"]["data"]] == [1003, 1004, 1005]
    assert jobs_of(api) == 1002
    rows = results(api, b["id"])
    assert all(r["status"] == "queued" for r in rows[:1002])
    for r in rows[1002:]:
        assert_quota_refusal(r, 1002)
    # A second batch request in the same second is refused as a whole, before any batch is made.
    def two() -> tuple[list[httpx.Response], int]:
        before = len(httpx.get(f"{api.url}/v1/batches", headers=api.headers()).json()["data"])
        return [httpx.post(f"{api.url}/v1/batches", content=jsonl([line(f"x{i}")]),
                           headers={**api.headers(), **JSONL}) for i in range(2)], before

    codes, before = in_one_second(two)
    assert [r.status_code for r in codes] == [200, 429]
    assert codes[1].headers["Retry-After"] == "1"
    err = codes[1].json()["error"]
    assert err["code"] == "rate_limited" and err["type"] == "rate_limit_error"
    assert err["details"][0]["quota"] == "requests_per_s"
    listed = httpx.get(f"{api.url}/v1/batches", headers=api.headers()).json()["data"]
    assert len(listed) == before + 1  # the refused request made no batch


def test_openai_batches_report_refused_lines_in_the_error_file(api_server) -> None:  # type: ignore[no-untyped-def]
    api = api_server()
    put_quota(api, jobs_in_flight=2)
    oa = openai.OpenAI(base_url=api.url + "/v1", api_key=api.keys["client"], max_retries=0, timeout=60)
    try:
        raw = jsonl([{"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
                      "body": {"model": "tiny-lm", "prompt": "Once", "max_tokens": 2}} for i in range(4)])
        f = oa.files.create(file=("in.jsonl", io.BytesIO(raw)), purpose="batch")
        b = oa.batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h")
        assert b.request_counts is not None and (b.request_counts.total, b.request_counts.failed) == (4, 2)
        finish(api, [r["job_id"] for r in results(api, b.id)[:2]])
        done = oa.batches.retrieve(b.id)
        assert done.status == "completed" and done.output_file_id and done.error_file_id
        out = [json.loads(x) for x in oa.files.content(done.output_file_id).text.splitlines()]
        assert [o["custom_id"] for o in out] == ["r0", "r1"]
        err = [json.loads(x) for x in oa.files.content(done.error_file_id).text.splitlines()]
        assert [e["custom_id"] for e in err] == ["r2", "r3"]
        for e in err:
            assert e["response"]["status_code"] == 429
            body = e["response"]["body"]["error"]
            assert (body["type"], body["code"], body["param"]) == ("rate_limit_error", "rate_limited", None)
            assert body["message"] == "this key may have 2 jobs queued or running; submit this line again later"
    finally:
        oa.close()
