"""The reliability tests' figures, machine-readable: when ``GENQUEUE_RELIABILITY_OUT`` names a file, each call of
``record`` appends one JSON line to it (``python -m bench.reliability`` reads them into bench/RESULTS.md). When
the variable is unset nothing is written. The figures are the values the calling test computed and asserts on.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

ENV = "GENQUEUE_RELIABILITY_OUT"


def database_of(url: str) -> str:
    """``sqlite`` or ``postgres``, from a database URL."""
    return "sqlite" if url.startswith("sqlite") else "postgres"


def current_test() -> str:
    """The running test's node id (``tests/...py::test_name[param]``), or ``""`` outside a test."""
    return os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]


def fault_name(node_id: str) -> str:
    """A fault's name from its test's node id: ``...::test_sigkill_mid_batch[sqlite]`` -> ``sigkill mid batch``."""
    name = re.sub(r"\[.*\]$", "", node_id.rsplit("::", 1)[-1])
    return name.removeprefix("test_").replace("_", " ")


def record(kind: str, database: str, **figures: Any) -> None:
    """Appends ``{"kind", "database", "test", **figures}`` as one line (one write, so that concurrent tests'
    lines never interleave)."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"kind": kind, "database": database, "test": current_test(), **figures}, sort_keys=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
