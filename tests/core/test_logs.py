"""Log lines: JSON or text by setting, job fields from bind() and extra=, kept apart between threads."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest

from genqueue import logs
from genqueue.settings import Settings


@pytest.fixture
def captured() -> logging.Handler:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.stream = stream
    return handler


def lines(handler: logging.StreamHandler) -> list[str]:  # type: ignore[type-arg]
    return handler.stream.getvalue().splitlines()


def _logger(name: str, handler: logging.StreamHandler, formatter: logging.Formatter) -> logging.Logger:  # type: ignore[type-arg]
    """A logger that writes only to ``handler``, in ``formatter``'s format."""
    handler.setFormatter(formatter)
    log = logging.getLogger(name)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


def test_the_format_follows_the_environment_unless_set() -> None:
    assert Settings(environment="development").resolved_log_format == "text"
    assert Settings(environment="production", webhook_secret="x" * 16).resolved_log_format == "json"
    assert Settings(environment="production", webhook_secret="x" * 16, log_format="text").resolved_log_format == "text"


def test_json_lines_carry_bound_and_extra_fields_per_thread(captured: logging.StreamHandler) -> None:  # type: ignore[type-arg]
    log = _logger("gq-test-json", captured, logs.JsonFormatter())

    def work(job: str) -> None:
        with logs.bind(job_id=job, model="tiny-lm"):
            log.info("inside")
        log.info("outside")

    threads = [threading.Thread(target=work, args=(f"job_{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logs.job_event(log, "succeeded", "job_x", model="dcgan-digits", code=None)
    parsed = [json.loads(line) for line in lines(captured)]
    inside = sorted(p["job_id"] for p in parsed if p["msg"] == "inside")
    assert inside == [f"job_{i}" for i in range(4)]  # each thread saw its own job
    assert all("job_id" not in p for p in parsed if p["msg"] == "outside")  # bind() ends with its block
    last = parsed[-1]
    assert (last["job_id"], last["event"], last["model"], last["level"]) == ("job_x", "succeeded", "dcgan-digits", "info")
    assert "code" not in last  # fields that are None are left out


def test_text_lines_append_the_fields(captured: logging.StreamHandler) -> None:  # type: ignore[type-arg]
    log = _logger("gq-test-text", captured, logs.TextFormatter())
    with logs.bind(batch_id="batch_1"):
        logs.job_event(log, "submitted", "job_1", model="tiny-lm")
    (line,) = lines(captured)
    assert line.endswith("job job_1 submitted [batch_id=batch_1 job_id=job_1 event=submitted model=tiny-lm]")


def test_a_bulk_is_one_line_per_model_that_names_every_job(captured: logging.StreamHandler) -> None:  # type: ignore[type-arg]
    log = _logger("gq-test-bulk", captured, logs.TextFormatter())
    rows = [{"id": f"job_{i}", "model": "tiny-lm" if i % 3 else "dcgan-digits"} for i in range(7)]
    logs.jobs_events(log, "submitted", rows)
    image, text = lines(captured)  # in the order of their first job
    assert text.endswith("4 jobs submitted [job_ids=job_1,job_2,job_4,job_5 event=submitted model=tiny-lm]")
    assert image.endswith("3 jobs submitted [job_ids=job_0,job_3,job_6 event=submitted model=dcgan-digits]")
    captured.setFormatter(logs.JsonFormatter())
    logs.jobs_events(log, "submitted", rows[:2])
    first, second = (json.loads(line) for line in lines(captured)[2:])
    assert (first["job_ids"], first["model"], second["job_ids"]) == (["job_0"], "dcgan-digits", ["job_1"])
