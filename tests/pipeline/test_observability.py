"""Metrics, logs and `genqueue status` after real jobs through a real stack (API and worker processes on
real Redis and SQL): the values, not only the names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from genqueue.client import Client
from genqueue.db.models import Job, Review
from genqueue.enums import ReviewStatus
from genqueue.stack import Stack

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    text = httpx.get(url, timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def worker_metrics_url(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.extra_env['GENQUEUE_WORKER_METRICS_PORT']}/metrics"


def test_worker_and_api_metrics_count_real_jobs(running: Any) -> None:
    c: Client = running.client
    wurl, aurl = worker_metrics_url(running.stack), running.stack.base_url + "/metrics"
    w0 = scrape(wurl)
    texts = [c.submit("tiny-lm", {"prompt": f"metrics {i}", "max_new_tokens": 6, "seed": i}) for i in range(3)]
    images = [c.submit("dcgan-digits", {"num_images": 2, "seed": i}) for i in range(2)]
    done = [c.wait(j["id"], timeout=90) for j in texts + images]
    assert [j["status"] for j in done] == ["succeeded"] * 5
    w1 = scrape(wurl)

    for model, n in (("tiny-lm", 3), ("dcgan-digits", 2)):
        assert delta(w1, w0, "genqueue_worker_jobs_total", model=model, outcome="succeeded") == n
        for hist in ("genqueue_worker_batch_size", "genqueue_worker_job_latency_seconds",
                     "genqueue_worker_queue_wait_seconds", "genqueue_worker_inference_seconds"):
            assert delta(w1, w0, f"{hist}_count", model=model) == n, (hist, model)
    # tokens and images: the jobs' own counts (rates of these counters are tokens/s and images/s)
    tokens = sum(j["metrics"]["tokens"] for j in done[:3])
    assert 0 < tokens <= 18
    assert delta(w1, w0, "genqueue_worker_tokens_total", model="tiny-lm") == tokens
    assert delta(w1, w0, "genqueue_worker_images_total", model="dcgan-digits") == 4
    # time in the engine, as each job's metrics recorded it (ms, rounded to 3 places there)
    engine_s = sum(j["metrics"]["wait_ms"] + j["metrics"]["inference_ms"] for j in done[3:]) / 1000
    assert abs(delta(w1, w0, "genqueue_worker_inference_seconds_sum", model="dcgan-digits") - engine_s) < 1e-4
    queue_s = sum(j["metrics"]["queue_ms"] for j in done[:3]) / 1000
    assert abs(delta(w1, w0, "genqueue_worker_queue_wait_seconds_sum", model="tiny-lm") - queue_s) < 1e-3
    # the provider each model runs on, as the worker announces it in its heartbeat
    beats = running.stack.worker_heartbeats()
    assert len(beats) == 1
    for ref, provider in beats[0]["providers"].items():
        assert value(w1, "genqueue_worker_provider_info", model=ref, provider=provider) == 1
    assert ("genqueue_queue_depth", frozenset({("queue", "gen.tiny-lm")})) in w1

    # API: exactly the requests made between two scrapes, by route template and status
    a0 = scrape(aurl)
    headers = {"Authorization": f"Bearer {running.keys['client']}"}
    with httpx.Client(base_url=running.stack.base_url, headers=headers, timeout=30) as h:
        for j in done[:4]:
            assert h.get(f"/v1/jobs/{j['id']}").status_code == 200
        assert h.post("/v1/jobs", json={"model": "no-such-model", "input": {}}).status_code == 404
        assert h.get("/no/such/path").status_code == 404
    a1 = scrape(aurl)
    get_job = {"route": "/v1/jobs/{job_id}", "method": "GET"}
    assert delta(a1, a0, "genqueue_api_requests_total", **get_job, status="200") == 4
    assert delta(a1, a0, "genqueue_api_request_duration_seconds_count", **get_job) == 4
    assert delta(a1, a0, "genqueue_api_requests_total", route="/v1/jobs", method="POST", status="404") == 1
    assert delta(a1, a0, "genqueue_api_requests_total", route="unmatched", method="GET", status="404") == 1
    assert not any(name == "genqueue_api_requests_total" and dict(labels)["route"].startswith("/v1/jobs/job")
                   for name, labels in a1), "raw ids must never become labels"
    # the store gauges read SQL: the review queue as the database holds it
    with running.db.session() as s:
        pending = s.execute(select(func.count()).select_from(Review)
                            .where(Review.status == ReviewStatus.pending.value)).scalar_one()
    assert sum(v for (name, labels), v in a1.items()
               if name == "genqueue_review_pending" and dict(labels).get("status") == "pending") == pending


def genqueue(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENQUEUE_")}
    env.update(stack.env())
    return subprocess.run([sys.executable, "-m", "genqueue.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_status_names_the_live_worker_and_counts_jobs_as_sql_does(running: Any) -> None:
    def counts() -> dict[str, int]:
        with running.db.session() as s:
            return dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())

    # The worker may still be finishing earlier tests' jobs: compare with SQL as it stood on both sides of
    # the snapshot, once the counts did not move meanwhile.
    deadline = time.monotonic() + 60
    while True:
        before = counts()
        p = genqueue(running.stack, "status", "--json")
        assert p.returncode == 0, p.stderr
        by_status = counts()
        if before == by_status or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    snap = json.loads(p.stdout)
    beat = running.stack.worker_heartbeats()[0]
    assert [w["id"] for w in snap["workers"]] == [beat["id"]]
    assert snap["workers"][0]["models"] == ["dcgan-digits", "tiny-lm"]
    assert snap["workers"][0]["providers"] == beat["providers"]
    assert set(snap["queues"]) >= {"gen.tiny-lm", "gen.dcgan-digits"}
    assert {k: v for k, v in snap["jobs"].items() if v} == by_status
    text = genqueue(running.stack, "status")
    assert text.returncode == 0 and f"workers alive: 1\n  {beat['id']}" in text.stdout


def test_status_and_metrics_show_what_waits_without_a_worker(lone_stack: Callable[..., Any]) -> None:
    lone = lone_stack(workers=0)
    with Client(lone.stack.base_url, lone.secret) as c:
        # Three priorities, so three messages however the API coalesces its publishes.
        ids = [c.submit("tiny-lm", {"prompt": f"waiting {i}", "max_new_tokens": 4}, priority=p)["id"]
               for i, p in enumerate((9, 5, 0))]
    deadline = time.monotonic() + 15  # single submits are published just after their responses
    while True:
        p = genqueue(lone.stack, "status", "--json")
        assert p.returncode == 0, p.stderr
        snap = json.loads(p.stdout)
        if snap["queues"].get("gen.tiny-lm") == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert snap["workers"] == []
    assert snap["queues"]["gen.tiny-lm"] == 3  # the messages in Redis, every priority bucket
    assert snap["jobs"]["queued"] == 3 and snap["jobs"]["succeeded"] == 0
    assert snap["oldest_queued"]["id"] == ids[0] and snap["oldest_queued"]["age_s"] >= 0
    text = genqueue(lone.stack, "status").stdout
    assert "workers alive: 0" in text and "gen.tiny-lm  3" in text and f"oldest queued job: {ids[0]}" in text
    m = scrape(lone.stack.base_url + "/metrics")
    assert value(m, "genqueue_jobs", status="queued") == 3
    assert value(m, "genqueue_jobs", status="running") == 0
    assert value(m, "genqueue_oldest_queued_job_age_seconds") > 0


def test_one_grep_follows_a_job_through_json_logs(lone_stack: Callable[..., Any]) -> None:
    lone = lone_stack(extra_env={"GENQUEUE_LOG_FORMAT": "json"})
    with Client(lone.stack.base_url, lone.secret) as c:
        job = c.submit("tiny-lm", {"prompt": "follow me", "max_new_tokens": 4})
        assert c.wait(job["id"], timeout=90)["status"] == "succeeded"
    worker_id = lone.stack.worker_heartbeats()[0]["id"]
    log_dir: Path = lone.stack.log_dir
    lines = []
    for f in sorted(log_dir.glob("*.log")):
        lines += [json.loads(line) for line in f.read_text().splitlines() if job["id"] in line]
    events = [(line["service"], line["event"]) for line in lines if "event" in line]
    assert events == [("api", "submitted"), ("worker", "claimed"), ("worker", "succeeded")], lines
    for line in lines:
        # A message's claims and successes are one line per model, naming every job of it in job_ids.
        assert (line["job_id"] == job["id"] if line["service"] == "api" else line["job_ids"] == [job["id"]])
        assert line["model"] == "tiny-lm"
        assert line["level"] == "info" and line["ts"]
    assert [line["worker"] for line in lines if line["service"] == "worker"] == [worker_id, worker_id]
