"""A process started with a setting it cannot run with exits at once, with one line naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def start(tmp_path: Path, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GENQUEUE_")}
    (tmp_path / "models").mkdir(exist_ok=True)
    base.update({"GENQUEUE_DATA_DIR": str(tmp_path / "data"), "GENQUEUE_MODELS_DIR": str(tmp_path / "models"),
                 "GENQUEUE_DATABASE_URL": f"sqlite:///{tmp_path / 'gq.db'}"})
    base.update(env)
    return subprocess.run([sys.executable, "-m", "genqueue.cli", *args], env=base, capture_output=True,
                          text=True, timeout=60)


def one_line(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr  # no traceback, no log noise
    assert lines[0].startswith("genqueue: error: ")
    return lines[0]


@pytest.mark.parametrize("command", [["api"], ["worker"]])
def test_an_unknown_provider(tmp_path: Path, command: list[str]) -> None:
    line = one_line(start(tmp_path, command, GENQUEUE_PROVIDER="tpu"))
    assert "GENQUEUE_PROVIDER" in line and "'auto', 'cuda' or 'cpu'" in line


@pytest.mark.parametrize("command", [["api"], ["worker"], ["beat"], ["status"]])
def test_an_unreachable_database(tmp_path: Path, command: list[str]) -> None:
    url = "postgresql+psycopg://genqueue:hunter2@127.0.0.1:1/genqueue"
    line = one_line(start(tmp_path, command, GENQUEUE_DATABASE_URL=url, GENQUEUE_REDIS_URL="redis://127.0.0.1:1/0"))
    assert "GENQUEUE_DATABASE_URL: cannot connect to postgresql+psycopg://genqueue:***@127.0.0.1:1/genqueue" in line
    assert "hunter2" not in line  # the password is never printed


def test_status_names_an_unreachable_redis(tmp_path: Path) -> None:
    line = one_line(start(tmp_path, ["status"], GENQUEUE_REDIS_URL="redis://127.0.0.1:1/0"))
    assert line.startswith("genqueue: error: GENQUEUE_REDIS_URL: cannot connect to redis://127.0.0.1:1/0")


@pytest.mark.parametrize("command", [["api"], ["worker"]])
def test_a_missing_models_folder(tmp_path: Path, command: list[str]) -> None:
    line = one_line(start(tmp_path, command, GENQUEUE_MODELS_DIR=str(tmp_path / "nowhere")))
    assert f"GENQUEUE_MODELS_DIR: {tmp_path / 'nowhere'} does not exist" in line


@pytest.mark.parametrize("secret", ["changeme", "dev-secret", ""])
def test_a_placeholder_secret_in_production(tmp_path: Path, secret: str) -> None:
    line = one_line(start(tmp_path, ["api"], GENQUEUE_ENVIRONMENT="production", GENQUEUE_WEBHOOK_SECRET=secret))
    assert line == ("genqueue: error: invalid settings: GENQUEUE_WEBHOOK_SECRET must be set to a real secret "
                    "in production")
