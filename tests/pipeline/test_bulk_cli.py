"""`genqueue bulk` against a real stack: per-line failures, a resume after an interrupt that lost the journal's
last chunk without submitting anything twice, results written once per line, the progress bar; and the SDK's
wait helpers (sync and async), `genqueue wait` and `genqueue images`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from genqueue.bulk import Bulk, Options
from genqueue.bulkfiles import read_input
from genqueue.db.models import Job
from genqueue.sdk import AsyncClient, Client, ItemError

TEXT: dict[str, Any] = {"model": "tiny-lm", "input": {"prompt": "Once upon a time", "max_new_tokens": 4}}
IMAGE: dict[str, Any] = {"model": "dcgan-digits", "input": {"num_images": 1}}


def write_jobs(path: Path, n: int) -> None:
    lines = []
    for i in range(1, n + 1):
        if i == 5:
            lines.append("{not json")
        elif i == 9:
            lines.append(json.dumps({"model": "tiny-lm", "input": {"prompt": "x", "temperature": 99}}))
        else:
            lines.append(json.dumps({**(TEXT if i % 3 else IMAGE), "metadata": {"n": i}}))
    path.write_text("\n".join(lines) + "\n")


class InterruptedClient(Client):
    """A real client whose run is interrupted (Ctrl-C) just after the API accepted its second chunk, before
    the journal could record it: the worst moment for a resume."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        out = super().request(method, path, **kwargs)
        if path == "/v1/jobs/bulk":
            self.calls += 1
            if self.calls == 2:
                raise KeyboardInterrupt
        return out


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "genqueue.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_bulk_resumes_without_duplicates(running, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src, out = tmp_path / "jobs.jsonl", tmp_path / "results.jsonl"
    write_jobs(src, 30)
    inp = read_input(src)
    url, key = running.stack.base_url, running.keys["client"]
    with InterruptedClient(url, key) as c, pytest.raises(KeyboardInterrupt):
        Bulk(c, inp, out, Path(f"{out}.state"), Options(chunk=10, concurrency=1, progress=False)).run()
    prefix = f"gqbulk-{inp.digest[:24]}-"

    def stored() -> list[str]:
        with running.db.session() as s:
            return [k for (k,) in s.query(Job.idempotency_key).filter(Job.idempotency_key.like(prefix + "%"))]

    assert len(stored()) == 19  # two chunks of 10, less the line refused by validation
    journal = [json.loads(x) for x in Path(f"{out}.state").read_text().splitlines()]
    assert len([r for r in journal if "id" in r]) == 10 - 1  # the second chunk never reached the journal

    r = cli("bulk", str(src), "--out", str(out), "--chunk", "10", "--url", url, "--key", key)
    assert r.returncode == 1, r.stderr  # two lines failed
    assert "submitted=" in r.stderr and "failed=2" in r.stderr and "job/s" in r.stderr  # tqdm's bar
    assert "30 lines:" in r.stderr and "26 succeeded" not in r.stderr
    keys = stored()
    assert len(keys) == len(set(keys)) == 28  # nothing submitted twice
    results = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["line"] for r in results) == list(range(1, 31))  # each line once
    by_line = {r["line"]: r for r in results}
    assert by_line[5]["status"] == "rejected" and by_line[5]["error"]["code"] == "invalid_json"
    assert by_line[9]["status"] == "rejected" and by_line[9]["error"]["code"] == "validation_error"
    assert by_line[9]["error"]["details"][0]["field"] == "input.temperature"
    ok = [r for n, r in by_line.items() if n not in (5, 9)]
    assert all(r["status"] == "succeeded" and r["metadata"]["n"] == r["line"] for r in ok)
    assert by_line[3]["output"]["images"][0]["format"] == "png"
    # The random test model may sample end-of-text first, so the text can be empty; its finish reason cannot.
    text_out = by_line[1]["output"]
    assert isinstance(text_out["texts"][0], str) and text_out["finish_reasons"][0] in ("eos", "length", "stop")
    assert all(r["source_sha256"] == inp.digest for r in results)

    # Run again: everything is finished; nothing is submitted or written again.
    r = cli("bulk", str(src), "--out", str(out), "--quiet", "--url", url, "--key", key)
    assert "30 lines: 30 finished before, 0 submitted" in r.stderr
    assert len(out.read_text().splitlines()) == 30 and len(stored()) == 28

    # A results file of another input is refused, naming both.
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps(TEXT) + "\n")
    r = cli("bulk", str(other), "--out", str(out), "--url", url, "--key", key)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"genqueue: error: {out} already holds results of {src}, not of {other}; "
                                "choose another --out")


def test_wait_helpers_of_both_clients(running) -> None:  # type: ignore[no-untyped-def]
    url, key = running.stack.base_url, running.keys["client"]
    with Client(url, key) as c:
        jobs = c.submit_bulk([TEXT, IMAGE, TEXT, IMAGE])
        ids = [j.id for j in jobs if not isinstance(j, ItemError)]
        assert len(ids) == 4
        seen = [j.id for j in c.as_completed(ids, timeout=120)]
        assert sorted(seen) == sorted(ids)
        done = c.wait_all(ids, timeout=60)
        assert [j.id for j in done] == ids and all(j.status == "succeeded" for j in done)
        assert done[0].text is not None and done[1].output and done[1].output["images"][0]["format"] == "png"

    async def go() -> None:
        async with AsyncClient(url, key) as a:
            jobs = [await a.submit("tiny-lm", TEXT["input"]) for _ in range(3)]
            got = [j.id async for j in a.as_completed([j.id for j in jobs], timeout=120)]
            assert sorted(got) == sorted(j.id for j in jobs)
            assert (await a.wait(jobs[0].id)).status == "succeeded"
            assert [j.id for j in await a.wait_all([j.id for j in jobs])] == [j.id for j in jobs]

    asyncio.run(go())


def test_wait_and_images_commands(running, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, key = running.stack.base_url, running.keys["client"]
    with Client(url, key) as c:
        image = c.submit("dcgan-digits", {"num_images": 2})
        text = c.submit("tiny-lm", TEXT["input"])
    r = cli("wait", image.id, text.id, "--url", url, "--key", key)
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads(x)["id"] for x in r.stdout.splitlines()) == sorted([image.id, text.id])
    r = cli("images", image.id, "--dir", str(tmp_path / "out"), "--url", url, "--key", key)
    assert r.returncode == 0, r.stderr
    files = sorted((tmp_path / "out").iterdir())
    assert [f.name for f in files] == [f"{image.id}-0.png", f"{image.id}-1.png"]
    assert all(f.read_bytes().startswith(b"\x89PNG") for f in files)
    r = cli("images", text.id, "--url", url, "--key", key)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "without images" in r.stderr
    r = cli("get", "no-such-job", "--url", url, "--key", key)
    assert r.returncode == 2 and r.stderr.strip() == "genqueue: error: not_found: job not found"


def test_bulk_under_an_in_flight_quota_sends_everything_once(running, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The key may have 6 jobs queued or running: the CLI's chunks of 10 are cut by the API, and the CLI
    sends the refused items again as places free up, until every line has run once."""
    from genqueue_api.auth import lookup

    with running.db.session() as s:
        key = lookup(s, running.keys["other"])
        assert key is not None
        key_id = key.id
    admin = httpx.Client(base_url=running.stack.base_url, headers={"Authorization": f"Bearer {running.keys['admin']}"})
    assert admin.put(f"/v1/keys/{key_id}/quota", json={"jobs_in_flight": 6}).status_code == 200
    try:
        src, out = tmp_path / "jobs.jsonl", tmp_path / "results.jsonl"
        src.write_text("".join(json.dumps({**TEXT, "metadata": {"n": i}}) + "\n" for i in range(40)))
        r = cli("bulk", str(src), "--out", str(out), "--chunk", "10", "--quiet", "--url", running.stack.base_url,
                "--key", running.keys["other"])
        assert r.returncode == 0, r.stderr
        results = [json.loads(x) for x in out.read_text().splitlines()]
        assert sorted(x["line"] for x in results) == list(range(1, 41))
        assert {x["status"] for x in results} == {"succeeded"}
        with running.db.session() as s:
            prefix = f"gqbulk-{read_input(src).digest[:24]}-"
            assert s.query(Job).filter(Job.idempotency_key.like(prefix + "%")).count() == 40
        assert admin.get(f"/v1/keys/{key_id}/quota").json()["in_flight"] <= 6
    finally:
        admin.put(f"/v1/keys/{key_id}/quota", json={"jobs_in_flight": None})
        admin.close()
