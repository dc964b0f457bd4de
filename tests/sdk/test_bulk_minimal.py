"""``Prefer: return=minimal`` on POST /v1/jobs/bulk: each job answered by its id, model and status alone,
errors as always, replays included; the jobs stored are the same as with the whole answer."""

from __future__ import annotations

import asyncio

import httpx

from genqueue.sdk import AsyncClient, Client, ItemError

TEXT = {"model": "tiny-lm", "input": {"prompt": "hi", "max_new_tokens": 2}}
IMAGE = {"model": "dcgan-digits", "input": {"num_images": 1, "seed": 3}}
BAD = {"model": "nope", "input": {}}


def test_minimal_answers_carry_id_model_and_status_and_store_the_same_jobs(api_server) -> None:  # type: ignore[no-untyped-def]
    api = api_server()
    h = api.headers()
    items = [TEXT, {**IMAGE, "idempotency_key": "img-1"}, BAD]
    r = httpx.post(f"{api.url}/v1/jobs/bulk", json={"jobs": items}, headers={**h, "Prefer": "return=minimal"})
    assert r.status_code == 200 and r.headers["Preference-Applied"] == "return=minimal"
    text, image, bad = r.json()["data"]
    assert set(text) == set(image) == {"id", "model", "status"}
    assert (text["model"], text["status"], image["model"], image["status"]) == ("tiny-lm", "queued", "dcgan-digits",
                                                                                "queued")
    assert bad["error"]["code"] == "unknown_model"
    # The jobs are whole in the store: GET shows what a full answer would have.
    got = httpx.get(f"{api.url}/v1/jobs/{image['id']}", headers=h).json()
    assert got["input"]["seed"] == 3 and got["status"] == "queued" and got["kind"] == "image"

    # A replay of the same idempotency key answers the stored job, minimal too; other preferences and none
    # give the whole job.
    again = httpx.post(f"{api.url}/v1/jobs/bulk", json={"jobs": [items[1]]},
                       headers={**h, "Prefer": "respond-async, return=minimal"}).json()["data"][0]
    assert again == image
    for prefer in (None, "return=representation", "wait=1"):
        r = httpx.post(f"{api.url}/v1/jobs/bulk", json={"jobs": [TEXT, items[1]]},
                       headers={**h, **({"Prefer": prefer} if prefer else {})})
        assert "Preference-Applied" not in r.headers
        fresh, replay = r.json()["data"]
        assert fresh["input"]["prompt"] == "hi" and fresh["review"]["status"]
        assert replay["id"] == image["id"] and replay["input"]["seed"] == 3


def test_the_sdks_ask_for_minimal_answers(api_server) -> None:  # type: ignore[no-untyped-def]
    api = api_server()
    with Client(api.url, api.keys["client"]) as c:
        job, err = c.submit_bulk([TEXT, BAD], minimal=True)
        assert not isinstance(job, ItemError) and (job.model, job.status, job.input) == ("tiny-lm", "queued", {})
        assert isinstance(err, ItemError) and err.code == "unknown_model"
        assert c.get(job.id).input["prompt"] == "hi"

    async def aio() -> None:
        async with AsyncClient(api.url, api.keys["client"]) as c:
            (job,) = await c.submit_bulk([IMAGE], minimal=True)
            assert not isinstance(job, ItemError) and (job.model, job.status) == ("dcgan-digits", "queued")

    asyncio.run(aio())
