"""`genqueue keys create | list | revoke` on a real database, and a revoked key refused by the API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from genqueue import cli
from genqueue.db.session import upgrade
from genqueue.settings import Settings


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


@pytest.fixture
def env(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    url = database_url if database_url.startswith("postgres") else f"sqlite:///{tmp_path / 'keys.db'}"
    monkeypatch.setenv("GENQUEUE_DATABASE_URL", url)
    monkeypatch.setenv("GENQUEUE_DATA_DIR", str(tmp_path))
    upgrade(url)
    return url


def test_create_list_and_revoke(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "keys", "create", "--name", "feeder", "--role", "client")
    assert rc == 0 and out.splitlines()[-1].startswith("gq_")
    secret = out.splitlines()[-1]
    rc, out, _ = _run(capsys, "keys", "list", "--json")
    mine = [json.loads(line) for line in out.splitlines() if json.loads(line)["name"] == "feeder"]
    assert rc == 0 and len(mine) == 1 and mine[0]["revoked_at"] is None and secret.startswith(mine[0]["prefix"])
    key_id = mine[0]["id"]

    # By the secret's first 10 characters (the prefix `keys list` shows); a second revoke changes nothing.
    rc, out, _ = _run(capsys, "keys", "revoke", mine[0]["prefix"])
    assert rc == 0 and key_id in out and "refuse it within" in out
    rc, out, _ = _run(capsys, "keys", "revoke", key_id)
    assert rc == 0 and "already revoked" in out
    rc, out, _ = _run(capsys, "keys", "list", "--json")
    assert key_id not in out
    rc, out, _ = _run(capsys, "keys", "list", "--all", "--json")
    assert json.loads(next(line for line in out.splitlines() if key_id in line))["revoked_at"] is not None


def test_names_and_bad_arguments(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    ids = []
    for role in ("client", "moderator"):
        _run(capsys, "keys", "create", "--name", "twin", "--role", role)
        rc, out, _ = _run(capsys, "keys", "list", "--json")
        ids.append(next(json.loads(line)["id"] for line in out.splitlines()
                        if json.loads(line)["name"] == "twin" and json.loads(line)["id"] not in ids))
    rc, _, err = _run(capsys, "keys", "revoke", "twin")
    assert rc == 2 and "2 live keys match 'twin'" in err and ids[0] in err and ids[1] in err
    assert _run(capsys, "keys", "revoke", ids[0])[0] == 0
    # One of the two is revoked: the name now means the live one.
    rc, out, _ = _run(capsys, "keys", "revoke", "twin")
    assert rc == 0 and ids[1] in out and "already" not in out
    # Both are: revoking the name again changes nothing and says so.
    rc, out, _ = _run(capsys, "keys", "revoke", "twin")
    assert rc == 0 and "already revoked" in out
    rc, out, _ = _run(capsys, "keys", "list", "--all")
    rows = [line for line in out.splitlines() if "'twin'" in line]
    assert len(rows) == 2 and all("revoked" in line for line in rows)
    assert any("moderator" in line and ids[1] in line for line in rows)

    rc, _, err = _run(capsys, "keys", "revoke", "nobody")
    assert rc == 2 and "no key matches 'nobody'" in err
    assert _run(capsys, "keys", "revoke")[0] == 2
    rc, _, err = _run(capsys, "keys", "create", "--name", "x")
    assert rc == 2 and "--name and --role" in err
    rc, _, err = _run(capsys, "keys", "create", "--name", "x", "--role", "boss")
    assert rc == 2 and "unknown role 'boss'" in err
    # An argument the action does not take is refused, not ignored.
    rc, _, err = _run(capsys, "keys", "list", "twin")
    assert rc == 2 and "keys list does not take the key argument" in err
    rc, _, err = _run(capsys, "keys", "revoke", ids[1], "--all")
    assert rc == 2 and "keys revoke does not take --all" in err
    rc, _, err = _run(capsys, "keys", "list", "--role", "admin")
    assert rc == 2 and "keys list does not take --role" in err


def test_a_revoked_key_is_refused_by_the_api(env: str, tmp_path: Path, redis_scratch_url: str, models_dir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _run(capsys, "keys", "create", "--name", "soon-gone", "--role", "client")
    secret = out.splitlines()[-1]
    settings = Settings(data_dir=tmp_path, database_url=env, redis_url=redis_scratch_url, models_dir=models_dir,
                        reconcile_interval_s=0, auth_cache_s=0)
    from genqueue_api.app import create_app

    with TestClient(create_app(settings)) as c:
        auth = {"Authorization": f"Bearer {secret}"}
        assert c.get("/v1/jobs", headers=auth).status_code == 200
        assert _run(capsys, "keys", "revoke", secret[:10])[0] == 0
        r = c.get("/v1/jobs", headers=auth)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
