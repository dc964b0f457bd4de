"""Without a browser the console's tests are skipped loudly, and with GENQUEUE_REQUIRE_BROWSER=1 (as in
.ci/run) that skip fails the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _run(require: bool, models_dir: Path) -> subprocess.CompletedProcess[str]:
    # The session's quick models, so that the inner run does not build its own before it gets to the skip.
    env = {**os.environ, "GENQUEUE_CHROMIUM": "/nonexistent/chromium", "GENQUEUE_TEST_MODELS_DIR": str(models_dir)}
    env.pop("GENQUEUE_REQUIRE_BROWSER", None)
    if require:
        env["GENQUEUE_REQUIRE_BROWSER"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "-k", "wrong_key",
         str(HERE / "test_console_browser.py")],
        cwd=HERE.parent.parent, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("require", [False, True])
def test_a_missing_browser_skips_loudly_and_fails_where_required(require: bool, models_dir: Path) -> None:
    r = _run(require, models_dir)
    assert "CONSOLE BROWSER TESTS NOT RUN: no chromium executable" in r.stdout, r.stdout
    if require:
        assert r.returncode == 1 and "1 error" in r.stdout and "must run here" in r.stdout, r.stdout
    else:
        assert r.returncode == 0 and "1 skipped" in r.stdout, r.stdout
