"""Per-key quotas in Redis: requests per second and jobs in flight, set per key by admins, 429 with
Retry-After, and no quota used by requests that validation refuses."""

from __future__ import annotations

import time

import httpx

from genqueue.db.models import Job
from tests.quota_windows import early_in_a_minute, in_one_second

JOB = {"model": "tiny-lm", "input": {"prompt": "hi", "max_new_tokens": 2}}
BAD = {"model": "tiny-lm", "input": {"prompt": "hi", "temperature": 99}}


def jobs_of(api, key_id: str) -> int:  # type: ignore[no-untyped-def]
    with api.db.session() as s:
        return s.query(Job).filter(Job.owner_id == key_id).count()


def put_quota(api, who: str, **limits: int | None) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.put(f"{api.url}/v1/keys/{api.key_ids[who]}/quota", json=limits, headers=api.headers("admin"))


def test_admins_set_a_keys_quota_and_put_it_back_to_the_default(api_server) -> None:  # type: ignore[no-untyped-def]
    api = api_server(quota_jobs_in_flight=50)
    r = httpx.get(f"{api.url}/v1/keys/{api.key_ids['client']}/quota", headers=api.headers("admin"))
    assert r.status_code == 200
    assert r.json() | {} == {"key_id": api.key_ids["client"], "requests_per_s": 0, "jobs_per_min": 0,
                             "jobs_in_flight": 50, "overrides": {}, "in_flight": 0}
    r = put_quota(api, "client", requests_per_s=7, jobs_in_flight=3)
    assert r.status_code == 200
    assert (r.json()["requests_per_s"], r.json()["jobs_in_flight"]) == (7, 3)
    assert r.json()["overrides"] == {"requests_per_s": 7, "jobs_in_flight": 3}
    # Another key keeps the defaults; a field left out is unchanged; null goes back to the default.
    other = httpx.get(f"{api.url}/v1/keys/{api.key_ids['other']}/quota", headers=api.headers("admin")).json()
    assert (other["requests_per_s"], other["jobs_in_flight"]) == (0, 50)
    r = put_quota(api, "client", jobs_in_flight=None)
    assert r.json()["jobs_in_flight"] == 50 and r.json()["overrides"] == {"requests_per_s": 7}
    # Only admins; unknown keys are 404; bad values are 422 in the error shape.
    r = put_quota(api, "other", requests_per_s=1)
    assert r.status_code == 200
    r = httpx.put(f"{api.url}/v1/keys/{api.key_ids['other']}/quota", json={"requests_per_s": 1},
                  headers=api.headers("client"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = httpx.put(f"{api.url}/v1/keys/nope/quota", json={"requests_per_s": 1}, headers=api.headers("admin"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = put_quota(api, "client", requests_per_s=-1)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "requests_per_s"


def test_requests_per_second_over_the_limit_get_429_with_retry_after(api_server) -> None:  # type: ignore[no-untyped-def]
    api = api_server()
    assert put_quota(api, "client", requests_per_s=2).status_code == 200
    h = api.headers()
    assert httpx.get(f"{api.url}/v1/jobs", headers=h).status_code == 200  # the key is known and cached

    def three() -> tuple[list[httpx.Response], int]:
        before = jobs_of(api, api.key_ids["client"])
        return [httpx.post(f"{api.url}/v1/jobs", json=JOB, headers=h) for _ in range(3)], before

    # The three requests fall in the same one-second window.
    codes, before = in_one_second(three)
    assert [r.status_code for r in codes] == [201, 201, 429]
    err = codes[2].json()["error"]
    assert err["code"] == "rate_limited" and err["details"][0]["quota"] == "requests_per_s"
    assert codes[2].headers["Retry-After"] == "1"
    assert jobs_of(api, api.key_ids["client"]) == before + 2  # the refused request stored nothing
    # Another key has its own quota.
    assert httpx.post(f"{api.url}/v1/jobs", json=JOB, headers=api.headers("other")).status_code == 201
    time.sleep(1.05)
    assert httpx.post(f"{api.url}/v1/jobs", json=JOB, headers=h).status_code == 201


def test_requests_refused_by_validation_use_no_quota(api_server) -> None:  # type: ignore[no-untyped-def]
    api = api_server(rate_limit_jobs_per_min=3)
    h = api.headers()
    early_in_a_minute()
    for _ in range(4):
        assert httpx.post(f"{api.url}/v1/jobs", json=BAD, headers=h).status_code == 422
    r = httpx.post(f"{api.url}/v1/jobs/bulk", json={"jobs": [BAD, JOB, BAD, JOB]}, headers=h)
    assert r.status_code == 200  # two valid items charged, two refused by validation not
    assert httpx.post(f"{api.url}/v1/jobs", json=JOB, headers=h).status_code == 201
    r = httpx.post(f"{api.url}/v1/jobs", json=JOB, headers=h)
    assert r.status_code == 429 and r.json()["error"]["details"][0]["quota"] == "jobs_per_min"
    assert int(r.headers["Retry-After"]) >= 1
    assert jobs_of(api, api.key_ids["client"]) == 3


def test_jobs_in_flight_limit_refuses_extra_bulk_items_alone_and_frees_places_as_jobs_end(api_server) -> None:  # type: ignore[no-untyped-def]
    api = api_server()
    assert put_quota(api, "client", jobs_in_flight=3).status_code == 200
    h = api.headers()
    r = httpx.post(f"{api.url}/v1/jobs/bulk", json={"jobs": [JOB] * 5}, headers=h)
    assert r.status_code == 200 and r.headers["Retry-After"] == "1"
    data = r.json()["data"]
    assert [("id" in d) for d in data] == [True, True, True, False, False]
    assert data[3]["error"]["code"] == "rate_limited" and data[3]["error"]["details"][0]["quota"] == "jobs_in_flight"
    r = httpx.post(f"{api.url}/v1/jobs", json=JOB, headers=h)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert r.json()["error"]["details"][0] == {"quota": "jobs_in_flight", "limit": 3, "used": 3, "requested": 1}
    assert jobs_of(api, api.key_ids["client"]) == 3
    # A job that ends (here: canceled) frees its place; the next refused submit finds that out in SQL.
    assert httpx.post(f"{api.url}/v1/jobs/{data[0]['id']}/cancel", headers=h).status_code == 200
    time.sleep(1.05)  # past the one-second pause between two checks against SQL
    r = httpx.post(f"{api.url}/v1/jobs", json=JOB, headers=h)
    assert r.status_code == 201
    quota = httpx.get(f"{api.url}/v1/keys/{api.key_ids['client']}/quota", headers=api.headers("admin")).json()
    assert quota["in_flight"] == 3
