"""POST /v1/jobs has two ways through the API: the lean ASGI path (genqueue_api/fastpath.py) for plain
submits, and the FastAPI route for those with an Idempotency-Key or ``Prefer: wait``. Both must give the
contract's answers: the same request, sent both ways, gets the same status and body (ids and times aside)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.testclient import TestClient

from genqueue.db.session import Database, upgrade
from genqueue.enums import Role
from genqueue.settings import Settings
from genqueue_api.app import create_app
from genqueue_api.auth import create_key

if TYPE_CHECKING:
    from tests.conftest import RedisDatabases

_VARY = ("id", "created_at")


@pytest.fixture(scope="module")
def api(redis_url_factory: RedisDatabases, models_dir: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, str]]]:
    # One API for the module: these tests compare answers and never depend on what another one stored.
    tmp, redis_url = tmp_path_factory.mktemp("paths"), redis_url_factory()
    settings = Settings(data_dir=tmp, database_url=f"sqlite:///{tmp / 'paths.db'}", redis_url=redis_url,
                        models_dir=models_dir)
    upgrade(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url)
    with db.session() as s:
        keys = {role.value: create_key(s, role.value, role)[1] for role in (Role.client, Role.moderator)}
    with TestClient(create_app(settings)) as c:
        yield c, keys
    db.dispose()
    redis_url_factory.release(redis_url)


def _both(c: TestClient, body: bytes, auth: str | None) -> tuple[Any, Any]:
    """The answer of the lean path, then of the framework's route (sent with a fresh Idempotency-Key)."""
    h = {"Content-Type": "application/json"} | ({"Authorization": auth} if auth else {})
    lean = c.post("/v1/jobs", content=body, headers=h)
    routed = c.post("/v1/jobs", content=body, headers=h | {"Idempotency-Key": str(uuid.uuid4())})
    return lean, routed


@pytest.mark.parametrize("body", [
    b'{"model": "tiny-lm", "input": {"prompt": "hi", "max_new_tokens": 4, "seed": 7}, "priority": 3, "metadata": {"k": 1}}',
    # a webhook is validated on a thread (its host is resolved); a literal public address resolves nothing
    b'{"model": "dcgan-digits", "input": {"seed": 3}, "webhook": "https://93.184.216.34/hook"}',
])
def test_a_job_is_answered_alike_both_ways(api: tuple[TestClient, dict[str, str]], body: bytes) -> None:
    c, keys = api
    lean, routed = _both(c, body, f"Bearer {keys['client']}")
    assert lean.status_code == routed.status_code == 201
    assert lean.headers["content-type"] == routed.headers["content-type"] == "application/json"
    a, b = lean.json(), routed.json()
    assert a["id"] != b["id"] and a["status"] == "queued"
    assert {k: v for k, v in a.items() if k not in _VARY} == {k: v for k, v in b.items() if k not in _VARY}
    assert c.get(f"/v1/jobs/{a['id']}", headers={"Authorization": f"Bearer {keys['client']}"}).json()["input"] == a["input"]


@pytest.mark.parametrize(("body", "auth", "status", "code"), [
    (b'{"model": "tiny-lm", "input": {"prompt": "hi"}}', None, 401, "unauthorized"),
    (b'{"model": "tiny-lm", "input": {"prompt": "hi"}}', "Bearer not-a-key", 401, "unauthorized"),
    (b'{"model": "tiny-lm", "input": {"prompt": "hi"}}', "moderator", 403, "forbidden"),
    (b'{"model": "tiny-lm", "input": ', "client", 400, "invalid_json"),
    (b'{"model": "tiny-lm", "input": {"prompt": NaN}}', "client", 400, "invalid_json"),
    (b'[1, 2]', "client", 422, "validation_error"),
    (b'{"model": "tiny-lm", "input": {"prompt": "hi", "max_new_tokens": 0}}', "client", 422, "validation_error"),
    (b'{"model": "no-such-model", "input": {}}', "client", 404, "unknown_model"),
    (b'{"model": "dcgan-digits", "input": {"class_label": 99}}', "client", 422, "validation_error"),
    (b'{"model": "tiny-lm", "input": {"prompt": "hi"}, "idempotency_key": "k"}', "client", 422, "validation_error"),
    (b'{"model": "tiny-lm", "input": {"prompt": "hi"}, "webhook": "http://127.0.0.1:9/hook"}', "client", 422,
     "validation_error"),
])
def test_a_refusal_is_answered_alike_both_ways(api: tuple[TestClient, dict[str, str]], body: bytes, auth: str | None,
                                               status: int, code: str) -> None:
    c, keys = api
    header = f"Bearer {keys[auth]}" if auth in keys else auth
    lean, routed = _both(c, body, header)
    assert lean.status_code == routed.status_code == status
    assert lean.content == routed.content and lean.json()["error"]["code"] == code
    assert lean.headers.get("www-authenticate") == routed.headers.get("www-authenticate")
