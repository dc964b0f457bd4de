"""The settings reference in README.md is the one the Settings class generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from genqueue import settings_doc
from genqueue.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_has_the_current_settings_reference() -> None:
    block = settings_doc.readme_block(README)
    assert block is not None, "README.md lost its settings reference block"
    assert block == settings_doc.markdown(), (
        "README.md's settings table differs from genqueue/settings.py: run "
        "`genqueue settings --write-readme README.md`")


def test_every_setting_has_a_row_with_its_default_and_a_meaning() -> None:
    rows = {line.split("|")[1].strip(" `"): line.split("|") for line in settings_doc.markdown().splitlines()
            if line.startswith("| `GENQUEUE_")}
    assert set(rows) == {f"GENQUEUE_{n.upper()}" for n in Settings.model_fields}
    assert rows["GENQUEUE_LEASE_SECONDS"][2].strip() == "`120`"
    assert rows["GENQUEUE_PROVIDER"][3].strip() == "`auto`, `cuda`, `cpu`"
    assert rows["GENQUEUE_API_PORT"][3].strip() == "≥ 0, ≤ 65535"
    undocumented = [n for n, r in rows.items() if not r[4].strip() and n != "GENQUEUE_API_PORT"]
    assert not undocumented, f"settings without a comment or description: {undocumented}"


def test_a_drift_is_detected_and_rewritten(tmp_path: Path) -> None:
    stale = README.read_text().replace("| `GENQUEUE_LEASE_SECONDS` | `120` |", "| `GENQUEUE_LEASE_SECONDS` | `60` |")
    copy = tmp_path / "README.md"
    copy.write_text(stale)
    assert settings_doc.readme_block(copy) != settings_doc.markdown()
    out = subprocess.run([sys.executable, "-m", "genqueue.cli", "settings", "--write-readme", str(copy)],
                         capture_output=True, text=True, check=True).stdout
    assert "updated" in out
    assert settings_doc.readme_block(copy) == settings_doc.markdown()
    assert copy.read_text() == README.read_text()
