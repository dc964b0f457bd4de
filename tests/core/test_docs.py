"""The repository's own docs point only at things that exist: files, tests and documents inside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DESIGN = ROOT / "docs" / "design.md"
# A backticked repository path: a known top-level folder or file, then anything without spaces.
_PATH = re.compile(r"`((?:genqueue|api|worker|exporter|bench|tests|docs|docker)/[^`\s]*|[\w.-]+\.(?:toml|md|yaml))`")
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _backticked_paths(text: str) -> list[str]:
    return sorted({m.group(1) for m in _PATH.finditer(text)})


def test_every_path_named_in_the_design_notes_exists() -> None:
    paths = _backticked_paths(DESIGN.read_text())
    assert len(paths) > 30, "the design notes should name the files they describe"
    missing = []
    for ref in paths:
        path, _, test = ref.partition("::")
        target = ROOT / path
        defined = not test or (target.is_file()
                               and re.search(rf"^(async )?def {re.escape(test)}\(", target.read_text(), re.M))
        if not target.exists() or not defined:
            missing.append(ref)
    assert not missing, f"docs/design.md names paths or tests that do not exist: {missing}"


def test_the_design_notes_name_the_files_a_newcomer_looks_for() -> None:
    text = DESIGN.read_text()
    for path in ("worker/genqueue_worker/engine/scheduler.py", "worker/genqueue_worker/engine/ort_session.py", "worker/genqueue_worker/engine/ort_text.py",
                 "worker/genqueue_worker/engine/ort_image.py", "genqueue/jobstate.py", "genqueue/review/state.py"):
        assert f"`{path}`" in text, path


def test_relative_links_in_the_docs_resolve() -> None:
    broken = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in _LINK.findall(doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, f"links to files that do not exist: {broken}"


def test_nothing_refers_to_documents_the_repository_lacks() -> None:
    # The design notes and the HTTP reference live in docs/; the upper-case names were documents outside
    # the repository.
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    pattern = re.compile(r"\b(DESIGN|API)\.md\b")
    hits = []
    for name in files:
        path = ROOT / name
        if not path.is_file() or path.suffix in {".png", ".onnx", ".json"}:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if pattern.search(line):
                hits.append(f"{name}:{number}")
    assert not hits, f"references to documents outside the repository: {hits}"
