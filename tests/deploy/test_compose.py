"""compose.yaml and the Dockerfiles, checked without Docker: commands against the real CLI parsers,
environment variables against the Settings class, volumes, the GPU reservation, the extras each image
installs, pinned bases and non-root users."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from genqueue.cli import build_parser
from genqueue.settings import Settings
from genqueue_exporter.cli import _normalize
from genqueue_exporter.cli import build_parser as exporter_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]

# The extra each service's image must install, and nothing more.
NEEDS = {"migrate": "server", "api": "server", "beat": "server", "webhooks": "server", "worker": "worker",
         "exporter": "export"}
DOCKERFILES = {"api": "docker/api.Dockerfile", "worker": "docker/worker.Dockerfile",
               "exporter": "docker/exporter.Dockerfile"}
EXTRA_OF_DOCKERFILE = {"docker/api.Dockerfile": "server", "docker/worker.Dockerfile": "worker",
                       "docker/exporter.Dockerfile": "export"}
THIRD_PARTY = {"redis", "postgres", "flower"}  # images of their own, run with their own commands


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} becomes the default; ${VAR:?error} (a required variable) a sample value."""
    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "a-real-secret-value", value)


def ours() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in SERVICES.items() if n not in THIRD_PARTY}


def dockerfile_of(service: dict[str, Any]) -> str:
    return str(service["build"]["dockerfile"])


def parse_dockerfile(path: str) -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = (ROOT / path).read_text()
    text = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln.strip() else "")
            for ln in (x.strip() for x in text.splitlines()) if ln]


def stages(path: str) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins, args in parse_dockerfile(path):
        if ins == "FROM":
            out.append([])
        if out:
            out[-1].append((ins, args))
    return out


def base_images(path: str) -> list[str]:
    args = {}
    for ins, rest in parse_dockerfile(path):
        if ins == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k.strip()] = v.strip()
    bases = []
    for ins, rest in parse_dockerfile(path):
        if ins == "FROM":
            image = rest.split()[0]
            bases.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
    return bases


def pip_installs(path: str) -> list[list[str]]:
    """The argument lists of every `pip install` in RUN lines."""
    found = []
    for ins, rest in parse_dockerfile(path):
        if ins != "RUN":
            continue
        for cmd in re.split(r"&&|;", rest):
            words = shlex.split(cmd)
            if words[:2] == ["pip", "install"]:
                found.append(words[2:])
    return found


def extras_installed(path: str) -> set[str]:
    out: set[str] = set()
    for args in pip_installs(path):
        for a in args:
            m = re.fullmatch(r"\.\[([\w,-]+)\]", a)
            if m:
                out.update(m.group(1).split(","))
            elif a == ".":
                out.add("")  # the bare package: whatever the base pulls in
    return out


def requirement_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in reqs}


# -- compose ----------------------------------------------------------------------------------------------
def test_the_stack_has_every_service() -> None:
    assert set(SERVICES) == {"redis", "postgres", "migrate", "exporter", "api", "worker", "beat", "webhooks",
                             "flower"}
    assert "--appendonly" in SERVICES["redis"]["command"]
    assert SERVICES["redis"]["command"][SERVICES["redis"]["command"].index("--appendonly") + 1] == "yes"
    assert "pg_isready" in " ".join(SERVICES["postgres"]["healthcheck"]["test"])


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_each_command_is_a_real_cli_command(name: str) -> None:
    command = [interpolate(c) for c in SERVICES[name]["command"]]
    if command[0] == "export":
        args = exporter_parser().parse_args(_normalize(command[1:]))
    else:
        args = build_parser().parse_args(command)
    assert args.command == command[0] if command[0] != "export" else args.command == command[1]


def test_the_dockerfiles_default_commands_are_real_cli_commands() -> None:
    for path in DOCKERFILES.values():
        cmd = [ins_args for ins, ins_args in parse_dockerfile(path) if ins == "CMD"][-1]
        words = yaml.safe_load(cmd)  # a JSON array
        if words[0] == "export":
            exporter_parser().parse_args(_normalize(words[1:]))
        else:
            build_parser().parse_args(words)
        entry = [a for ins, a in parse_dockerfile(path) if ins == "ENTRYPOINT"][-1]
        assert yaml.safe_load(entry) == ["genqueue"], path


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping, so that keys can be checked"
    return {k: interpolate(str(v)) for k, v in env.items()}


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_every_variable_set_is_a_real_setting_with_a_valid_value(name: str) -> None:
    env = env_of(SERVICES[name])
    assert env, name
    fields = {}
    for var, value in env.items():
        assert var.startswith("GENQUEUE_"), var
        field = var.removeprefix("GENQUEUE_").lower()
        assert field in Settings.model_fields, f"{name}: {var} is not a setting"
        fields[field] = value
    try:  # the values too: a typo in a provider or a placeholder secret in production fails here
        Settings(**fields)
    except ValidationError as e:
        pytest.fail(f"{name}: {e}")


def test_the_dockerfiles_set_only_real_settings() -> None:
    for path in DOCKERFILES.values():
        for ins, rest in parse_dockerfile(path):
            if ins != "ENV":
                continue
            for var, _ in re.findall(r"(\w+)=(\S+)", rest):
                if var.startswith("GENQUEUE_"):
                    assert var.removeprefix("GENQUEUE_").lower() in Settings.model_fields, (path, var)


def volume_mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """volume name -> (path in the container, mode)."""
    out = {}
    for v in service.get("volumes", []):
        parts = v.split(":")
        out[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "rw")
    return out


def test_models_volume_lines_up_between_the_exporter_and_its_readers() -> None:
    exp = SERVICES["exporter"]
    models_arg = exp["command"][exp["command"].index("--models-dir") + 1]
    written = {name: path for name, (path, mode) in volume_mounts(exp).items() if mode == "rw"}
    assert models_arg in written.values()
    volume = next(name for name, path in written.items() if path == models_arg)
    assert volume in COMPOSE["volumes"]
    for reader in ("worker", "api"):
        mounts = volume_mounts(SERVICES[reader])
        assert volume in mounts, f"{reader} does not mount {volume}"
        path, mode = mounts[volume]
        assert mode == "ro", f"{reader} should only read the models"
        assert env_of(SERVICES[reader])["GENQUEUE_MODELS_DIR"] == path
        # and the reader waits for the exporter to have written them
        assert SERVICES[reader]["depends_on"]["exporter"]["condition"] == "service_completed_successfully"


def test_the_worker_reserves_an_nvidia_gpu_and_names_its_provider() -> None:
    w = SERVICES["worker"]
    devices = w["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert env_of(w)["GENQUEUE_PROVIDER"] in ("cuda", "auto")
    grace = Settings.model_fields["shutdown_grace_s"].default
    assert int(w["stop_grace_period"].rstrip("s")) > grace


def test_depends_on_waits_for_health_or_completion() -> None:
    for name, svc in SERVICES.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert isinstance(cond, dict), f"{name} -> {dep}: a condition, not a bare start order"
            c = cond["condition"]
            assert c in ("service_healthy", "service_completed_successfully"), (name, dep, c)
            if c == "service_healthy":
                assert "healthcheck" in SERVICES[dep], f"{dep} has no healthcheck for {name} to wait on"
            else:
                assert SERVICES[dep].get("restart") == "no", f"{dep} is one-shot, it must not restart"
    for name in ("api", "worker", "beat"):
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert SERVICES["migrate"]["command"] == ["db", "upgrade"]


def test_beat_runs_the_reconciler_and_the_api_leaves_it_to_beat() -> None:
    assert SERVICES["beat"]["command"] == ["beat"]
    assert env_of(SERVICES["api"]).get("GENQUEUE_RECONCILE_INTERVAL_S") == "0"
    assert float(env_of(SERVICES["beat"]).get("GENQUEUE_RECONCILE_INTERVAL_S",
                                              Settings.model_fields["reconcile_interval_s"].default)) > 0


def test_third_party_images_are_pinned() -> None:
    for name in THIRD_PARTY:
        image = SERVICES[name]["image"]
        # a release, not a moving tag (PostgreSQL's releases have two numbers)
        assert re.search(r":\d+\.\d+", image) or "@sha256:" in image, image
        assert "latest" not in image


# -- images -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(NEEDS))
def test_each_service_image_installs_only_the_extra_it_needs(name: str) -> None:
    path = dockerfile_of(SERVICES[name])
    assert path in EXTRA_OF_DOCKERFILE, f"{name} builds from {path}"
    assert extras_installed(path) == {NEEDS[name]}


def test_only_the_exporter_image_has_torch() -> None:
    for extra in ("server", "worker"):
        assert "torch" not in requirement_names(EXTRAS[extra]), extra
        assert not {"torch"} & requirement_names(PYPROJECT["project"]["dependencies"])
    for path in ("docker/api.Dockerfile", "docker/worker.Dockerfile"):
        assert not any("torch" in a for args in pip_installs(path) for a in args), path
    torch_pin = next(r for r in EXTRAS["export"] if r.startswith("torch"))
    exporter_args = [a for args in pip_installs("docker/exporter.Dockerfile") for a in args]
    assert f'"{torch_pin}"' in (ROOT / "docker/exporter.Dockerfile").read_text() or torch_pin in exporter_args
    assert "https://download.pytorch.org/whl/cpu" in exporter_args


def test_every_pip_install_uses_the_pinned_constraints() -> None:
    constraints = (ROOT / "docker/constraints.txt").read_text().splitlines()
    pins = dict(line.split("==", 1) for line in constraints if "==" in line and not line.startswith("#"))
    for path in DOCKERFILES.values():
        installs = pip_installs(path)
        assert installs, path
        for args in installs:
            assert "-c" in args and args[args.index("-c") + 1] == "docker/constraints.txt", (path, args)
    # the pins agree with pyproject's
    assert pins["torch"] == next(r for r in EXTRAS["export"] if r.startswith("torch")).split("==")[1]
    ort_pin = next(r for r in EXTRAS["worker"] if r.startswith("onnxruntime-gpu")).split("==")[1]
    assert pins["onnxruntime-gpu"] == ort_pin


def test_the_worker_base_matches_onnxruntime_gpu() -> None:
    # onnxruntime-gpu 1.31 is built for CUDA 13 and cuDNN 9: a different base runs everything on the CPU.
    ort = next(r for r in EXTRAS["worker"] if r.startswith("onnxruntime-gpu")).split("==")[1]
    assert ort.startswith("1.31.")
    for base in base_images("docker/worker.Dockerfile"):
        m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu\d+\.\d+", base)
        assert m, base
        assert m.group(1) == "13"


@pytest.mark.parametrize("path", sorted(DOCKERFILES.values()))
def test_images_are_multi_stage_pinned_and_run_as_a_user(path: str) -> None:
    st = stages(path)
    assert len(st) >= 2, "a build stage and a runtime stage"
    for base in base_images(path):
        assert re.search(r":\d+\.\d+\.\d+", base) or "@sha256:" in base, f"{path}: unpinned base {base}"
    final = st[-1]
    users = [a for ins, a in final if ins == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{path}: the runtime stage runs as root"
    assert any(ins == "COPY" and a.startswith("--from=build") for ins, a in final), "the runtime copies the build"
    assert not any(ins == "RUN" and "pip install" in a for ins, a in final), "nothing is built in the runtime stage"
    if "python:" in base_images(path)[-1]:
        assert "slim" in base_images(path)[-1]
