"""End to end: HTTP → SQL → Redis → Celery worker (ONNX Runtime) → SQL, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import io
import time

import httpx
import pytest
from PIL import Image

from genqueue.client import Client, GenqueueError
from genqueue.enums import Role
from genqueue_api.auth import create_key

pytestmark = pytest.mark.timeout(300)


def test_text_job_succeeds_with_model_output(running) -> None:  # type: ignore[no-untyped-def]
    job = running.client.submit("tiny-lm", {"prompt": "The moon", "max_new_tokens": 12, "seed": 7})
    assert job["status"] in ("queued", "running", "succeeded")
    assert job["kind"] == "text" and job["model_version"] == "1"
    done = running.client.wait(job["id"], timeout=60)
    assert done["status"] == "succeeded", done
    out = done["output"]
    assert len(out["texts"]) == 1 and out["finish_reasons"][0] in ("eos", "length", "stop")
    assert isinstance(out["texts"][0], str)
    m = done["metrics"]
    assert m["tokens"] >= 1 and m["batch_size"] >= 1 and m["inference_ms"] > 0 and m["queue_ms"] >= 0
    assert done["attempts"] == 1 and done["started_at"] and done["finished_at"]
    # The "flagged" policy: a clean output is approved by the system, a flagged one waits for a moderator.
    review = done["review"]
    assert (review["status"], review["decided_by"]) in (("approved", "system"), ("pending", None))
    assert (review["status"] == "pending") == bool(review["flags"])


def test_same_seed_same_text(running) -> None:  # type: ignore[no-untyped-def]
    inp = {"prompt": "Once upon a time", "max_new_tokens": 16, "temperature": 1.0, "seed": 1234}
    a = running.client.submit("tiny-lm", inp)
    b = running.client.submit("tiny-lm", inp)
    ta = running.client.wait(a["id"], timeout=60)["output"]["texts"]
    tb = running.client.wait(b["id"], timeout=60)["output"]["texts"]
    assert ta == tb


def test_image_job_and_image_bytes(running) -> None:  # type: ignore[no-untyped-def]
    job = running.client.submit("dcgan-digits", {"num_images": 3, "class_label": 4, "seed": 3}, wait=30)
    job = running.client.wait(job["id"], timeout=60)
    assert job["status"] == "succeeded", job
    imgs = job["output"]["images"]
    assert len(imgs) == 3 and imgs[0]["url"] == f"/v1/jobs/{job['id']}/images/0"
    data, ctype = running.client.image(job["id"], 2)
    assert ctype == "image/png"
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG" and im.size == (imgs[2]["width"], imgs[2]["height"])
    webp = running.client.submit("dcgan-digits", {"num_images": 1, "format": "webp", "seed": 5}, wait=30)
    webp = running.client.wait(webp["id"], timeout=60)
    assert webp["status"] == "succeeded", webp["error"]
    data, ctype = running.client.image(webp["id"], 0)
    assert ctype == "image/webp" and Image.open(io.BytesIO(data)).format == "WEBP"
    with pytest.raises(GenqueueError) as e:
        running.client.image(job["id"], 9)
    assert e.value.status == 404


def test_prefer_wait_returns_finished_job(running) -> None:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    job = running.client.submit("tiny-lm", {"prompt": "Rain", "max_new_tokens": 4, "seed": 1}, wait=30)
    assert job["status"] == "succeeded"
    assert time.monotonic() - t0 < 30


def test_idempotent_replay_and_conflict(running) -> None:  # type: ignore[no-untyped-def]
    body = {"model": "tiny-lm", "input": {"prompt": "Hello", "max_new_tokens": 3, "seed": 2}}
    url = running.stack.base_url + "/v1/jobs"
    h = {"Authorization": f"Bearer {running.keys['client']}", "Idempotency-Key": f"k-{time.time_ns()}"}
    r1 = httpx.post(url, json=body, headers=h)
    r2 = httpx.post(url, json=body, headers=h)
    assert r1.status_code == 201 and r2.status_code == 200
    assert r1.json()["id"] == r2.json()["id"]
    r3 = httpx.post(url, json={**body, "priority": 1}, headers=h)
    assert r3.status_code == 409 and r3.json()["error"]["code"] == "idempotency_conflict"


def test_bulk_in_input_order_each_item_alone(running) -> None:  # type: ignore[no-untyped-def]
    items = []
    for i in range(20):
        items.append({"model": "tiny-lm", "input": {"prompt": f"Line {i}", "max_new_tokens": 4, "seed": i}})
    items.insert(5, {"model": "nope", "input": {}})
    items.insert(9, {"model": "tiny-lm", "input": {"prompt": "x", "top_p": 3}})
    items.insert(12, {"model": "dcgan-digits", "input": {"num_images": 2, "seed": 1}})
    res = running.client.submit_bulk(items)
    assert len(res) == len(items)
    assert res[5]["error"]["code"] == "unknown_model"
    assert res[9]["error"]["code"] == "validation_error"
    assert res[9]["error"]["details"][0]["field"] == "input.top_p"
    ok = [r for r in res if "id" in r]
    assert len(ok) == 21
    assert res[12]["kind"] == "image" and res[0]["input"]["prompt"] == "Line 0"
    for r in ok:
        assert running.client.wait(r["id"], timeout=90)["status"] == "succeeded"


def test_cancel_and_finished_conflict(running) -> None:  # type: ignore[no-untyped-def]
    done = running.client.submit("tiny-lm", {"prompt": "a", "max_new_tokens": 2, "seed": 1}, wait=30)
    assert done["status"] == "succeeded"
    with pytest.raises(GenqueueError) as e:
        running.client.cancel(done["id"])
    assert e.value.status == 409
    limit = {m["name"]: m for m in running.client.models()}["tiny-lm"]["versions"][0]["limits"]["max_new_tokens"]
    # The job to cancel queues behind ~12 batches' worth of long rows, so it is still queued or running when
    # the cancel arrives however fast the engine is; the jobs ahead of it are canceled too, to free the worker.
    ahead = [running.client.submit("tiny-lm", {"prompt": "b", "max_new_tokens": limit - 2, "seed": i, "n": 16}) for i in range(12)]
    long = running.client.submit("tiny-lm", {"prompt": "b", "max_new_tokens": limit - 2, "seed": 99, "n": 16})
    canceled = running.client.cancel(long["id"])
    assert canceled["status"] == "canceled"
    for job in ahead:
        with contextlib.suppress(GenqueueError):  # the first ones may have finished already
            running.client.cancel(job["id"])
    time.sleep(1.0)
    final = running.client.get(long["id"])
    assert final["status"] == "canceled" and final["output"] is None


def test_bad_inputs(running) -> None:  # type: ignore[no-untyped-def]
    c = running.client
    with pytest.raises(GenqueueError) as e:
        c.submit("no-such-model", {"prompt": "x"})
    assert (e.value.status, e.value.code) == (404, "unknown_model")
    with pytest.raises(GenqueueError) as e:
        c.submit("tiny-lm", {"prompt": "word " * 5000})
    assert (e.value.status, e.value.code) == (422, "prompt_too_long")
    with pytest.raises(GenqueueError) as e:
        c.submit("tiny-lm", {"prompt": "x", "temperature": -1, "max_new_tokens": 0})
    assert e.value.status == 422
    assert {d["field"] for d in e.value.details} == {"input.temperature", "input.max_new_tokens"}
    with pytest.raises(GenqueueError) as e:
        c.submit("tiny-lm", {"prompt": "x", "stop": [""]})
    assert e.value.status == 422 and e.value.details[0]["field"] == "input.stop"
    with pytest.raises(GenqueueError) as e:
        c.submit("tiny-lm", {"prompt": "x", "stop": [f"s{i}" for i in range(9)]})
    assert e.value.status == 422 and e.value.details[0]["field"] == "input.stop"
    # PostgreSQL stores no U+0000: refused with 422 on every backend, and in a bulk request that item alone.
    for inp, extra, field in [({"prompt": "a\x00b"}, {}, "input.prompt"), ({"prompt": "x", "stop": ["\x00"]}, {}, "input.stop"),
                              ({"prompt": "x"}, {"metadata": {"k\x00": 1}}, "metadata")]:
        with pytest.raises(GenqueueError) as e:
            c.submit("tiny-lm", inp, **extra)
        assert e.value.status == 422 and e.value.details[0]["field"] == field, e.value.details
        assert "NUL" in e.value.details[0]["message"]
    items = c.submit_bulk([{"model": "tiny-lm", "input": {"prompt": "ok", "max_new_tokens": 2}},
                           {"model": "tiny-lm", "input": {"prompt": "x"}, "idempotency_key": "k\x00"}])
    assert "id" in items[0] and items[1]["error"]["code"] == "validation_error"
    # An empty prompt is allowed: generation starts from BOS.
    empty = c.submit("tiny-lm", {"prompt": "", "max_new_tokens": 4, "seed": 1}, wait=30)
    assert c.wait(empty["id"], timeout=60)["status"] == "succeeded"
    with pytest.raises(GenqueueError) as e:
        c.submit("dcgan-digits", {"num_images": 65, "truncation": 0})
    assert {d["field"] for d in e.value.details} == {"input.num_images", "input.truncation"}
    base = running.stack.base_url
    r = httpx.post(base + "/v1/jobs", content=b"{not json", headers={"Authorization": f"Bearer {running.keys['client']}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert httpx.get(base + "/v1/jobs").status_code == 401
    r = httpx.get(base + "/v1/jobs", headers={"Authorization": "Bearer gq_wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    mine = c.submit("tiny-lm", {"prompt": "private", "max_new_tokens": 2})
    with pytest.raises(GenqueueError) as e:
        running.other.get(mine["id"])
    assert e.value.status == 404
    assert running.admin.get(mine["id"])["id"] == mine["id"]
    with pytest.raises(GenqueueError) as e:
        c.submit("tiny-lm", {"prompt": "x"}, review="none")
    assert e.value.status == 403


def test_list_paginates_newest_first(running) -> None:  # type: ignore[no-untyped-def]
    # A key of its own: the session's stack is shared, and other tests' keys hold jobs of their own.
    with running.db.session() as s:
        secret = create_key(s, "lister", Role.client)[1]
    with Client(running.stack.base_url, secret) as c:
        ids = [c.submit("tiny-lm", {"prompt": f"p{i}", "max_new_tokens": 2})["id"] for i in range(5)]
        page1 = c.list_jobs(limit=3)
        assert [j["id"] for j in page1["data"]] == ids[::-1][:3]
        page2 = c.list_jobs(limit=3, cursor=page1["next_cursor"])
        assert [j["id"] for j in page2["data"]] == ids[::-1][3:5]
        assert page2["next_cursor"] is None


def test_models_listing_and_worker_without_torch(running) -> None:  # type: ignore[no-untyped-def]
    models = {m["name"]: m for m in running.client.models()}
    assert models["tiny-lm"]["kind"] == "text" and models["tiny-lm"]["served"] is True
    assert models["dcgan-digits"]["kind"] == "image" and models["dcgan-digits"]["served"] is True
    beats = running.stack.worker_heartbeats()
    assert beats and all(b["torch_loaded"] is False for b in beats)


def test_cli_keys_submit_and_get(running) -> None:  # type: ignore[no-untyped-def]
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "GENQUEUE_DATABASE_URL": running.settings.sqlalchemy_url,
           "GENQUEUE_DATA_DIR": str(running.settings.data_dir)}
    cli = [sys.executable, "-m", "genqueue.cli"]
    out = subprocess.run([*cli, "keys", "create", "--name", "cli", "--role", "client"], env=env,
                         capture_output=True, text=True, check=True).stdout
    secret = out.strip().splitlines()[-1]  # the secret is the last line
    assert secret.startswith("gq_")
    bad = subprocess.run([*cli, "keys", "create", "--name", "x", "--role", "boss"], env=env,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown role" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    common = ["--url", running.stack.base_url, "--key", secret]
    job = json.loads(subprocess.run([*cli, "submit", "--model", "tiny-lm", "--prompt", "The sky", "--wait", "30",
                                     *common], env=env, capture_output=True, text=True, check=True).stdout)
    assert job["status"] == "succeeded" and job["output"]["texts"]
    got = json.loads(subprocess.run([*cli, "get", job["id"], *common], env=env, capture_output=True, text=True,
                                    check=True).stdout)
    assert got["id"] == job["id"]
    missing = subprocess.run([*cli, "submit", "--model", "nope", "--prompt", "x", *common], env=env,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "unknown_model" in missing.stderr


def test_concurrent_idempotent_submits_create_one_job(running) -> None:  # type: ignore[no-untyped-def]
    from concurrent.futures import ThreadPoolExecutor

    body = {"model": "tiny-lm", "input": {"prompt": "race", "max_new_tokens": 2, "seed": 3}}
    h = {"Authorization": f"Bearer {running.keys['client']}", "Idempotency-Key": f"race-{time.time_ns()}"}
    with ThreadPoolExecutor(8) as pool:
        rs = list(pool.map(lambda _: httpx.post(running.stack.base_url + "/v1/jobs", json=body, headers=h,
                                                timeout=30), range(8)))
    assert sorted(r.status_code for r in rs) == [200] * 7 + [201]
    assert len({r.json()["id"] for r in rs}) == 1


def test_worker_prometheus_metrics(running) -> None:  # type: ignore[no-untyped-def]
    job = running.client.submit("tiny-lm", {"prompt": "metrics", "max_new_tokens": 5, "seed": 1}, wait=30)
    assert job["status"] == "succeeded"
    port = running.stack.extra_env["GENQUEUE_WORKER_METRICS_PORT"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    ok = [ln for ln in text.splitlines()
          if ln.startswith('genqueue_worker_jobs_total{model="tiny-lm",outcome="succeeded"}')]
    assert ok and float(ok[0].split()[-1]) >= 1
    assert 'genqueue_worker_tokens_total{model="tiny-lm"}' in text
    assert 'genqueue_queue_depth{queue="gen.tiny-lm"}' in text
    assert "genqueue_worker_batch_size_bucket" in text
    # The same prompt again: its prefill comes from the worker's prompt cache, which the job and the
    # worker's counter both report.
    first = running.client.submit("tiny-lm", {"prompt": "cached prompt", "max_new_tokens": 3, "seed": 1}, wait=30)
    again = running.client.submit("tiny-lm", {"prompt": "cached prompt", "max_new_tokens": 3, "seed": 2}, wait=30)
    assert (first["metrics"]["prompt_cached"], again["metrics"]["prompt_cached"]) == (0, 1)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    hits = [ln for ln in text.splitlines() if ln.startswith('genqueue_worker_prompt_cache_hits_total{model="tiny-lm"}')]
    assert hits and float(hits[0].split()[-1]) >= 1


def test_get_long_polls_until_the_job_ends(running) -> None:  # type: ignore[no-untyped-def]
    job = running.client.submit("tiny-lm", {"prompt": "Long poll", "max_new_tokens": 30, "seed": 9, "n": 4})
    r = httpx.get(f"{running.stack.base_url}/v1/jobs/{job['id']}", timeout=60,
                  headers={"Authorization": f"Bearer {running.keys['client']}", "Prefer": "wait=30"})
    assert r.status_code == 200 and r.headers["Preference-Applied"] == "wait=30"
    assert r.json()["status"] == "succeeded"
    other = httpx.get(f"{running.stack.base_url}/v1/jobs/{job['id']}", timeout=10,
                      headers={"Authorization": f"Bearer {running.keys['other']}", "Prefer": "wait=5"})
    assert other.status_code == 404  # waiting does not leak someone else's job


def test_input_a_store_cannot_hold_is_refused_and_nothing_half_done(running) -> None:  # type: ignore[no-untyped-def]
    import base64
    import concurrent.futures
    import uuid

    base, auth = running.stack.base_url, {"Authorization": f"Bearer {running.keys['client']}"}
    hj = {**auth, "Content-Type": "application/json"}

    def post(body: str | bytes, path: str = "/v1/jobs", **headers: str) -> httpx.Response:
        return httpx.post(base + path, content=body, headers={**hj, **headers}, timeout=30)

    good = '{"model": "tiny-lm", "input": {"prompt": "x", "max_new_tokens": 2}'
    before = len(running.client.list_jobs(limit=1000)["data"])
    # Not JSON (NaN, Infinity, floats past the range, 5000-digit integers, nesting past the parser's limit).
    for extra in ['"metadata": {"a": NaN}', '"metadata": {"a": -Infinity}', '"metadata": {"a": 1e309}',
                  '"metadata": {"a": ' + "1" * 5000 + "}", '"metadata": {"a": ' + "[" * 3000 + "]" * 3000 + "}"]:
        r = post(good + ", " + extra + "}")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", (extra[:40], r.text[:200])
    # JSON, but not text a store can hold or an answer can carry: lone surrogates, metadata nested too deep.
    for extra, field in [('"metadata": {"a\\ud800": 1}', "metadata"), ('"metadata": {"a": ["x\\udfff"]}', "metadata"),
                         ('"metadata": ' + '{"a": ' * 40 + "1" + "}" * 40, "metadata")]:
        r = post(good + ", " + extra + "}")
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == field, (extra[:40], r.text[:300])
    r = post('{"model": "tiny-lm", "input": {"prompt": "x", "stop": ["\\udfff"]}}')
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "input.stop", r.text
    # One bad item in a bulk request fails alone; the others are stored and answered.
    r = post('{"jobs": [' + good + '}, ' + good + ', "metadata": {"a": "\\ud800"}}, ' + good + "}]}", "/v1/jobs/bulk")
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert "id" in data[0] and data[1]["error"]["code"] == "validation_error" and "id" in data[2]
    assert len(running.client.list_jobs(limit=1000)["data"]) == before + 2  # and the list still answers
    # Idempotency keys: empty ones are refused, and the body is not a place for one on a single POST.
    assert post(good + "}", **{"Idempotency-Key": ""}).status_code == 422
    r = post('{"jobs": [' + good + ', "idempotency_key": "k\\ud800"}, ' + good + "}]}", "/v1/jobs/bulk")
    assert r.status_code == 200 and r.json()["data"][0]["error"]["code"] == "validation_error", r.text[:300]
    assert "id" in r.json()["data"][1]
    r = post(good + ', "idempotency_key": "k"}')
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "idempotency_key"
    # Concurrent bulk requests sharing a key: one job for the key, every request answered, every good item kept.
    k = f"race-{uuid.uuid4()}"
    body = '{"jobs": [' + good + ', "idempotency_key": "' + k + '"}, ' + good + "}]}"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(body, "/v1/jobs/bulk"), range(8)))
    assert all(a.status_code == 200 for a in answers), [a.text[:200] for a in answers if a.status_code != 200]
    assert len({a.json()["data"][0]["id"] for a in answers}) == 1 and all("id" in a.json()["data"][1] for a in answers)
    # Paths and queries past what the columns hold, or with U+0000: 404 / 422, not 500.
    job = running.client.submit("tiny-lm", {"prompt": "x", "max_new_tokens": 2}, wait=30)
    for n in (2**31, 2**63, 10**30):
        assert httpx.get(f"{base}/v1/jobs/{job['id']}/images/{n}", headers=auth).status_code == 404
    for path in ("/v1/jobs/a%00b", "/v1/jobs/a%00b/images/0"):
        assert httpx.get(base + path, headers=auth).status_code == 404
    assert httpx.post(base + "/v1/jobs/a%00b/cancel", headers=auth).status_code == 404
    assert httpx.get(base + "/v1/jobs?model=%00", headers=auth).status_code == 422
    for text in ("9223372036854775808", "1" * 30, " \u0661\u0662 ", "-5"):
        cursor = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
        assert httpx.get(f"{base}/v1/jobs?cursor={cursor}", headers=auth).status_code == 422, text
    r = httpx.get(f"{base}/v1/jobs/{job['id']}", headers={**auth, "Prefer": "wait=" + "9" * 5000}, timeout=90)
    assert r.status_code == 200
