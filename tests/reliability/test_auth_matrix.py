"""Who may do what: every route of the app, tried with no key, a revoked key, each role, and on a resource of
the caller's own and of another tenant. The table of rules is keyed by the app's own routes, so a route added
without a rule fails here. Then the classic attacks: secrets at rest, path traversal, SQL metacharacters,
oversized input and webhook SSRF, each answered with a 4xx in the error shape, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from reliability_tally import database_of, record
from sqlalchemy import select, text, update

from genqueue import jobstate
from genqueue.db.models import ApiKey, utcnow
from genqueue.db.session import Database, upgrade
from genqueue.enums import Role
from genqueue.settings import Settings
from genqueue_api.app import create_app
from genqueue_api.auth import create_key

# Who a route is for. PUBLIC: anyone. CLIENT: client and admin keys, a client only on its own jobs.
# ANY_KEY: any valid key, a client only on its own jobs, a moderator on no job. MODERATOR: moderator and admin.
# OUTPUT: an output's bytes: its owner, and moderators and admins (who review it).
# ADMIN: admin keys only. "session:<code>": a console route, which answers <code> to every caller without a
# console session.
PUBLIC, CLIENT, ANY_KEY, MODERATOR, OUTPUT, ADMIN = "public", "client", "any_key", "moderator", "output", "admin"
RULES: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    ("POST", "/v1/jobs"): CLIENT,
    ("POST", "/v1/jobs/bulk"): CLIENT,
    ("GET", "/v1/jobs"): CLIENT,
    ("GET", "/v1/jobs/{job_id}"): ANY_KEY,
    ("POST", "/v1/jobs/{job_id}/cancel"): CLIENT,
    ("GET", "/v1/jobs/{job_id}/images/{n}"): OUTPUT,
    ("GET", "/v1/models"): ANY_KEY,
    ("GET", "/v1/feed"): CLIENT,
    ("POST", "/v1/review/claim"): MODERATOR,
    ("POST", "/v1/review/bulk-decision"): MODERATOR,
    ("POST", "/v1/review/{job_id}/decision"): MODERATOR,
    ("POST", "/v1/review/{job_id}/release"): MODERATOR,
    ("POST", "/v1/review/{job_id}/renew"): MODERATOR,
    ("GET", "/v1/review/{job_id}/history"): MODERATOR,
    ("POST", "/v1/jobs/lookup"): CLIENT,  # another tenant's ids come back as missing, never as jobs
    ("GET", "/v1/batches"): CLIENT,
    ("POST", "/v1/batches"): CLIENT,
    ("GET", "/v1/batches/{batch_id}"): CLIENT,
    ("POST", "/v1/batches/{batch_id}/cancel"): CLIENT,
    ("GET", "/v1/batches/{batch_id}/results"): CLIENT,
    ("GET", "/v1/files"): CLIENT,
    ("POST", "/v1/files"): CLIENT,
    ("GET", "/v1/files/{file_id}"): CLIENT,
    ("DELETE", "/v1/files/{file_id}"): CLIENT,
    ("GET", "/v1/files/{file_id}/content"): CLIENT,
    ("POST", "/v1/completions"): CLIENT,
    ("GET", "/v1/keys/{key_id}/quota"): ADMIN,
    ("PUT", "/v1/keys/{key_id}/quota"): ADMIN,
    # The console takes its session cookie only: a bearer key, any role, opens nothing there.
    ("GET", "/console"): "session:303",
    ("GET", "/console/login"): "session:200",
    ("POST", "/console/login"): "session:403",  # no CSRF pair
    ("POST", "/console/logout"): "session:303",
    ("POST", "/console/api/claim"): "session:401",
    ("GET", "/console/api/counters"): "session:401",
    ("POST", "/console/api/items/{job_id}/decision"): "session:401",
    ("POST", "/console/api/items/{job_id}/release"): "session:401",
    ("POST", "/console/api/items/{job_id}/renew"): "session:401",
    ("GET", "/console/images/{job_id}/{n}"): "session:401",
}
CALLERS = ["none", "revoked", "client", "moderator", "admin"]
ALLOWED = "allowed"  # any answer but 401, 403, 404 or a 5xx


def body_for(method: str, path: str, job_id: str) -> dict[str, Any] | None:
    if method != "POST":
        return None
    return {
        "/v1/jobs": {"model": "dcgan-digits", "input": {"seed": 1}},
        "/v1/jobs/bulk": {"jobs": [{"model": "dcgan-digits", "input": {"seed": 2}}]},
        "/v1/review/claim": {"limit": 1},
        "/v1/review/bulk-decision": {"job_ids": [job_id], "decision": "approve"},
        "/v1/review/{job_id}/decision": {"decision": "approve"},
        "/v1/jobs/lookup": {"ids": [job_id]},
    }.get(path, {})


def expected(rule: str, caller: str, resource: str, path: str) -> int | str:
    """The answer a caller gets: a status code, or ALLOWED. ``resource``: "own" or "other" (another
    tenant's job); it matters only on routes that name a job."""
    names_job = any(f"{{{k}}}" in path for k in ("job_id", "batch_id", "file_id")) and not path.startswith("/v1/review")
    if rule.startswith("session:"):
        return int(rule.partition(":")[2])
    if rule == PUBLIC:
        return ALLOWED
    if caller in ("none", "revoked"):
        return 401
    if rule == ADMIN:
        return ALLOWED if caller == "admin" else 403
    if rule == MODERATOR:
        return ALLOWED if caller in ("moderator", "admin") else 403
    if caller == "admin" or caller == "moderator" and rule == OUTPUT:
        return ALLOWED
    if caller == "moderator":
        return 403 if rule == CLIENT else (404 if names_job else ALLOWED)
    return 404 if names_job and resource == "other" else ALLOWED  # a client


@dataclass
class World:
    http: TestClient
    app: Any
    db: Database
    secrets: dict[str, str]
    jobs: dict[str, str]  # "own" (the client's) and "other" (another tenant's): succeeded image jobs
    batches: dict[str, str]  # the same, for a batch each
    files: dict[str, str]  # and an uploaded file each
    client_key_id: str


@pytest.fixture
def world(database_url: str, redis_scratch_url: str, models_dir: Path, tmp_path: Path) -> Iterator[World]:
    settings = Settings(data_dir=tmp_path, database_url=database_url, redis_url=redis_scratch_url,
                        models_dir=models_dir, reconcile_interval_s=0)
    upgrade(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url)
    secrets: dict[str, str] = {}
    key_ids: dict[str, str] = {}
    with db.session() as s:
        for name, role in (("client", Role.client), ("other", Role.client), ("moderator", Role.moderator),
                           ("admin", Role.admin), ("revoked", Role.client)):
            key, secrets[name] = create_key(s, f"matrix-{name}", role)
            key_ids[name] = key.id
            if name == "revoked":
                s.execute(update(ApiKey).where(ApiKey.id == key.id).values(revoked_at=utcnow()))
                s.commit()
    app = create_app(settings)
    with TestClient(app) as http:
        jobs = {}
        for owner, which in (("client", "own"), ("other", "other")):
            r = http.post("/v1/jobs", json={"model": "dcgan-digits", "input": {"seed": 1}, "review": "required"},
                          headers={"Authorization": f"Bearer {secrets[owner]}"})
            assert r.status_code == 201, r.text
            jobs[which] = r.json()["id"]
        # Finished through the worker's own transitions (no worker runs here): an image and a pending review.
        png = (Path(__file__).parent / "one_pixel.png").read_bytes()
        with db.session() as s:
            jobstate.claim_many(s, list(jobs.values()), "matrix-worker", 60, 3)
            jobstate.write_outcomes(s, "matrix-worker", [jobstate.Success(
                j, {"images": [{"url": f"/v1/jobs/{j}/images/0", "width": 1, "height": 1, "format": "png"}]},
                {}, [(png, 1, 1, "png")]) for j in jobs.values()])
        batches, files = {}, {}
        for owner, which in (("client", "own"), ("other", "other")):
            auth = {"Authorization": f"Bearer {secrets[owner]}"}
            line = b'{"custom_id": "a", "model": "dcgan-digits", "input": {"seed": 3}}\n'
            r = http.post("/v1/batches", content=line, headers={**auth, "content-type": "application/jsonl"})
            assert r.status_code < 300, r.text
            batches[which] = r.json()["id"]
            r = http.post("/v1/files", files={"file": ("b.jsonl", line)}, data={"purpose": "batch"}, headers=auth)
            assert r.status_code < 300, r.text
            files[which] = r.json()["id"]
        yield World(http, app, db, secrets, jobs, batches, files, key_ids["client"])
        for j in jobs.values():
            http.post(f"/v1/jobs/{j}/cancel", headers={"Authorization": f"Bearer {secrets['admin']}"})
    db.dispose()


def _routes(app: Any) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, routers included (FastAPI wraps an included router;
    its effective routes carry the full path)."""
    out = set()
    stack = list(app.routes)
    while stack:
        r = stack.pop()
        if hasattr(r, "effective_route_contexts"):
            stack.extend(r.effective_route_contexts())
            continue
        out.update((m, r.path) for m in getattr(r, "methods", None) or () if m != "HEAD")
    return out


def test_every_route_has_a_rule(world: World) -> None:
    routes = _routes(world.app)
    assert len(routes) > 15  # the walk did reach into the routers
    assert routes == set(RULES), f"routes without a rule: {routes - set(RULES)}; rules without a route: {set(RULES) - routes}"


def test_the_auth_matrix(world: World, database_url: str) -> None:
    rows = 0
    wrong = []
    for (method, path), rule in sorted(RULES.items()):
        for caller in CALLERS:
            for resource in ("own", "other"):
                job_id = world.jobs[resource]
                file_id = world.files[resource]
                if method == "DELETE":  # a file of its own each time, as a successful delete ends the file
                    owner = {"own": "client", "other": "other"}[resource]
                    file_id = world.http.post("/v1/files", files={"file": ("d.jsonl", b"{}\n")}, data={"purpose": "batch"},
                                              headers={"Authorization": f"Bearer {world.secrets[owner]}"}).json()["id"]
                url = (path.replace("{job_id}", job_id).replace("{n}", "0")
                       .replace("{batch_id}", world.batches[resource]).replace("{file_id}", file_id)
                       .replace("{key_id}", world.client_key_id))
                headers = {} if caller == "none" else {"Authorization": f"Bearer {world.secrets[caller]}"}
                r = world.http.request(method, url, headers=headers, json=body_for(method, path, job_id),
                                       follow_redirects=False)
                want = expected(rule, caller, resource, path)
                ok = (r.status_code < 500 and r.status_code not in (401, 403, 404)) if want == ALLOWED \
                    else r.status_code == want
                if r.status_code in (401, 403, 404) and path.startswith("/v1"):
                    ok = ok and r.json()["error"]["code"] in ("unauthorized", "forbidden", "not_found")
                if not ok:
                    wrong.append((method, path, caller, resource, want, r.status_code, r.text[:120]))
                rows += 1
    record("auth_matrix", database_of(database_url), rows=rows, wrong=len(wrong))
    assert not wrong, "\n".join(map(str, wrong))
    assert rows == len(RULES) * len(CALLERS) * 2
    print(f"auth matrix: {rows} rows")


def test_secrets_are_stored_only_as_hashes(world: World) -> None:
    with world.db.session() as s:
        stored = " ".join(" ".join(str(v) for v in row) for row in s.execute(select(ApiKey.__table__)).all())
    for secret in world.secrets.values():
        assert secret not in stored and secret[10:] not in stored
    # A near miss of a valid key (the same prefix, one character changed) is refused like any other.
    near = world.secrets["admin"][:-1] + ("A" if world.secrets["admin"][-1] != "A" else "B")
    assert world.http.get("/v1/models", headers={"Authorization": f"Bearer {near}"}).status_code == 401


def _error_shape(r: Any, *codes: int) -> None:
    assert r.status_code in codes, (r.status_code, r.text[:200])
    body = r.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    assert "Traceback" not in r.text


def test_hostile_input_gets_a_4xx_in_the_error_shape(world: World) -> None:
    h = {"Authorization": f"Bearer {world.secrets['client']}"}
    admin = {"Authorization": f"Bearer {world.secrets['admin']}"}
    # Path traversal in job ids, image indexes and model names.
    for path in ("/v1/jobs/..%2F..%2Fetc%2Fpasswd", "/v1/jobs/..%2F..%2Fetc%2Fpasswd/images/0",
                 f"/v1/jobs/{world.jobs['own']}/images/..%2F1", f"/v1/jobs/{world.jobs['own']}/images/-1",
                 f"/v1/jobs/{world.jobs['own']}/images/99999999999999999999"):
        _error_shape(world.http.get(path, headers=h), 404, 422)
    for model in ("../../etc/passwd", "tiny-lm/../../x", "tiny-lm@../1", "/abs/path", "tiny-lm@1/../../2"):
        _error_shape(world.http.post("/v1/jobs", json={"model": model, "input": {"prompt": "x"}}, headers=h), 404, 422)
    # SQL metacharacters in filters and ids: refused or matched literally, and the table is still there.
    for q in ("status=queued' OR '1'='1", "model=x' OR 1=1 --", "model=%27%3B DROP TABLE jobs%3B --",
              "cursor=' UNION SELECT key_hash FROM api_keys --", "review=pending%22"):
        r = world.http.get(f"/v1/jobs?{q}", headers=admin)
        if r.status_code == 200:
            assert r.json()["data"] == [], q  # matched literally: nothing has such a name
        else:
            _error_shape(r, 422)
    _error_shape(world.http.get("/v1/jobs/x' OR '1'='1", headers=h), 404, 422)
    with world.db.session() as s:
        assert s.execute(text("SELECT count(*) FROM jobs")).scalar_one() >= 2
    # Oversized bodies and headers.
    big = {"model": "tiny-lm", "input": {"prompt": "x" * (11 * 1024 * 1024)}}
    _error_shape(world.http.post("/v1/jobs", json=big, headers=h), 413, 422)
    r = world.http.get("/v1/models", headers={**h, "X-Padding": "y" * 65536})
    assert r.status_code < 500
    # Webhook targets on private, loopback, link-local or metadata addresses (SSRF).
    for url in ("http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:6379/", "http://[::1]/",
                "http://10.0.0.1/", "file:///etc/passwd", "gopher://127.0.0.1:6379/_FLUSHALL",
                "http://0.0.0.0/", "http://localhost/"):
        r = world.http.post("/v1/jobs", json={"model": "tiny-lm", "input": {"prompt": "x"}, "webhook": url}, headers=h)
        _error_shape(r, 422)
