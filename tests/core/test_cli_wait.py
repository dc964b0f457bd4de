"""`genqueue submit --wait N` and `genqueue get --wait N`: at most N seconds, then the job as it stands."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from genqueue import cli


class SlowClient:
    """Stands in for genqueue.client.Client: a job that stays running (or ends after ``ends_after`` s)."""

    def __init__(self, ends_after: float | None = None) -> None:
        self.ends_at = None if ends_after is None else time.monotonic() + ends_after
        self.waited: list[float] = []

    def __enter__(self) -> SlowClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _job(self) -> dict[str, Any]:
        done = self.ends_at is not None and time.monotonic() >= self.ends_at
        return {"id": "j1", "status": "succeeded" if done else "running"}

    def submit(self, model: str, inp: dict[str, Any], **kw: Any) -> dict[str, Any]:
        time.sleep(min(kw.get("wait") or 0, 0.2))  # the server holds the answer for part of the wait
        return self._job()

    def get(self, job_id: str) -> dict[str, Any]:
        return self._job()

    def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        self.waited.append(timeout)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._job()["status"] == "succeeded":
                return self._job()
            time.sleep(0.02)
        raise TimeoutError(f"job {job_id} is still running after {timeout:.0f}s")


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], client: SlowClient,
        argv: list[str]) -> tuple[int, dict[str, Any], str]:
    monkeypatch.setattr(cli, "_client", lambda args: client)
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--key", "gq_x"])
    out = capsys.readouterr()
    return int(e.value.code or 0), json.loads(out.out) if out.out else {}, out.err


def test_submit_waits_at_most_n_seconds_then_prints_the_job_and_exits_2(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    client = SlowClient()
    t0 = time.monotonic()
    code, job, err = run(monkeypatch, capsys, client, ["submit", "--model", "m", "--prompt", "p", "--wait", "1"])
    assert time.monotonic() - t0 < 3  # not the 600 s it could take before
    assert code == 2 and job == {"id": "j1", "status": "running"}
    assert err.count("\n") == 1 and "still running after 1s" in err
    assert client.waited and max(client.waited) <= 1.0


def test_submit_prints_the_finished_job(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    code, job, err = run(monkeypatch, capsys, SlowClient(ends_after=0.4), ["submit", "--model", "m", "--wait", "5"])
    assert code == 0 and job["status"] == "succeeded" and err == ""


def test_get_waits_up_to_its_timeout(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    code, job, _ = run(monkeypatch, capsys, SlowClient(ends_after=0.2), ["get", "--wait", "j1"])  # either order
    assert code == 0 and job["status"] == "succeeded"
    code, job, err = run(monkeypatch, capsys, SlowClient(), ["get", "j1", "--wait", "--timeout", "1"])
    assert code == 2 and job["status"] == "running" and "still running after 1s" in err
    code, job, _ = run(monkeypatch, capsys, SlowClient(), ["get", "j1"])
    assert code == 0 and job["status"] == "running"


def test_a_negative_wait_is_refused(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run(monkeypatch, capsys, SlowClient(), ["submit", "--model", "m", "--wait", "-1"])
    assert code == 2 and "--wait must be >= 0" in err
