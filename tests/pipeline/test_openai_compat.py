"""The official `openai` package, unchanged, against a real stack (API, worker, Redis, SQL): completions,
files and batches, and the errors of what genqueue cannot honour."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from genqueue.db.models import Job


@pytest.fixture
def oa(running: Any) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=running.stack.base_url + "/v1", api_key=running.keys["client"],
                           max_retries=0, timeout=120)
    yield client
    client.close()


def _until_ended(oa: openai.OpenAI, batch_id: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = oa.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "cancelled"):
            return b
        time.sleep(0.3)
    raise AssertionError(f"batch {batch_id} still {b.status} after {timeout} s")


def test_completions_create_runs_a_queued_job(oa: openai.OpenAI, running: Any) -> None:
    params: dict[str, Any] = {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0.8, "top_p": 0.9,
                              "n": 2, "stop": ["\n\n"], "seed": 7}
    c = oa.completions.create(model="tiny-lm", **params)
    assert c.object == "text_completion" and c.id.startswith("cmpl-") and c.model == "tiny-lm"
    assert [ch.index for ch in c.choices] == [0, 1]
    assert all(ch.finish_reason in ("stop", "length") for ch in c.choices)
    assert c.usage is not None and 0 < c.usage.completion_tokens <= 16 and c.usage.prompt_tokens > 0
    # It was an ordinary job: the owner reads it by id, and POST /v1/jobs with the same input gives the
    # same texts (same seed, same model version).
    job_id = c.id.removeprefix("cmpl-")
    job = running.client.get(job_id)
    assert job["status"] == "succeeded" and job["input"]["max_new_tokens"] == 8 and job["input"]["n"] == 2
    same = running.client.submit("tiny-lm", {"prompt": params["prompt"], "max_new_tokens": 8, "temperature": 0.8,
                                             "top_p": 0.9, "n": 2, "stop": ["\n\n"], "seed": 7})
    same = running.client.wait(same["id"])
    assert same["output"]["texts"] == [ch.text for ch in c.choices]


def test_what_genqueue_cannot_honour_fails_in_openai_shape(oa: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        oa.completions.create(model="tiny-lm", prompt="x", logprobs=2)
    assert e.value.code == "unsupported_parameter" and e.value.param == "logprobs"
    with pytest.raises(openai.BadRequestError) as e:
        oa.completions.create(model="tiny-lm", prompt=["one", "two"])
    assert e.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as e:
        oa.completions.create(model="tiny-lm", prompt="x", max_tokens=100_000)
    assert e.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        oa.completions.create(model="dcgan-digits", prompt="x")
    assert e.value.code == "model_not_supported"
    with pytest.raises(openai.NotFoundError) as e:
        oa.completions.create(model="no-such-model", prompt="x")
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        oa.completions.create(model="tiny-lm", prompt="x", extra_body={"guidance": 3})
    assert e.value.code == "unknown_parameter" and e.value.param == "guidance"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=oa.base_url, api_key="gq_wrong", max_retries=0).completions.create(
            model="tiny-lm", prompt="x")
    # Neutral values ask for nothing and are accepted.
    ok = oa.completions.create(model="tiny-lm", prompt="The sea", max_tokens=2, echo=False, frequency_penalty=0,
                               presence_penalty=0, best_of=1, seed=1)
    assert len(ok.choices) == 1


def test_files_and_batches_through_the_openai_package(oa: openai.OpenAI) -> None:
    def line(cid: str, **body: Any) -> dict[str, Any]:
        return {"custom_id": cid, "method": "POST", "url": "/v1/completions",
                "body": {"model": "tiny-lm", "max_tokens": 4, "seed": 3, **body}}

    lines = [line("first", prompt="The sea"), line("bad", prompt="x", logprobs=1), line("second", prompt="A fox"),
             {**line("chat", prompt="x"), "url": "/v1/chat/completions"}, line("third", prompt="Once")]
    raw = "".join(json.dumps(x) + "\n" for x in lines).encode()
    f = oa.files.create(file=("requests.jsonl", raw), purpose="batch")
    assert f.id.startswith("file-") and f.bytes == len(raw) and f.purpose == "batch"
    assert oa.files.retrieve(f.id).filename == "requests.jsonl"
    assert oa.files.content(f.id).content == raw

    b = oa.batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h",
                          metadata={"run": "nightly"})
    assert b.input_file_id == f.id and b.endpoint == "/v1/completions" and b.metadata == {"run": "nightly"}
    assert b.status in ("in_progress", "completed") and b.request_counts is not None
    assert b.request_counts.total == 5
    assert b.errors is not None and [(e.line, e.param) for e in b.errors.data] == [(2, "body.logprobs"), (4, "url")]
    assert b.id in [x.id for x in oa.batches.list(limit=100)]

    done = _until_ended(oa, b.id)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 2)
    assert done.output_file_id and done.error_file_id
    out = [json.loads(x) for x in oa.files.content(done.output_file_id).text.splitlines()]
    assert [x["custom_id"] for x in out] == ["first", "second", "third"]
    for x in out:
        assert x["response"]["status_code"] == 200 and x["error"] is None
        assert x["response"]["body"]["object"] == "text_completion"
        assert isinstance(x["response"]["body"]["choices"][0]["text"], str)
    err = [json.loads(x) for x in oa.files.content(done.error_file_id).text.splitlines()]
    assert [(x["custom_id"], x["response"]["status_code"]) for x in err] == [("bad", 400), ("chat", 400)]
    assert err[0]["response"]["body"]["error"]["param"] == "body.logprobs"
    assert err[1]["response"]["body"]["error"]["code"] == "unsupported_endpoint"


def test_batch_cancel_through_the_openai_package(oa: openai.OpenAI) -> None:
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
              "body": {"model": "tiny-lm", "prompt": f"Story {i}:", "max_tokens": 64, "seed": i}} for i in range(300)]
    f = oa.files.create(file=("many.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode()), purpose="batch")
    b = oa.batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h")
    c = oa.batches.cancel(b.id)
    assert c.status in ("cancelling", "cancelled") and c.cancelling_at is not None
    done = _until_ended(oa, b.id)
    assert done.status == "cancelled" and done.request_counts is not None
    counts = done.request_counts
    # Running jobs finished; the queued ones were canceled and count as failed.
    assert counts.total == 300 and counts.completed + counts.failed == 300 and counts.failed > 0
    with pytest.raises(openai.ConflictError):
        oa.batches.cancel(b.id)


def test_batch_errors_for_bad_input_files(oa: openai.OpenAI, running: Any) -> None:
    with pytest.raises(openai.NotFoundError):
        oa.batches.create(input_file_id="file-nope", endpoint="/v1/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError) as e:
        oa.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions",  # type: ignore[arg-type]
                          completion_window="24h")
    assert e.value.param == "endpoint"
    f = oa.files.create(file=("x.jsonl", b'{"custom_id": "a"}\n'), purpose="batch")
    other = openai.OpenAI(base_url=oa.base_url, api_key=running.keys["other"], max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(f.id)
    with pytest.raises(openai.BadRequestError) as e:
        oa.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    assert e.value.param == "purpose"


def test_a_completion_that_outlasts_its_timeout_is_504_and_its_job_canceled(lone_stack: Any) -> None:
    lone = lone_stack(workers=0, extra_env={"GENQUEUE_COMPLETIONS_TIMEOUT_S": "1"})  # nothing will run it
    oa = openai.OpenAI(base_url=lone.stack.base_url + "/v1", api_key=lone.secret, max_retries=0, timeout=30)
    with pytest.raises(openai.APIStatusError) as e:
        oa.completions.create(model="tiny-lm", prompt="Once", max_tokens=4)
    assert e.value.status_code == 504 and e.value.code == "timeout"
    with lone.db.session() as s:
        statuses = [j.status for j in s.query(Job)]
    assert statuses == ["canceled"]
