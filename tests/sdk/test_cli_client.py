"""The CLI's client commands on bad input: one line on stderr and a non-zero exit, never a traceback; and the
API's limits on bulk requests (more than 1,000 jobs: 422 naming the limit; a body over the size limit: 413)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

JOB = {"model": "tiny-lm", "input": {"prompt": "hi", "max_new_tokens": 2}}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "genqueue.cli", *args], capture_output=True, text=True, timeout=120)


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("genqueue: error: "), r.stderr
    return lines[0]


def test_bulk_bad_input_is_one_line(api_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    api = api_server()
    src = tmp_path / "jobs.jsonl"
    src.write_text(json.dumps(JOB) + "\n")
    key = ("--url", api.url, "--key", api.keys["client"])
    assert "no such file" in one_line_error(cli("bulk", str(tmp_path / "nope.jsonl"), *key))
    assert "--chunk must be between 1 and 1000" in one_line_error(cli("bulk", str(src), "--chunk", "5000", *key))
    line = one_line_error(cli("bulk", str(src), "--quiet", "--url", api.url, "--key", "gq_wrong"))
    assert line == "genqueue: error: unauthorized: invalid or revoked API key"
    r = subprocess.run([sys.executable, "-m", "genqueue.cli", "bulk", str(src), "--quiet", "--url", api.url],
                       capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert "no API key" in one_line_error(r)
    assert one_line_error(cli("images", "no-such-job", *key)) == "genqueue: error: not_found: job not found"


def test_bulk_request_limits(api_server) -> None:  # type: ignore[no-untyped-def]
    api = api_server(max_body_bytes=256 * 1024)
    h = api.headers()
    r = httpx.post(f"{api.url}/v1/jobs/bulk", json={"jobs": [JOB] * 1001}, headers=h)
    assert r.status_code == 422 and "1000" in r.json()["error"]["message"]
    assert r.json()["error"]["details"][0]["limit"] == 1000
    r = httpx.post(f"{api.url}/v1/jobs/bulk", json={"jobs": [{**JOB, "metadata": {"x": "y" * 1000}}] * 300},
                   headers=h)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
